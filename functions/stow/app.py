"""STOW-RS handler: POST /studies and POST /studies/{study} (PS3.18 §10.5)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.event_handler import Response

from dicomweb_core import audit
from dicomweb_core.config import settings
from dicomweb_core.entry.api import api_app, api_handler, respond
from dicomweb_core.observability import MetricUnit, metrics, tracer
from dicomweb_core.stow.service import StowService, instance_payloads, stow_reply
from dicomweb_core.web import responses
from dicomweb_core.web.uri import DicomWebURI

app = api_app()
SETTINGS = settings()
SERVICE = StowService.of(SETTINGS)


@app.post("/studies")
@app.post("/studies/<study>")
@tracer.capture_method
def store_instances(study: str | None = None) -> Response[Any]:
    event = app.current_event
    target = DicomWebURI(responses.base_url(event, SETTINGS.public_base_url), study=study)
    payloads = instance_payloads(
        responses.header(event, "content-type"), responses.request_body(event), settings=SETTINGS
    )
    outcome = SERVICE.store_all(payloads, study=target.study)
    for s in outcome.stored:  # the record names each instance, and its patient as stored
        audit.note(
            audit.Subject(s.study_instance_uid, s.series_instance_uid, s.sop_instance_uid, s.patient_id)
        )
    metrics.add_metric("InstancesStored", MetricUnit.Count, len(outcome.stored))
    metrics.add_metric("InstancesFailed", MetricUnit.Count, len(outcome.failures))
    return respond(stow_reply(outcome, base_url=target.base_url, study=target.study))


handler = api_handler(app)
