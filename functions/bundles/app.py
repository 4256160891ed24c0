"""Bundle hook: SeriesStable / StudyStable (EventBridge rule → SQS → here) → pre-built multipart
bodies for retrievals larger than a function response (see ``dicomweb_core.hooks.bundles``).
"""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from dicomweb_core.config import settings
from dicomweb_core.dicom.uid import validate_uid
from dicomweb_core.events import SERIES_STABLE
from dicomweb_core.hooks.bundles import BundleBuilder, BundleComposer
from dicomweb_core.observability import MetricUnit, logger, metrics, tracer
from dicomweb_core.storage import ObjectReader
from dicomweb_core.wado.service import StoredFrameDecoder, instance_in_syntax

SETTINGS = settings()
READER = ObjectReader(SETTINGS.bucket_name)
BUILDER = BundleBuilder(
    composer=BundleComposer(SETTINGS.bucket_name, READER),
    convert=lambda item, syntax: instance_in_syntax(READER, item, syntax),
    frames=StoredFrameDecoder(READER),
)
processor = BatchProcessor(event_type=EventType.SQS)


@tracer.capture_method
def handle(record: SQSRecord) -> None:
    event = json.loads(record.body)
    detail = event["detail"]
    study = validate_uid(detail["studyInstanceUID"], name="StudyInstanceUID")
    if event["detail-type"] == SERIES_STABLE:
        series = validate_uid(detail["seriesInstanceUID"], name="SeriesInstanceUID")
        outcome = BUILDER.build_series(study, series, str(detail["seriesVersion"]))
    else:
        outcome = BUILDER.build_study(study, str(detail["studyVersion"]))
    metrics.add_metric(f"Bundles_{outcome}", MetricUnit.Count, 1)
    logger.info("bundles", extra={"type": event["detail-type"], "outcome": outcome})


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    response = process_partial_response(
        event=event, record_handler=handle, processor=processor, context=context
    )
    return dict(response)
