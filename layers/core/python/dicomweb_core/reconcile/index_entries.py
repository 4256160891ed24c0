"""Index entries without an object, and SOP claims without an instance.

The instance items and SOP claims are read with a paginated Scan of the index table
filtered on the item kind. There is no key that lists every instance (by design: no
partition holds "all instances"), and a batch job that reads the whole table once per pass
is what a Scan is for; no request path ever scans. The filter applies after the read, so a
Scan reads, and is billed for, every item of the table: docs/write-safety.md gives the cost
per pass.

For each instance item one HEAD of its key tells whether the current version is the indexed
one (the common case, and the invariant: docs/write-safety.md, invariant 1). Otherwise a HEAD
of the indexed version tells whether it still exists (``noncurrent``: a delete marker or a
later version hides it; recoverable until the lifecycle rule expires it) or not (``gone``).
Before flagging, the instance is read again with strong consistency, since the Scan's read
may predate an overwrite or a DELETE that retired the object. A missing object is flagged
in the report and its metric, never removed from the index: the decision (restore the
version, store the instance again, or delete it) is a person's.

A SOP claim older than :data:`~dicomweb_core.index.writer.CLAIM_GRACE` with no instance item
at the place it names belongs to a write that failed before its commit: it is released
(conditional on being unchanged since the read), so the UID can be stored elsewhere at once.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from dicomweb_core.index.models import IndexItem, InstanceItem, SopItem
from dicomweb_core.index.writer import CLAIM_GRACE, IndexWriter
from dicomweb_core.observability import logger
from dicomweb_core.reconcile.report import GONE, NONCURRENT, Finding, Report

_PAGE = 500  # index items read per Scan request (DynamoDB also ends a page at 1 MB)
_ABSENT = frozenset({"404", "NoSuchKey", "NoSuchVersion", "405", "MethodNotAllowed"})
CURRENT = "current"


def _now() -> datetime:
    return datetime.now(UTC)


class IndexEntriesPass:
    """Checks the instance items and SOP claims of one run, in the Scan's order."""

    def __init__(
        self, *, bucket: str, client: Any, index: IndexWriter, now: Callable[[], datetime] = _now
    ) -> None:
        self.bucket = bucket
        self.client = client
        self.index = index
        self.now = now

    def run(
        self, after: dict[str, Any] | None, *, budget: int, stop: Callable[[], bool], report: Report
    ) -> dict[str, Any] | None:
        """Check entries from ``after`` (a Scan key) until ``budget`` items were read or
        ``stop()``; return the key to go on from, or None when the Scan reached the end."""
        pages = self.index.entry_pages(after, page_size=_PAGE)
        read = 0
        for page in pages:
            items = page.get("Items", [])
            read += int(page.get("ScannedCount", 0))
            report.items_read += int(page.get("ScannedCount", 0))
            for position, raw in enumerate(items):
                item = IndexItem.from_raw_data(raw)
                if isinstance(item, InstanceItem):
                    self.check(item, report)
                elif isinstance(item, SopItem):
                    self.check_claim(item, report)
                if stop() and (position < len(items) - 1 or pages.last_evaluated_key is not None):
                    # Go on right after this item next time (a table Scan's key is the item's key).
                    return {"pk": {"S": item.pk}, "sk": {"S": item.sk}}
            resume = pages.last_evaluated_key
            if resume is None:
                return None
            if read >= budget or stop():
                return dict(resume)
        return None

    def check(self, item: InstanceItem, report: Report) -> None:
        """Check one instance item (errors are counted, logged, and left for the next pass)."""
        report.entries_scanned += 1
        try:
            state = self.object_state(item.s3_key, item.s3_version_id)
            if state == CURRENT:
                return
            current = self.index.find(item.sop_uid)
            if current is None or current.stored.key != item.s3_key:
                return  # replaced or deleted since the Scan read it
            report.missing.append(Finding(item.study_uid, item.series_uid, item.sop_uid, item.s3_key, state))
            logger.warning(
                "an indexed instance's object is missing", extra={"key": item.s3_key, "state": state}
            )
        except Exception:
            logger.exception(
                "checking an index entry failed; the next pass tries again", extra={"key": item.s3_key}
            )
            report.errors += 1

    def check_claim(self, claim: SopItem, report: Report) -> None:
        """Release a SOP claim that never got its instance (errors: as :meth:`check`)."""
        claimed_at = claim.updated_at
        if claimed_at is not None and self.now() - claimed_at < CLAIM_GRACE:
            return  # a write may still be committing it
        sop = claim.pk.removeprefix("SOP#")
        try:
            if self.index.release_unused_claim(claim):
                report.released.append(Finding(claim.study_uid, claim.series_uid, sop, ""))
        except Exception:
            logger.exception("checking a SOP claim failed; the next pass tries again", extra={"sop": sop})
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
