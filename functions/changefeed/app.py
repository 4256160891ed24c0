"""Change feed: the index tables' streams (DynamoDB Streams → Lambda) → ``InstanceStored`` on the bus.

See ``dicomweb_core.changefeed``: one event per committed instance write, published from the
commit itself, so a request that dies after its commit cannot lose it. A batch answers with
the first record not published (``ReportBatchItemFailures``); Lambda retries from there.
"""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from dicomweb_core.changefeed.feed import ChangeFeed
from dicomweb_core.observability import MetricUnit, logger, metrics, tracer

FEED = ChangeFeed.from_environ(os.environ)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    result = FEED.handle(event["Records"])
    metrics.add_metric("InstanceStoredPublished", MetricUnit.Count, result.published)
    if result.failed:
        metrics.add_metric("ChangeFeedRetries", MetricUnit.Count, 1)
    return dict(result.response())
