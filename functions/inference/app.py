"""Inference hook: SeriesStable (EventBridge rule → SQS → here) → models → SEG/SR in the study.

See ``dicomweb_core.hooks.inference.pipeline``; models are chosen by ``INFERENCE_MODELS``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from dicomweb_core import audit
from dicomweb_core.config import settings
from dicomweb_core.entry.hooks import sqs_handler
from dicomweb_core.events import EventPublisher
from dicomweb_core.hooks.inference.loading import load_models
from dicomweb_core.hooks.inference.pipeline import InferencePipeline, Selection
from dicomweb_core.index.access import Index
from dicomweb_core.observability import MetricUnit, logger, metrics
from dicomweb_core.storage import ObjectReader
from dicomweb_core.stow.service import StowService

SETTINGS = settings()
EVENTS = EventPublisher.of(SETTINGS)
PIPELINE = InferencePipeline(
    models=load_models(os.environ.get("INFERENCE_MODELS", ""), os.environ),
    reader=ObjectReader(SETTINGS.bucket_name),
    stow=StowService.of(SETTINGS),
    events=EVENTS,
    selection=Selection.from_environ(os.environ),
    index=Index.for_table(SETTINGS.table_name),
)


def handle(record: SQSRecord) -> None:
    detail = json.loads(record.body)["detail"]
    subject = audit.Subject(detail.get("studyInstanceUID"), detail.get("seriesInstanceUID"))
    try:
        outcomes = PIPELINE.process(detail)
    except Exception as exc:
        audit.emit(_audit_record(subject, audit.Outcome.SERIOUS_FAILURE, str(exc)[:200]))
        raise
    for outcome in outcomes:
        audit.emit(_audit_record(subject, audit.Outcome.SUCCESS, f"{outcome.model}: {outcome.status}"))
        logger.info("inference", extra={"model": outcome.model, "status": outcome.status})
        metrics.add_metric(f"Inference_{outcome.status}", MetricUnit.Count, 1)


def _audit_record(subject: audit.Subject, outcome: int, description: str) -> dict[str, Any]:
    """A model read the series' instances (PS3.15 A.5.3.2 DICOM Instances Accessed)."""
    return audit.hook_record(
        audit.AuditEvent.INSTANCES_ACCESSED,
        action="E",
        subject=subject,
        outcome=outcome,
        description=f"inference: {description}",
    )


handler = sqs_handler(handle)
