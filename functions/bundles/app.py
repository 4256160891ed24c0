"""Bundle builder: a BundleOrder (WADO-RS → BundleQueue → here) → the multipart body of one
retrieval larger than a function response (see ``dicomweb_core.wado.bundles``).
"""

from __future__ import annotations

from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from dicomweb_core.config import settings
from dicomweb_core.dicom.uid import validate_uid
from dicomweb_core.entry.hooks import sqs_handler
from dicomweb_core.index.access import Index
from dicomweb_core.observability import MetricUnit, logger, metrics
from dicomweb_core.storage import ObjectReader
from dicomweb_core.wado.bundles import BundleBuilder, BundleComposer
from dicomweb_core.wado.prebuilt import BundleOrder

SETTINGS = settings()
BUILDER = BundleBuilder(
    BundleComposer(SETTINGS.bucket_name, ObjectReader(SETTINGS.bucket_name)),
    Index.for_table(SETTINGS.table_name),
)


def handle(record: SQSRecord) -> None:
    order = BundleOrder.from_json(record.body)
    validate_uid(order.study, name="StudyInstanceUID")
    for value, name in ((order.series, "SeriesInstanceUID"), (order.instance, "SOPInstanceUID")):
        if value != "-":
            validate_uid(value, name=name)
    outcome = BUILDER.build(order)
    metrics.add_metric(f"Bundles_{outcome}", MetricUnit.Count, 1)
    logger.info("bundle", extra={"key": order.key, "outcome": outcome})


handler = sqs_handler(handle)
