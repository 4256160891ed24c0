"""Upload-session handler: open a session, complete a multipart file, read the status
(docs/upload-sessions.md; the instances are stored as by STOW-RS, PS3.18 §10.5)."""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools.event_handler import Response

from dicomweb_core import access
from dicomweb_core.config import settings
from dicomweb_core.entry.api import api_app, api_handler, respond
from dicomweb_core.observability import MetricUnit, metrics, tracer
from dicomweb_core.storage import ObjectReader
from dicomweb_core.upload.service import Caller, UploadService
from dicomweb_core.upload.sessions import SessionTable
from dicomweb_core.web import responses

app = api_app()
SETTINGS = settings()
SERVICE = UploadService(
    sessions=SessionTable(os.environ["UPLOAD_TABLE_NAME"]),
    objects=ObjectReader(SETTINGS.bucket_name),
    session_seconds=int(os.environ.get("UPLOAD_SESSION_HOURS", "24")) * 3600,
)


def _caller() -> Caller:
    event = app.current_event
    return Caller(access.token_subject(event), responses.base_url(event, SETTINGS.public_base_url))


@app.post("/upload-sessions")
@tracer.capture_method
def open_session() -> Response[Any]:
    reply = SERVICE.open(responses.request_body(app.current_event), _caller())
    metrics.add_metric("UploadSessionsOpened", MetricUnit.Count, 1)
    return respond(reply)


@app.get("/upload-sessions/<session>")
@tracer.capture_method
def session_status(session: str) -> Response[Any]:
    return respond(SERVICE.status(session, _caller()))


@app.post("/upload-sessions/<session>/files/<file>/complete")
@tracer.capture_method
def complete_file(session: str, file: str) -> Response[Any]:
    body = responses.request_body(app.current_event)
    return respond(SERVICE.complete(session, file, body, _caller()))


handler = api_handler(app)
