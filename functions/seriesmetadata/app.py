"""Series metadata hook: SeriesStable (EventBridge rule → SQS → here) → the series' pre-built
metadata document, so WADO-RS answers series/study metadata with one storage read.

See ``dicomweb_core.wado.series_metadata``. The retrieve function never writes.
"""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from dicomweb_core.config import settings
from dicomweb_core.observability import MetricUnit, logger, metrics, tracer
from dicomweb_core.storage import ObjectReader, S3InstanceStore
from dicomweb_core.uid import validate_uid
from dicomweb_core.wado.series_metadata import SeriesMetadataBuilder

SETTINGS = settings()
BUILDER = SeriesMetadataBuilder(ObjectReader(SETTINGS.bucket_name), S3InstanceStore(SETTINGS.bucket_name))
processor = BatchProcessor(event_type=EventType.SQS)


@tracer.capture_method
def handle(record: SQSRecord) -> None:
    detail = json.loads(record.body)["detail"]
    outcome = BUILDER.build(
        validate_uid(detail["studyInstanceUID"], name="StudyInstanceUID"),
        validate_uid(detail["seriesInstanceUID"], name="SeriesInstanceUID"),
        str(detail["seriesVersion"]),
    )
    metrics.add_metric(f"SeriesMetadata_{outcome}", MetricUnit.Count, 1)
    logger.debug("series metadata", extra={"outcome": outcome})


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    response = process_partial_response(
        event=event, record_handler=handle, processor=processor, context=context
    )
    return dict(response)
