"""One reconciliation run: the objects, then the index entries, each from where the last run stopped.

A run gets the invocation's time less a margin for writing the cursor and the report; the
objects get the first half of it (the index entries the rest, and whatever the objects left),
and each direction also stops after its budget of keys or index items
(:class:`~dicomweb_core.reconcile.settings.ReconcileSettings`). The cursor is saved after
each direction, so a run that dies loses at most what it did since: the next run checks
that part again, and every repair is idempotent.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import boto3

from dicomweb_core.config import Settings
from dicomweb_core.index.table import IndexTable
from dicomweb_core.index.writer import IndexWriter
from dicomweb_core.reconcile.cursor import Cursor, CursorStore
from dicomweb_core.reconcile.index_entries import IndexEntriesPass
from dicomweb_core.reconcile.objects import ObjectsPass
from dicomweb_core.reconcile.report import Report, report_key
from dicomweb_core.reconcile.settings import ReconcileSettings
from dicomweb_core.storage import S3InstanceStore
from dicomweb_core.stow.service import StowService


def _now() -> datetime:
    return datetime.now(UTC)


class Reconciler:
    """Runs reconciliation over one store (bucket and index)."""

    @classmethod
    def of(
        cls,
        settings: Settings,
        reconcile: ReconcileSettings,
        *,
        client: Any = None,
        now: Callable[[], datetime] = _now,
    ) -> Reconciler:
        """The job wired to the settings' bucket, index and bus, storing through STOW-RS's code."""
        s3 = client or boto3.client("s3")
        index = IndexWriter(IndexTable(settings.table_name))
        store = S3InstanceStore(settings.bucket_name, client=s3)
        stow = StowService.of(settings)
        return cls(
            settings=reconcile,
            bucket=settings.bucket_name,
            client=s3,
            objects=ObjectsPass(
                bucket=settings.bucket_name,
                client=s3,
                index=index,
                stow=stow,
                store=store,
                grace=reconcile.grace,
                now=now,
            ),
            entries=IndexEntriesPass(bucket=settings.bucket_name, client=s3, index=index, now=now),
            cursors=CursorStore(bucket=settings.bucket_name, client=s3),
            now=now,
        )

    def __init__(
        self,
        *,
        settings: ReconcileSettings,
        bucket: str,
        client: Any,
        objects: ObjectsPass,
        entries: IndexEntriesPass,
        cursors: CursorStore,
        now: Callable[[], datetime] = _now,
    ) -> None:
        self.settings = settings
        self.bucket = bucket
        self.client = client
        self.objects = objects
        self.entries = entries
        self.cursors = cursors
        self.now = now

    def run(self, *, trigger: str = "schedule", seconds: float | None = None) -> Report:
        """One run within ``seconds`` (None: until the budgets are spent); the report is
        written to ``reports/reconcile/`` and returned."""
        report = Report(
            started=self.now(),
            trigger=trigger,
            grace_seconds=int(self.settings.grace.total_seconds()),
            listed=self.settings.listed,
        )
        start = time.monotonic()
        end = start + seconds if seconds is not None else None
        halfway = start + seconds / 2 if seconds is not None else None
        cursor = self.cursors.load()

        objects_after = self.objects.run(
            cursor.objects_after, budget=self.settings.max_objects, stop=_until(halfway), report=report
        )
        report.objects_pass_complete = objects_after is None
        cursor = replace(
            cursor,
            objects_after=objects_after,
            objects_passes=cursor.objects_passes + report.objects_pass_complete,
        )
        self.cursors.save(cursor)

        entries_after = self.entries.run(
            cursor.entries_after, budget=self.settings.max_scanned_items, stop=_until(end), report=report
        )
        report.entries_pass_complete = entries_after is None
        cursor = replace(
            cursor,
            entries_after=entries_after,
            entries_passes=cursor.entries_passes + report.entries_pass_complete,
        )
        self.cursors.save(cursor)
        return self._finish(report, cursor)

    def _finish(self, report: Report, cursor: Cursor) -> Report:
        report.finished = self.now()
        report.resume = cursor.to_json()
        report.key = report_key(report.started)
        self.client.put_object(
            Bucket=self.bucket, Key=report.key, Body=report.body(), ContentType="application/json"
        )
        return report


def _until(deadline: float | None) -> Callable[[], bool]:
    if deadline is None:
        return lambda: False
    return lambda: time.monotonic() >= deadline
