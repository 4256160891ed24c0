"""Objects without an index entry: each instance object in S3 checked against the index.

The current objects under ``studies/`` are listed in key order (ListObjectsV2). Each
instance object (``.../instances/{sop}/{write}.dcm``, or ``.../instances/{sop}.dcm`` from
before per-write keys) older than the grace period is checked against the index entry of its
SOP Instance UID (its claim and instance item, strongly consistent GetItems):

- the index names this object: nothing to do (the common case);
- the study is being deleted, or the object was written before its last DELETE began (or
  within the grace period after, by a write that began before): it is left to DELETE, which
  hides what it sweeps. Indexing it would bring back an instance of a deleted study;
- the index names another object: this one is a leftover (the loser of a duplicate, a
  write refused or replaced whose clean-up failed). It and its metadata document are
  hidden: a delete marker each, recoverable until ``DeletedVersionRetentionDays`` expire;
- no instance indexed: the index write was lost after the PUTs. The bytes are stored again through
  :class:`~dicomweb_core.stow.service.StowService`, with STOW-RS's validation, its fence
  against a racing DELETE, and its ``InstanceStored`` event; that writes them under a write
  key of its own and indexes them. Only then is the stray object hidden.

Each step is safe to repeat: a run that dies after indexing and before hiding finds the
stray object indexed at another key next time, and hides it then. Metadata documents
(``.json``) are handled with their instance object, never on their own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from dicomweb_core.dicom.uid import is_valid_uid
from dicomweb_core.index.writer import IndexWriter
from dicomweb_core.observability import logger
from dicomweb_core.reconcile.report import Finding, Report
from dicomweb_core.storage import InstanceStore, metadata_key
from dicomweb_core.stow.service import StowService

INSTANCES_PREFIX = "studies/"
_PAGE = 1000  # ListObjectsV2's most keys per request


@dataclass(frozen=True, slots=True)
class InstanceObject:
    """An instance object's key and the validated UIDs it names."""

    key: str
    study: str
    series: str
    sop: str

    def finding(self, detail: str = "") -> Finding:
        return Finding(self.study, self.series, self.sop, self.key, detail)


def instance_object(key: str) -> InstanceObject | None:
    """The instance ``key`` names (``studies/{st}/series/{se}/instances/{sop}[/{write}].dcm``),
    or None for any other key (metadata documents included)."""
    if not key.endswith(".dcm"):
        return None
    parts = key.removesuffix(".dcm").split("/")
    if len(parts) not in (6, 7) or parts[0] != "studies" or parts[2] != "series" or parts[4] != "instances":
        return None
    study, series, sop = parts[1], parts[3], parts[5]
    if len(parts) == 7 and not parts[6]:
        return None
    if not all(is_valid_uid(uid) for uid in (study, series, sop)):
        return None
    return InstanceObject(key, study, series, sop)


class ObjectsPass:
    """Checks the instance objects of one run, in key order."""

    def __init__(
        self,
        *,
        bucket: str,
        client: Any,
        index: IndexWriter,
        stow: StowService,
        store: InstanceStore,
        grace: timedelta,
        now: Callable[[], datetime],
    ) -> None:
        self.bucket = bucket
        self.client = client
        self.index = index
        self.stow = stow
        self.store = store
        self.grace = grace
        self.now = now

    def run(self, after: str | None, *, budget: int, stop: Callable[[], bool], report: Report) -> str | None:
        """Check up to ``budget`` keys after ``after``, until ``stop()``; return the last key
        checked, or None when the listing reached its end (the pass is complete)."""
        oldest = self.now() - self.grace  # newer objects may belong to a write under way
        listed = 0
        token: str | None = None
        while True:
            arguments: dict[str, Any] = {
                "Bucket": self.bucket,
                "Prefix": INSTANCES_PREFIX,
                "MaxKeys": min(_PAGE, budget - listed),
            }
            if token is not None:
                arguments["ContinuationToken"] = token
            elif after is not None:
                arguments["StartAfter"] = after
            page = self.client.list_objects_v2(**arguments)
            contents = page.get("Contents", [])
            for position, entry in enumerate(contents):
                key = str(entry["Key"])
                self.check(key, entry["LastModified"], oldest=oldest, report=report)
                report.objects_scanned += 1
                listed += 1
                after = key
                if stop():
                    at_end = position == len(contents) - 1 and not page.get("IsTruncated")
                    return None if at_end else after
            if not page.get("IsTruncated"):
                return None
            if listed >= budget:
                return after
            token = str(page["NextContinuationToken"])

    def check(self, key: str, last_modified: datetime, *, oldest: datetime, report: Report) -> None:
        """Check one listed key (errors are counted, logged, and left for the next pass)."""
        located = instance_object(key)
        if located is None:
            if not key.endswith(".json"):
                report.unrecognised += 1
            return
        if last_modified > oldest:
            report.young += 1
            return
        report.instances_checked += 1
        try:
            self._reconcile(located, last_modified, report)
        except Exception:
            logger.exception("reconciling an object failed; the next pass tries again", extra={"key": key})
            report.errors += 1

    def _reconcile(self, located: InstanceObject, last_modified: datetime, report: Report) -> None:
        existing = self.index.find(located.sop)
        if existing is not None and existing.stored.key == located.key:
            return
        # Read after the index entry: a DELETE that removed it has marked the study by then.
        if self._left_to_delete(located.study, last_modified):
            report.left_to_delete.append(located.finding())
            return
        if existing is not None:
            self._hide(located.key)
            report.hidden.append(located.finding(f"indexed at {existing.stored.key}"))
            return
        self._index(located, report)

    def _left_to_delete(self, study: str, last_modified: datetime) -> bool:
        """Is the study being deleted, or was the object written before its last DELETE
        began (or within the grace period after, by a write that started before it)?"""
        deleted = self.index.tombstone(study)
        if deleted is None:
            return False
        if deleted.deleting is not None or deleted.updated_at is None:
            return True
        return bool(last_modified < deleted.updated_at + self.grace)

    def _index(self, located: InstanceObject, report: Report) -> None:
        try:
            data = self.client.get_object(Bucket=self.bucket, Key=located.key)["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return  # hidden since it was listed
        outcome = self.stow.store_all([memoryview(data)], study=None)
        if outcome.failures:
            (failure,) = outcome.failures
            report.refused.append(located.finding(f"{failure.reason:#06x}: {failure.message}"))
            return
        (stored,) = outcome.stored
        if stored.stored.key != located.key:
            self._hide(located.key)
        report.indexed.append(
            Finding(
                stored.study_instance_uid,
                stored.series_instance_uid,
                stored.sop_instance_uid,
                located.key,
                f"indexed at {stored.stored.key}",
                stored.patient_id,
            )
        )

    def _hide(self, key: str) -> None:
        """The metadata document first, then the instance object: if this dies in between,
        the next pass still sees the instance object and hides both again."""
        self.store.hide(metadata_key(key))
        self.store.hide(key)
