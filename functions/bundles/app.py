"""Bundle hook: SeriesStable / StudyStable (EventBridge rule → SQS → here) → pre-built multipart
bodies for retrievals larger than a function response (see ``dicomweb_core.hooks.bundles``).
"""

from __future__ import annotations

import json

from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from dicomweb_core.config import settings
from dicomweb_core.dicom.uid import validate_uid
from dicomweb_core.entry.hooks import sqs_handler
from dicomweb_core.events import SERIES_STABLE
from dicomweb_core.hooks.bundles import BundleBuilder, BundleComposer
from dicomweb_core.observability import MetricUnit, logger, metrics
from dicomweb_core.storage import ObjectReader

SETTINGS = settings()
BUILDER = BundleBuilder(BundleComposer(SETTINGS.bucket_name, ObjectReader(SETTINGS.bucket_name)))


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


handler = sqs_handler(handle)
