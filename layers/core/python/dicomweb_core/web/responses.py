"""The one place that turns results and errors into HTTP API (payload v2) responses."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEventV2

from dicomweb_core.errors import BadRequest, DicomWebError, NotFound
from dicomweb_core.observability import logger

PROBLEM_JSON = "application/json"
_HOST_RE = re.compile(r"[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?")


def request_body(event: APIGatewayProxyEventV2) -> bytes:
    """The raw request body. Binary bodies arrive base64-encoded in payload v2 events;
    they are decoded here, never through a text codec."""
    body = event.get("body") or ""
    if not event.get("isBase64Encoded"):
        return body.encode("utf-8")
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("The request body is not valid base64.") from None


def base_url(event: APIGatewayProxyEventV2, configured: str) -> str:
    """The public DICOMweb root: the configured one, else the host the client called
    (CloudFront passes it as ``X-Forwarded-Host``), else the API's own domain."""
    if configured:
        return configured
    forwarded = header(event, "x-forwarded-host")
    if forwarded and _HOST_RE.fullmatch(forwarded):
        return f"https://{forwarded}"
    domain = (event.get("requestContext") or {}).get("domainName") or "localhost"
    return f"https://{domain}"


def header(event: APIGatewayProxyEventV2, name: str) -> str | None:
    headers: Mapping[str, str] = event.get("headers") or {}
    return headers.get(name.lower())


def error_response(error: DicomWebError) -> Response[str]:
    """Map a :class:`DicomWebError` to its status and a JSON body a person can act on."""
    status = error.status
    if status >= HTTPStatus.INTERNAL_SERVER_ERROR:
        logger.error("request failed", extra={"status": int(status), "error": error.message})
    else:
        logger.info("request refused", extra={"status": int(status), "error": error.message})
    body: dict[str, Any] = {"status": int(status), "error": status.phrase, "message": error.message}
    if error.failure_reason is not None:
        body["failureReason"] = error.failure_reason
    headers = {"Retry-After": str(error.retry_after)} if error.retry_after is not None else None
    return Response(
        status_code=int(status), content_type=PROBLEM_JSON, body=json.dumps(body), headers=headers
    )


def unexpected_error_response(error: Exception) -> Response[str]:
    if isinstance(error, NotFoundError):
        # Powertools' "no route matches the path" also reaches the handler registered for
        # Exception (handlers are looked up along the MRO): a path no route serves (e.g. a
        # segment API Gateway routes but Powertools does not match, such as '1.2"3') is a 404.
        return error_response(NotFound("The path is not a DICOMweb resource (PS3.18 Table 10.3-2)."))
    logger.exception("unexpected error")
    return error_response(DicomWebError("An internal error occurred; it has been logged."))
