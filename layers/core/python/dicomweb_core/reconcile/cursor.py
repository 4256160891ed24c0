"""Where the next reconciliation run goes on: an S3 object beside the reports.

A run covers a bounded part of the store; the cursor names the last object key it checked
(the next run lists from there with ``StartAfter``, which unlike a continuation token does
not go stale between runs) and the key the index Scan goes on from. One run at a time
writes it (the function's reserved concurrency is 1 where the account can reserve any; the
local scheduler runs one invocation at a time). Two overlapping runs start from the same
cursor and the last to finish saves its own: some keys are checked twice, none skipped,
and every repair is idempotent.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from dicomweb_core.observability import logger
from dicomweb_core.reconcile.report import REPORT_PREFIX

CURSOR_KEY = f"{REPORT_PREFIX}state.json"


@dataclass(frozen=True, slots=True)
class Cursor:
    objects_after: str | None = None  # the last object key checked; None: from the start
    entries_after: dict[str, Any] | None = None  # the Scan's ExclusiveStartKey; None: from the start
    objects_passes: int = 0  # complete passes over the objects so far
    entries_passes: int = 0  # complete passes over the index entries so far

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class CursorStore:
    """Reads and writes the cursor object (``reports/reconcile/state.json``)."""

    def __init__(self, *, bucket: str, client: Any, key: str = CURSOR_KEY) -> None:
        self.bucket = bucket
        self.client = client
        self.key = key

    def load(self) -> Cursor:
        """The saved cursor; a missing or unreadable one starts a new pass (nothing is lost:
        a pass only checks again what an earlier one checked)."""
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.key)["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return Cursor()
        try:
            document = json.loads(body)
            return Cursor(
                objects_after=_text_or_none(document.get("objects_after")),
                entries_after=_key_or_none(document.get("entries_after")),
                objects_passes=int(document.get("objects_passes", 0)),
                entries_passes=int(document.get("entries_passes", 0)),
            )
        except (ValueError, TypeError, AttributeError):
            logger.warning("the reconciliation cursor is unreadable; starting a new pass")
            return Cursor()

    def save(self, cursor: Cursor) -> None:
        self.client.put_object(
            Bucket=self.bucket,
            Key=self.key,
            Body=json.dumps(cursor.to_json()).encode(),
            ContentType="application/json",
        )


def _text_or_none(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError("objects_after must be a string")
    return value


def _key_or_none(value: object) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise TypeError("entries_after must be a DynamoDB key")
    return value
