"""DELETE handler: DELETE /studies/{study} (not in PS3.18; see dicomweb_core.delete)."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from dicomweb_core import access, audit, http
from dicomweb_core.config import settings
from dicomweb_core.delete import DeleteService
from dicomweb_core.errors import DicomWebError
from dicomweb_core.events import EventPublisher
from dicomweb_core.observability import MetricUnit, logger, metrics, tracer
from dicomweb_core.uri import DicomWebURI

app = APIGatewayHttpResolver()
app.exception_handler(DicomWebError)(http.error_response)
app.exception_handler(Exception)(http.unexpected_error_response)

SETTINGS = settings()
SERVICE = DeleteService(bucket=SETTINGS.bucket_name, events=EventPublisher(SETTINGS.event_bus_name))


@app.delete("/studies/<study>")
@tracer.capture_method
def delete_study(study: str) -> Response[str]:
    uri = DicomWebURI(http.base_url(app.current_event, SETTINGS.public_base_url), study=study)
    assert uri.study is not None
    deleted = SERVICE.delete_study(uri.study)
    audit.note(audit.Subject(study=deleted.study_uid, patient_id=deleted.patient_id))
    metrics.add_metric("InstancesDeleted", MetricUnit.Count, deleted.instances)
    return Response(status_code=int(HTTPStatus.NO_CONTENT), body="")


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@tracer.capture_lambda_handler
@metrics.log_metrics
@audit.audited
@access.enforced
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
