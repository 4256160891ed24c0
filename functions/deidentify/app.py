"""De-identification hook: InstanceStored (EventBridge → SQS) → the research store (PS3.15 Annex E)."""

from __future__ import annotations

import json
import os
from typing import Any

import boto3
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from dicomweb_core import audit
from dicomweb_core.config import settings
from dicomweb_core.entry.hooks import sqs_handler
from dicomweb_core.hooks.deid.pipeline import DeidPipeline, Rules
from dicomweb_core.hooks.deid.profile import Dates, Deidentifier, Options
from dicomweb_core.observability import MetricUnit, logger, metrics
from dicomweb_core.storage import ObjectReader, S3InstanceStore
from dicomweb_core.stow.service import StowService

SETTINGS = settings()  # TABLE_NAME / BUCKET_NAME name the research store here


def _options(environ: dict[str, str]) -> Options:
    names = {
        n.strip() for n in environ.get("DEID_OPTIONS", "").split(",") if n.strip() and n.strip() != "none"
    }
    known = set(Options.__dataclass_fields__) - {"dates"}
    unknown = names - known
    if unknown:
        raise ValueError(f"unknown DEID_OPTIONS: {', '.join(sorted(unknown))}")
    return Options(dates=Dates(environ.get("DEID_DATES", "modified")), **dict.fromkeys(names, True))


def _key(secret_arn: str) -> bytes:
    secret = boto3.client("secretsmanager").get_secret_value(SecretId=secret_arn)["SecretString"]
    return str(secret).encode()


PIPELINE = DeidPipeline(
    source=ObjectReader(os.environ["SOURCE_BUCKET_NAME"]),
    deidentifier=Deidentifier(_key(os.environ["DEID_KEY_SECRET_ARN"]), _options(dict(os.environ))),
    stow=StowService.of(SETTINGS),
    quarantine=S3InstanceStore(SETTINGS.bucket_name),
    rules=Rules.from_environ(os.environ),
)


def handle(record: SQSRecord) -> None:
    detail = json.loads(record.body)["detail"]
    subject = audit.Subject(
        detail.get("studyInstanceUID"), detail.get("seriesInstanceUID"), detail.get("sopInstanceUID")
    )
    try:
        outcome = PIPELINE.process(detail)
    except Exception:
        audit.emit(_audit_record(subject, audit.Outcome.SERIOUS_FAILURE, "failed"))
        raise
    audit.emit(_audit_record(subject, audit.Outcome.SUCCESS, outcome.status))
    logger.info("de-identification", extra={"status": outcome.status, "reason": outcome.reason})
    metrics.add_metric(f"Deid{outcome.status.capitalize()}", MetricUnit.Count, 1)


def _audit_record(subject: audit.Subject, outcome: int, status: str) -> dict[str, Any]:
    """De-identification exports an instance to the research store (PS3.15 A.5.3.8 Export)."""
    return audit.hook_record(
        audit.AuditEvent.EXPORT,
        action="R",
        subject=subject,
        outcome=outcome,
        description=f"de-identification: {status}",
    )


handler = sqs_handler(handle)
