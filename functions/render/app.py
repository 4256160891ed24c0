"""Render handler: rendered images and thumbnails of studies, series, instances and frames
(PS3.18 §10.4.1.1.3, §10.4.4), in the primary store."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter

from dicomweb_core.config import settings
from dicomweb_core.entry import stores
from dicomweb_core.entry.api import api_app, api_handler, respond
from dicomweb_core.index.access import Index
from dicomweb_core.observability import MetricUnit, metrics, tracer
from dicomweb_core.render.service import RenderService, Request
from dicomweb_core.render.thumbnails import ThumbnailStore
from dicomweb_core.storage import ObjectReader, S3InstanceStore
from dicomweb_core.web import responses
from dicomweb_core.web.reply import Reply
from dicomweb_core.web.uri import DicomWebURI

app = api_app()
router = APIGatewayHttpRouter()  # type: ignore[no-untyped-call]  # Powertools leaves Router.__init__ unannotated
SETTINGS = settings()
ROOTS = {"": stores.roots(SETTINGS)[""]}  # the primary store only
READER = ObjectReader(SETTINGS.bucket_name)
SERVICE = RenderService(
    reader=READER,
    thumbnails=ThumbnailStore(READER, S3InstanceStore(SETTINGS.bucket_name)),
    index=Index.for_table(SETTINGS.table_name),
)


def _render(verb: Callable[[RenderService, Request], Reply]) -> Response[Any]:
    """Parse the event into a :class:`Request`, answer it, and record what the answer cost in
    storage reads (the reader's counts are then reset)."""
    event = router.current_event
    root = stores.select(ROOTS, event.raw_path)
    base_url = root.base_url(responses.base_url(event, SETTINGS.public_base_url))
    request = Request(
        uri=DicomWebURI.from_path(base_url, root.path(event.raw_path)),
        accept=responses.header(event, "accept"),
        query=dict(event.query_string_parameters or {}),
        if_none_match=responses.header(event, "if-none-match"),
    )
    reply = verb(SERVICE, request)
    metrics.add_metric("S3Reads", MetricUnit.Count, READER.requests)
    metrics.add_metric("S3BytesRead", MetricUnit.Bytes, READER.bytes_read)
    READER.requests = READER.bytes_read = 0
    return respond(reply)


@router.get("/studies/<study>/rendered")
@router.get("/studies/<study>/series/<series>/rendered")
@router.get("/studies/<study>/series/<series>/instances/<instance>/rendered")
@router.get("/studies/<study>/series/<series>/instances/<instance>/frames/<frames>/rendered")
@tracer.capture_method
def retrieve_rendered(**_: str) -> Response[Any]:
    return _render(RenderService.rendered)


@router.get("/studies/<study>/thumbnail")
@router.get("/studies/<study>/series/<series>/thumbnail")
@router.get("/studies/<study>/series/<series>/instances/<instance>/thumbnail")
@router.get("/studies/<study>/series/<series>/instances/<instance>/frames/<frames>/thumbnail")
@tracer.capture_method
def retrieve_thumbnail(**_: str) -> Response[Any]:
    return _render(RenderService.thumbnail)


app.include_router(router)
handler = api_handler(app)
