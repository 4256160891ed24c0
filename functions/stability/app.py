"""Stability hook: delayed InstanceStored (EventBridge → SQS with DelaySeconds) → SeriesStable / StudyStable.

See ``dicomweb_core.hooks.stability`` for the rule; the queue's delivery delay is the stable age.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta

import boto3
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from dicomweb_core.config import settings
from dicomweb_core.entry.hooks import sqs_handler
from dicomweb_core.events import EventPublisher
from dicomweb_core.hooks.stability import StabilityService
from dicomweb_core.index.access import Index
from dicomweb_core.observability import MetricUnit, logger, metrics

SETTINGS = settings()
QUEUE_URL = os.environ["STABILITY_QUEUE_URL"]
SERVICE = StabilityService(
    stable_age=timedelta(seconds=int(os.environ["STABLE_AGE_SECONDS"])),
    events=EventPublisher.of(SETTINGS),
    index=Index.for_table(SETTINGS.table_name),
)
SQS = boto3.client("sqs")


def handle(record: SQSRecord) -> None:
    observation = SERVICE.observe(json.loads(record.body))
    if observation.outcome == "not-yet":  # delivered before the series was quiet long enough
        SQS.send_message(
            QueueUrl=QUEUE_URL, MessageBody=record.body, DelaySeconds=min(observation.retry_after, 900)
        )
    for detail_type in observation.published:
        metrics.add_metric(detail_type, MetricUnit.Count, 1)
    logger.debug("stability", extra={"outcome": observation.outcome})


handler = sqs_handler(handle)
