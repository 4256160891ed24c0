"""Admin handler: POST /admin/deidentify/studies/{study} queues its de-identification (202)."""

from __future__ import annotations

import json
import os
from http import HTTPStatus
from typing import Any

import boto3
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from dicomweb_core import access, audit, http
from dicomweb_core.config import settings
from dicomweb_core.deid.requests import enqueue, study_requests
from dicomweb_core.errors import DicomWebError
from dicomweb_core.observability import MetricUnit, logger, metrics, tracer
from dicomweb_core.uri import DicomWebURI

app = APIGatewayHttpResolver()
app.exception_handler(DicomWebError)(http.error_response)
app.exception_handler(Exception)(http.unexpected_error_response)

SETTINGS = settings()
QUEUE_URL = os.environ["DEID_QUEUE_URL"]
SQS = boto3.client("sqs")


@app.post("/admin/deidentify/studies/<study>")
@tracer.capture_method
def deidentify_study(study: str) -> Response[str]:
    uri = DicomWebURI(http.base_url(app.current_event, SETTINGS.public_base_url), study=study)
    assert uri.study is not None
    queued = enqueue(SQS, QUEUE_URL, study_requests(uri.study))
    metrics.add_metric("DeidRequested", MetricUnit.Count, queued)
    body = {"study": uri.study, "instancesQueued": queued, "status": "accepted"}
    return Response(
        status_code=int(HTTPStatus.ACCEPTED), content_type="application/json", body=json.dumps(body)
    )


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@tracer.capture_lambda_handler
@metrics.log_metrics
@audit.audited
@access.enforced
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
