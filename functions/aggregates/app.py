"""Aggregates: the index tables' streams (DynamoDB Streams → Lambda) → study and series counts.

See ``dicomweb_core.index.aggregates``: each batch recounts the series its instance records
touch, and their studies, from the items as they are, so a retried, replayed or reordered
batch sets the same values. An error fails the batch; Lambda splits and retries it.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from dicomweb_core.index.aggregates import Aggregates, touched_in
from dicomweb_core.observability import MetricUnit, logger, metrics, tracer

AGGREGATES = Aggregates()


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    result = AGGREGATES.recount(touched_in(event["Records"]))
    metrics.add_metric("SeriesRecounted", MetricUnit.Count, result.series_updated)
    metrics.add_metric("StudiesRecounted", MetricUnit.Count, result.studies_updated)
    return {"batchItemFailures": []}
