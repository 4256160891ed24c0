"""DELETE handler: DELETE /studies/{study} (not in PS3.18; see dicomweb_core.delete.service)."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from aws_lambda_powertools.event_handler import Response

from dicomweb_core import audit
from dicomweb_core.config import settings
from dicomweb_core.delete.service import DeleteService
from dicomweb_core.entry.api import api_app, api_handler, respond
from dicomweb_core.events import EventPublisher
from dicomweb_core.index.access import Index
from dicomweb_core.index.deletions import StudyDeletions
from dicomweb_core.index.table import IndexTable
from dicomweb_core.observability import MetricUnit, metrics, tracer
from dicomweb_core.web import responses
from dicomweb_core.web.reply import Reply
from dicomweb_core.web.uri import DicomWebURI

app = api_app()
SETTINGS = settings()
SERVICE = DeleteService(
    bucket=SETTINGS.bucket_name,
    events=EventPublisher.of(SETTINGS),
    index=Index.for_table(SETTINGS.table_name),
    deletions=StudyDeletions(IndexTable(SETTINGS.table_name)),
)


@app.delete("/studies/<study>")
@tracer.capture_method
def delete_study(study: str) -> Response[Any]:
    uri = DicomWebURI(responses.base_url(app.current_event, SETTINGS.public_base_url), study=study)
    assert uri.study is not None
    deleted = SERVICE.delete_study(uri.study)
    audit.note(audit.Subject(study=deleted.study_uid, patient_id=deleted.patient_id))
    metrics.add_metric("InstancesDeleted", MetricUnit.Count, deleted.instances)
    return respond(Reply(int(HTTPStatus.NO_CONTENT), ""))


handler = api_handler(app)
