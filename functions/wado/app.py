"""WADO-RS handler: instances, metadata, frames and bulk data (PS3.18 §10.4), in the primary
store and, under ``/deid``, in the research store (the same routes mounted under a prefix)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter

from dicomweb_core.config import settings
from dicomweb_core.entry import stores
from dicomweb_core.entry.api import api_app, api_handler, respond
from dicomweb_core.index.access import Index
from dicomweb_core.observability import MetricUnit, metrics, tracer
from dicomweb_core.storage import ObjectReader
from dicomweb_core.wado.orders import QueuedBundleOrders
from dicomweb_core.wado.service import Request, RetrieveService
from dicomweb_core.web import responses, roots
from dicomweb_core.web.reply import Reply
from dicomweb_core.web.uri import DicomWebURI

app = api_app()
router = APIGatewayHttpRouter()  # type: ignore[no-untyped-call]  # Powertools leaves Router.__init__ unannotated
SETTINGS = settings()
ROOTS = stores.roots(SETTINGS)
# Large retrievals of the primary store: bodies ordered from BundleFunction when first asked for.
ORDERS = QueuedBundleOrders(os.environ["BUNDLE_QUEUE_URL"]) if os.environ.get("BUNDLE_QUEUE_URL") else None
WAIT_SECONDS = float(os.environ.get("BUNDLE_WAIT_SECONDS", "20"))
SERVICES = {
    prefix: RetrieveService(
        settings=SETTINGS,
        reader=ObjectReader(root.bucket_name),
        public_objects=prefix == "",
        orders=ORDERS if prefix == "" else None,
        wait_seconds=WAIT_SECONDS,
        index=Index.for_table(root.table_name),
    )
    for prefix, root in ROOTS.items()
}


def _retrieve(verb: Callable[[RetrieveService, Request], Reply]) -> Response[Any]:
    """Parse the event into a :class:`Request`, answer it with its store's service, and
    record what the answer cost in storage reads (the reader's counts are then reset)."""
    event = router.current_event
    root = stores.select(ROOTS, event.raw_path)
    base_url = root.base_url(responses.base_url(event, SETTINGS.public_base_url))
    request = Request(
        uri=DicomWebURI.from_path(base_url, root.path(event.raw_path).split("/bulkdata/", 1)[0]),
        accept=responses.header(event, "accept"),
        query=dict(event.query_string_parameters or {}),
        if_none_match=responses.header(event, "if-none-match"),
        accepts_gzip="gzip" in (responses.header(event, "accept-encoding") or ""),
    )
    service = SERVICES[root.prefix]
    reply = verb(service, request)
    metrics.add_metric("S3Reads", MetricUnit.Count, service.reader.requests)
    metrics.add_metric("S3BytesRead", MetricUnit.Bytes, service.reader.bytes_read)
    service.reader.requests = service.reader.bytes_read = 0
    return respond(reply)


@router.get("/studies/<study>")
@router.get("/studies/<study>/series/<series>")
@router.get("/studies/<study>/series/<series>/instances/<instance>")
@tracer.capture_method
def retrieve_instances(**_: str) -> Response[Any]:
    return _retrieve(RetrieveService.instances)


@router.get("/studies/<study>/metadata")
@router.get("/studies/<study>/series/<series>/metadata")
@router.get("/studies/<study>/series/<series>/instances/<instance>/metadata")
@tracer.capture_method
def retrieve_metadata(**_: str) -> Response[Any]:
    return _retrieve(lambda service, request: service.metadata(request, base_url=request.uri.base_url))


@router.get("/studies/<study>/series/<series>/instances/<instance>/frames/<frames>")
@tracer.capture_method
def retrieve_frames(**_: str) -> Response[Any]:
    return _retrieve(RetrieveService.frames)


@router.get("/studies/<study>/series/<series>/instances/<instance>/bulkdata/<path>")
@tracer.capture_method
def retrieve_bulkdata(path: str, **_: str) -> Response[Any]:
    return _retrieve(lambda service, request: service.bulkdata(request, path))


app.include_router(router)
app.include_router(router, prefix=roots.DEID_PREFIX)
handler = api_handler(app)
