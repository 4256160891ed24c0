"""STOW-RS handler: POST /studies and POST /studies/{study} (PS3.18 §10.5)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from dicomweb_core import access, audit, http
from dicomweb_core.config import settings
from dicomweb_core.errors import DicomWebError
from dicomweb_core.events import EventPublisher
from dicomweb_core.index.writer import IndexWriter
from dicomweb_core.observability import MetricUnit, logger, metrics, tracer
from dicomweb_core.storage import S3InstanceStore
from dicomweb_core.stow import StowService, instance_payloads, store_response
from dicomweb_core.uri import DicomWebURI

app = APIGatewayHttpResolver()
app.exception_handler(DicomWebError)(http.error_response)
app.exception_handler(Exception)(http.unexpected_error_response)

SETTINGS = settings()
SERVICE = StowService(
    settings=SETTINGS,
    store=S3InstanceStore(SETTINGS.bucket_name),
    index=IndexWriter(),
    events=EventPublisher(SETTINGS.event_bus_name),
)


@app.post("/studies")
@app.post("/studies/<study>")
@tracer.capture_method
def store_instances(study: str | None = None) -> Response[str]:
    event = app.current_event
    base_url = http.base_url(event, SETTINGS.public_base_url)
    target = DicomWebURI(base_url, study=study)
    payloads = instance_payloads(
        http.header(event, "content-type"), http.request_body(event), settings=SETTINGS
    )
    outcome = SERVICE.store_all(payloads, study=target.study)
    for stored in outcome.stored:
        audit.note(audit.Subject(study=stored.study_instance_uid))
    metrics.add_metric("InstancesStored", MetricUnit.Count, len(outcome.stored))
    metrics.add_metric("InstancesFailed", MetricUnit.Count, len(outcome.failures))
    warnings = [http.warning_value(f.message) for f in outcome.failures[:10]]
    return http.dicom_json_response(
        outcome.status,
        store_response(outcome, base_url=base_url, study=target.study),
        headers={"Warning": warnings} if warnings else None,
    )


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@tracer.capture_lambda_handler
@metrics.log_metrics
@audit.audited
@access.enforced
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
