"""Series metadata hook: SeriesStable (EventBridge rule → SQS → here) → the series' pre-built
metadata document, so WADO-RS answers series/study metadata with one storage read.

See ``dicomweb_core.hooks.series_metadata``. The retrieve function never writes.
"""

from __future__ import annotations

import json

from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from dicomweb_core.config import settings
from dicomweb_core.dicom.uid import validate_uid
from dicomweb_core.entry.hooks import sqs_handler
from dicomweb_core.hooks.series_metadata import SeriesMetadataBuilder
from dicomweb_core.index.access import Index
from dicomweb_core.observability import MetricUnit, logger, metrics
from dicomweb_core.storage import ObjectReader, S3InstanceStore

SETTINGS = settings()
BUILDER = SeriesMetadataBuilder(
    ObjectReader(SETTINGS.bucket_name),
    S3InstanceStore(SETTINGS.bucket_name),
    Index.for_table(SETTINGS.table_name),
)


def handle(record: SQSRecord) -> None:
    detail = json.loads(record.body)["detail"]
    outcome = BUILDER.build(
        validate_uid(detail["studyInstanceUID"], name="StudyInstanceUID"),
        validate_uid(detail["seriesInstanceUID"], name="SeriesInstanceUID"),
        str(detail["seriesVersion"]),
    )
    metrics.add_metric(f"SeriesMetadata_{outcome}", MetricUnit.Count, 1)
    logger.debug("series metadata", extra={"outcome": outcome})


handler = sqs_handler(handle)
