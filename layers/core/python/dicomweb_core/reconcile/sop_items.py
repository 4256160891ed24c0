"""Index entries without an object: each SOP item checked against the object version it names.

The SOP items are read with a paginated Scan of the index table filtered on the item kind
(``kind = "sop"``). There is no key that lists every SOP item (by design: no partition holds
"all instances"), and a batch job that reads the whole table once per pass is what a Scan is
for; no request path ever scans. The filter applies after the read, so a Scan reads, and is
billed for, every item of the table: docs/write-safety.md gives the cost per pass.

For each SOP item one HEAD of its key tells whether the current version is the indexed one
(the common case, and the invariant: docs/write-safety.md, invariant 1). Otherwise a HEAD
of the indexed version tells whether it still exists (``noncurrent``: a delete marker or a
later version hides it; recoverable until the lifecycle rule expires it) or not (``gone``).
Before flagging, the SOP item is read again with strong consistency, since the Scan's read
may predate an overwrite or a DELETE that retired the object. A missing object is flagged
in the report and its metric, never removed from the index: the decision (restore the
version, store the instance again, or delete it) is a person's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError

from dicomweb_core.index.models import SopItem
from dicomweb_core.index.writer import IndexWriter
from dicomweb_core.observability import logger
from dicomweb_core.reconcile.report import GONE, NONCURRENT, Finding, Report

_PAGE = 500  # index items read per Scan request (DynamoDB also ends a page at 1 MB)
_ABSENT = frozenset({"404", "NoSuchKey", "NoSuchVersion", "405", "MethodNotAllowed"})
CURRENT = "current"


class SopItemsPass:
    """Checks the SOP items of one run, in the Scan's order."""

    def __init__(self, *, bucket: str, client: Any, index: IndexWriter) -> None:
        self.bucket = bucket
        self.client = client
        self.index = index

    def run(
        self, after: dict[str, Any] | None, *, budget: int, stop: Callable[[], bool], report: Report
    ) -> dict[str, Any] | None:
        """Check SOP items from ``after`` (a Scan key) until ``budget`` items were read or
        ``stop()``; return the key to go on from, or None when the Scan reached the end."""
        pages = SopItem.scan(last_evaluated_key=after, page_size=_PAGE).page_iter
        read = 0
        for page in pages:
            items = page.get("Items", [])
            read += int(page.get("ScannedCount", 0))
            report.items_read += int(page.get("ScannedCount", 0))
            for position, raw in enumerate(items):
                item = SopItem.from_raw_data(raw)
                self.check(item, report)
                if stop() and (position < len(items) - 1 or pages.last_evaluated_key is not None):
                    # Go on right after this item next time (a table Scan's key is the item's key).
                    return {"pk": {"S": item.pk}, "sk": {"S": item.sk}}
            resume = pages.last_evaluated_key
            if resume is None:
                return None
            if read >= budget or stop():
                return dict(resume)
        return None

    def check(self, item: SopItem, report: Report) -> None:
        """Check one SOP item (errors are counted, logged, and left for the next pass)."""
        report.sop_items_scanned += 1
        sop = item.pk.removeprefix("SOP#")
        try:
            state = self.object_state(item.s3_key, item.s3_version_id)
            if state == CURRENT:
                return
            current = self.index.find(sop)
            if current is None or current.stored.key != item.s3_key:
                return  # replaced or deleted since the Scan read it
            report.missing.append(Finding(item.study_uid, item.series_uid, sop, item.s3_key, state))
            logger.warning(
                "an indexed instance's object is missing", extra={"key": item.s3_key, "state": state}
            )
        except Exception:
            logger.exception(
                "checking an index entry failed; the next pass tries again", extra={"key": item.s3_key}
            )
            report.errors += 1

    def object_state(self, key: str, version_id: str | None) -> str:
        """``current`` when the indexed version is the key's current one, else ``noncurrent``
        (the version exists) or ``gone`` (it does not)."""
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            if _code(error) not in _ABSENT:
                raise
        else:
            if version_id is None or head.get("VersionId") == version_id:
                return CURRENT
        if version_id is None:
            return GONE
        try:
            self.client.head_object(Bucket=self.bucket, Key=key, VersionId=version_id)
        except ClientError as error:
            if _code(error) not in _ABSENT:
                raise
            return GONE
        return NONCURRENT


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))
