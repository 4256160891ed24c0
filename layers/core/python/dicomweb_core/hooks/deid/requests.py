"""On-demand de-identification of one study: queue one request per stored instance.

The requests go to the same queue as the automatic hook, with the same detail shape as
``InstanceStored`` plus ``forced``, so the selection rules (modalities) do not apply and
the work runs asynchronously with the same retries and dead-letter queue.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from dicomweb_core.errors import NotFound
from dicomweb_core.index.access import Index

DETAIL_TYPE = "DeidentificationRequested"
_BATCH = 10  # SendMessageBatch limit


def study_requests(index: Index, study: str) -> list[dict[str, Any]]:
    """One request detail per instance of the study in the primary index; 404 if none."""
    details = [
        {
            "studyInstanceUID": item.study_uid,
            "seriesInstanceUID": item.series_uid,
            "sopInstanceUID": item.sop_uid,
            "sopClassUID": item.sop_class_uid,
            "s3Key": item.s3_key,
            "s3VersionId": item.s3_version_id,
            "forced": True,
        }
        for item in index.study_instances(study)
    ]
    if not details:
        raise NotFound("No such study.")
    return details


def enqueue(sqs: Any, queue_url: str, details: list[dict[str, Any]]) -> int:
    for batch in _batches(details):
        entries = [
            {"Id": str(n), "MessageBody": json.dumps({"detail-type": DETAIL_TYPE, "detail": d})}
            for n, d in enumerate(batch)
        ]
        response = sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
        if response.get("Failed"):
            raise RuntimeError(f"SQS refused {len(response['Failed'])} de-identification requests")
    return len(details)


def _batches(details: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(details), _BATCH):
        yield details[start : start + _BATCH]
