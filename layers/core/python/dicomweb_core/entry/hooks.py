"""The entry kit of the event hooks: an SQS batch whose records are handled one by one.

Each hook's ``app.py`` defines ``handle(record)`` for one message (an EventBridge event
delivered through SQS) and ``handler = sqs_handler(handle)``. A record that raises is
reported as a batch item failure, so SQS redelivers only that message, and dead-letters it
after the queue's receive count; the others are deleted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from dicomweb_core.observability import logger, metrics, tracer

Handler = Callable[[dict[str, Any], LambdaContext], dict[str, Any]]


def sqs_handler(handle: Callable[[SQSRecord], None]) -> Handler:
    """The Lambda handler of a hook: logger context, tracer and metrics around a partial
    batch response over ``handle``."""
    processor = BatchProcessor(event_type=EventType.SQS)
    traced = tracer.capture_method(handle)

    @logger.inject_lambda_context
    @tracer.capture_lambda_handler
    @metrics.log_metrics
    def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        return dict(
            process_partial_response(event=event, record_handler=traced, processor=processor, context=context)
        )

    return handler
