"""QIDO-RS handler: search studies, series and instances (PS3.18 §10.6), in the primary store
and, under ``/deid``, in the research store (the same routes mounted under a prefix)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter

from dicomweb_core.config import settings
from dicomweb_core.entry import stores
from dicomweb_core.entry.api import api_app, api_handler, respond
from dicomweb_core.observability import tracer
from dicomweb_core.qido.attributes import Level
from dicomweb_core.qido.service import SearchRequest, search_reply
from dicomweb_core.web import responses, roots

app = api_app()
router = APIGatewayHttpRouter()  # type: ignore[no-untyped-call]  # Powertools leaves Router.__init__ unannotated
SETTINGS = settings()
ROOTS = stores.roots(SETTINGS)


def _search(level: Level, study: str | None = None, series: str | None = None) -> Response[Any]:
    event = router.current_event
    root = stores.select(ROOTS, event.raw_path)
    request = SearchRequest(
        level=level,
        base_url=root.base_url(responses.base_url(event, SETTINGS.public_base_url)),
        query_string=event.get("rawQueryString") or "",
        accept=responses.header(event, "accept"),
        parameters=dict(event.get("queryStringParameters") or {}),
        study=study,
        series=series,
    )
    return respond(search_reply(request, root.index_table))


@router.get("/studies")
@tracer.capture_method
def search_studies() -> Response[Any]:
    return _search(Level.STUDY)


@router.get("/series")
@router.get("/studies/<study>/series")
@tracer.capture_method
def search_series(study: str | None = None) -> Response[Any]:
    return _search(Level.SERIES, study)


@router.get("/instances")
@router.get("/studies/<study>/instances")
@router.get("/studies/<study>/series/<series>/instances")
@tracer.capture_method
def search_instances(study: str | None = None, series: str | None = None) -> Response[Any]:
    return _search(Level.INSTANCE, study, series)


app.include_router(router)
app.include_router(router, prefix=roots.DEID_PREFIX)
handler = api_handler(app)
