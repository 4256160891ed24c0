"""QIDO-RS handler: search studies, series and instances (PS3.18 §10.6)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from dicomweb_core import access, audit, http, stores
from dicomweb_core.config import settings
from dicomweb_core.errors import DicomWebError
from dicomweb_core.observability import logger, metrics, tracer
from dicomweb_core.qido.attributes import Level
from dicomweb_core.qido.service import respond

app = APIGatewayHttpResolver()
app.exception_handler(DicomWebError)(http.error_response)
app.exception_handler(Exception)(http.unexpected_error_response)

SETTINGS = settings()
ROOTS = stores.roots(SETTINGS)


def _respond(level: Level, study: str | None = None, series: str | None = None) -> Response[bytes]:
    event = app.current_event
    root = stores.select(ROOTS, event.raw_path)
    return respond(event, level, settings=SETTINGS, root=root, study=study, series=series)


@app.get("/studies")
@app.get("/deid/studies")
@tracer.capture_method
def search_studies() -> Response[bytes]:
    return _respond(Level.STUDY)


@app.get("/series")
@app.get("/studies/<study>/series")
@app.get("/deid/series")
@app.get("/deid/studies/<study>/series")
@tracer.capture_method
def search_series(study: str | None = None) -> Response[bytes]:
    return _respond(Level.SERIES, study)


@app.get("/instances")
@app.get("/studies/<study>/instances")
@app.get("/studies/<study>/series/<series>/instances")
@app.get("/deid/instances")
@app.get("/deid/studies/<study>/instances")
@app.get("/deid/studies/<study>/series/<series>/instances")
@tracer.capture_method
def search_instances(study: str | None = None, series: str | None = None) -> Response[bytes]:
    return _respond(Level.INSTANCE, study, series)


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@tracer.capture_lambda_handler
@metrics.log_metrics
@audit.audited
@access.enforced
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
