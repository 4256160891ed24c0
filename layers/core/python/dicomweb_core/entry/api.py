"""The entry kit of the API functions: one resolver, one decorator stack, one reply mapping.

Every API function's ``app.py`` reads the same: ``app = api_app()``, routes that parse the
request into a value, call a service and return :func:`respond` of its
:class:`~dicomweb_core.web.reply.Reply`, and ``handler = api_handler(app)``. The handler
carries the logger context (correlation id from the API request id), the tracer, metrics,
the PS3.15 A.5 audit record and the access rules, in that order, for every function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from dicomweb_core import access, audit
from dicomweb_core.errors import DicomWebError
from dicomweb_core.observability import logger, metrics, tracer
from dicomweb_core.web import responses
from dicomweb_core.web.reply import Reply

Handler = Callable[[dict[str, Any], LambdaContext], dict[str, Any]]


def api_app() -> APIGatewayHttpResolver:
    """A resolver whose errors all become DICOMweb error responses (web.responses)."""
    app = APIGatewayHttpResolver()
    app.exception_handler(DicomWebError)(responses.error_response)
    app.exception_handler(Exception)(responses.unexpected_error_response)
    return app


def api_handler(app: APIGatewayHttpResolver) -> Handler:
    """The Lambda handler of an API function: the shared decorator stack around ``app``."""

    @logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
    @tracer.capture_lambda_handler
    @metrics.log_metrics
    @audit.audited
    @access.enforced
    def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        return app.resolve(event, context)

    return handler


def respond(reply: Reply) -> Response[Any]:
    """A service's :class:`Reply` as the resolver's response: the only place a reply meets
    the web framework."""
    return Response(
        status_code=reply.status,
        content_type=reply.content_type,
        body=reply.body,
        headers=dict(reply.headers),
    )
