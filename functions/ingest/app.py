"""Ingest hook: an object uploaded into a session (S3 event → SQS) → stored as by STOW-RS,
or quarantined with its reason (dicomweb_core.upload.ingest)."""

from __future__ import annotations

import json
import os
from typing import Any

import boto3
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from dicomweb_core import audit
from dicomweb_core.config import settings
from dicomweb_core.entry.hooks import sqs_handler
from dicomweb_core.observability import MetricUnit, metrics
from dicomweb_core.stow.service import StoredInstance, StowService
from dicomweb_core.upload.ingest import IngestService
from dicomweb_core.upload.sessions import SessionTable

SETTINGS = settings()
SERVICE = IngestService(
    sessions=SessionTable(os.environ["UPLOAD_TABLE_NAME"]),
    stow=StowService.of(SETTINGS),
    client=boto3.client("s3"),
    bucket=SETTINGS.bucket_name,
)


def handle(record: SQSRecord) -> None:
    for result in SERVICE.handle_event(json.loads(record.body)):
        metrics.add_metric(f"Uploads{result.state.capitalize()}", MetricUnit.Count, 1)
        if result.stored is not None and result.session is not None:
            audit.emit(_audit_record(result.stored, result.session.owner))


def _audit_record(stored: StoredInstance, owner: str) -> dict[str, Any]:
    """An uploaded instance arrived (PS3.15 A.5.3.7 Instances Transferred, as for STOW-RS);
    the session's opening is the API's own record, with the uploader as requestor."""
    subject = audit.Subject(
        stored.study_instance_uid, stored.series_instance_uid, stored.sop_instance_uid, stored.patient_id
    )
    return audit.hook_record(
        audit.AuditEvent.INSTANCES_TRANSFERRED,
        action="C",
        subject=subject,
        outcome=audit.Outcome.SUCCESS,
        description=f"stored from an upload session opened by {owner or 'an unauthenticated local caller'}",
    )


handler = sqs_handler(handle)
