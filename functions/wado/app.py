"""WADO-RS handler: instances, metadata, frames and bulk data (PS3.18 §10.4), in both roots."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from dicomweb_core import access, audit
from dicomweb_core.config import settings
from dicomweb_core.observability import MetricUnit, logger, metrics, tracer
from dicomweb_core.storage import ObjectReader
from dicomweb_core.wado.service import Request, RetrieveService
from dicomweb_core.web import responses as http
from dicomweb_core.web import roots as stores
from dicomweb_core.web.errors import DicomWebError
from dicomweb_core.web.uri import DicomWebURI

app = APIGatewayHttpResolver()
app.exception_handler(DicomWebError)(http.error_response)
app.exception_handler(Exception)(http.unexpected_error_response)

SETTINGS = settings()
ROOTS = stores.roots(SETTINGS)
SERVICES = {
    prefix: RetrieveService(
        settings=SETTINGS, reader=ObjectReader(root.bucket_name), public_objects=prefix == ""
    )
    for prefix, root in ROOTS.items()
}


def _request() -> tuple[Request, str, RetrieveService]:
    """The parsed request, its root's public base URL, and that root's service."""
    event = app.current_event
    root = stores.select(ROOTS, event.raw_path)
    base_url = root.base_url(http.base_url(event, SETTINGS.public_base_url))
    request = Request(
        uri=DicomWebURI.from_path(base_url, root.path(event.raw_path).split("/bulkdata/", 1)[0]),
        accept=http.header(event, "accept"),
        query=dict(event.query_string_parameters or {}),
        if_none_match=http.header(event, "if-none-match"),
        accepts_gzip="gzip" in (http.header(event, "accept-encoding") or ""),
    )
    return request, base_url, SERVICES[root.prefix]


@app.get("/studies/<study>")
@app.get("/studies/<study>/series/<series>")
@app.get("/studies/<study>/series/<series>/instances/<instance>")
@app.get("/deid/studies/<study>")
@app.get("/deid/studies/<study>/series/<series>")
@app.get("/deid/studies/<study>/series/<series>/instances/<instance>")
@tracer.capture_method
def retrieve_instances(**_: str) -> Response[bytes]:
    request, _base, service = _request()
    return _measured(service, service.instances(request))


@app.get("/studies/<study>/metadata")
@app.get("/studies/<study>/series/<series>/metadata")
@app.get("/studies/<study>/series/<series>/instances/<instance>/metadata")
@app.get("/deid/studies/<study>/metadata")
@app.get("/deid/studies/<study>/series/<series>/metadata")
@app.get("/deid/studies/<study>/series/<series>/instances/<instance>/metadata")
@tracer.capture_method
def retrieve_metadata(**_: str) -> Response[bytes]:
    request, base_url, service = _request()
    return _measured(service, service.metadata(request, base_url=base_url))


@app.get("/studies/<study>/series/<series>/instances/<instance>/frames/<frames>")
@app.get("/deid/studies/<study>/series/<series>/instances/<instance>/frames/<frames>")
@tracer.capture_method
def retrieve_frames(**_: str) -> Response[bytes]:
    request, _base, service = _request()
    return _measured(service, service.frames(request))


@app.get("/studies/<study>/series/<series>/instances/<instance>/bulkdata/<path>")
@app.get("/deid/studies/<study>/series/<series>/instances/<instance>/bulkdata/<path>")
@tracer.capture_method
def retrieve_bulkdata(path: str, **_: str) -> Response[bytes]:
    request, _base, service = _request()
    return _measured(service, service.bulkdata(request, path))


def _measured(service: RetrieveService, response: Response[bytes]) -> Response[bytes]:
    metrics.add_metric("S3Reads", MetricUnit.Count, service.reader.requests)
    metrics.add_metric("S3BytesRead", MetricUnit.Bytes, service.reader.bytes_read)
    service.reader.requests = service.reader.bytes_read = 0
    return response


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@tracer.capture_lambda_handler
@metrics.log_metrics
@audit.audited
@access.enforced
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
