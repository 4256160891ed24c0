"""Reconciliation job: EventBridge Scheduler (template.yaml ``ReconcileSchedule``) → here.

Compares S3 with the index and repairs both ways (``dicomweb_core.reconcile``): objects
without an index entry are indexed, leftovers hidden, index entries without an object
flagged. What the run did goes to ``reports/reconcile/``, to CloudWatch metrics and to the
audit trail. One run at a time (reserved concurrency 1); each resumes where the last stopped.
"""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from dicomweb_core import audit
from dicomweb_core.config import settings
from dicomweb_core.observability import logger, metrics, tracer
from dicomweb_core.reconcile.job import Reconciler
from dicomweb_core.reconcile.settings import ReconcileSettings

# Time kept back from the invocation's for saving the cursor, the report and the records.
MARGIN_S = 60.0
JOB = Reconciler.of(settings(), ReconcileSettings.from_environ(os.environ))


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    seconds = max(context.get_remaining_time_in_millis() / 1000 - MARGIN_S, 1.0)
    trigger = event.get("trigger") if isinstance(event, dict) else None  # the schedule's Input
    report = JOB.run(trigger=str(trigger or "schedule"), seconds=seconds)
    report.add_metrics(metrics)
    for record in report.audit_records():
        audit.emit(record)
    logger.info("reconciliation", extra={"report": report.key, "counts": report.counts()})
    return {"report": report.key, **report.counts()}
