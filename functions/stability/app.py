"""Stability hook: delayed InstanceStored (EventBridge → SQS with DelaySeconds) → SeriesStable / StudyStable.

See ``dicomweb_core.stability`` for the rule; the queue's delivery delay is the stable age.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from typing import Any

import boto3
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from dicomweb_core.config import settings
from dicomweb_core.events import EventPublisher
from dicomweb_core.observability import MetricUnit, logger, metrics, tracer
from dicomweb_core.stability import StabilityService

SETTINGS = settings()
QUEUE_URL = os.environ["STABILITY_QUEUE_URL"]
SERVICE = StabilityService(
    stable_age=timedelta(seconds=int(os.environ["STABLE_AGE_SECONDS"])),
    events=EventPublisher(SETTINGS.event_bus_name, source=SETTINGS.event_source),
)
SQS = boto3.client("sqs")
processor = BatchProcessor(event_type=EventType.SQS)


@tracer.capture_method
def handle(record: SQSRecord) -> None:
    observation = SERVICE.observe(json.loads(record.body))
    if observation.outcome == "not-yet":  # delivered before the series was quiet long enough
        SQS.send_message(
            QueueUrl=QUEUE_URL, MessageBody=record.body, DelaySeconds=min(observation.retry_after, 900)
        )
    for detail_type in observation.published:
        metrics.add_metric(detail_type, MetricUnit.Count, 1)
    logger.debug("stability", extra={"outcome": observation.outcome})


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    response = process_partial_response(
        event=event, record_handler=handle, processor=processor, context=context
    )
    return dict(response)
