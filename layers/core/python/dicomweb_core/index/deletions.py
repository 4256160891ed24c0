"""The index's side of deleting a study: the steps of ``DELETE /studies/{study}`` that write
the index (the order and why it is safe: :mod:`dicomweb_core.delete.service`,
docs/write-safety.md).

- :meth:`StudyDeletions.begin` marks the study item ``deleting`` and counts the DELETE on
  the tombstone, in one transaction: from then on every write into the study is refused;
- :meth:`StudyDeletions.remove_entries` removes the study's series, instance and
  inference-run items and each instance's SOP claim, read after the mark so that no
  instance committed before it is missed;
- :meth:`StudyDeletions.finish` removes the study item and records on the tombstone how
  many instances went, in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property

from pynamodb.connection import Connection
from pynamodb.exceptions import TransactWriteError
from pynamodb.transactions import TransactWrite

from dicomweb_core.index.models import DeletedStudyItem, IndexItem, InstanceItem, SopItem, StudyItem, study_pk
from dicomweb_core.index.table import IndexTable, on_own_table


@dataclass(frozen=True, slots=True)
class RemovedEntries:
    """What :meth:`StudyDeletions.remove_entries` found and removed."""

    study: StudyItem | None
    instances: list[InstanceItem]


@dataclass
class StudyDeletions:
    """Deleting studies from one store's index."""

    table: IndexTable = field(default_factory=IndexTable)

    @on_own_table
    def begin(self, study: str, started: datetime) -> bool:
        """Mark the study as being deleted since ``started`` (an interrupted DELETE keeps its
        earlier start: writes since then stay refused). False when there is no study item."""
        try:
            with TransactWrite(connection=self._connection) as tx:
                tx.update(
                    StudyItem(*StudyItem.key(study)),
                    actions=[StudyItem.deleting.set(StudyItem.deleting | started)],
                    condition=StudyItem.pk.exists(),
                )
                tx.update(
                    DeletedStudyItem(*DeletedStudyItem.key(study)),
                    actions=[
                        DeletedStudyItem.study_uid.set(study),
                        DeletedStudyItem.kind.set(DeletedStudyItem),
                        DeletedStudyItem.deletions.add(1),
                        DeletedStudyItem.deleting.set(DeletedStudyItem.deleting | started),
                        DeletedStudyItem.updated_at.set(started),
                    ],
                )
        except TransactWriteError as exc:
            if any(r is not None and r.code == "ConditionalCheckFailed" for r in exc.cancellation_reasons):
                return False
            raise
        return True

    @on_own_table
    def remove_entries(self, study: str) -> RemovedEntries:
        """Remove every item of the study but its study item and tombstone, and the SOP
        claims of its instances (so their UIDs can be stored again)."""
        items = list(IndexItem.query(study_pk(study), consistent_read=True))
        instances = [i for i in items if isinstance(i, InstanceItem)]
        with IndexItem.batch_write() as batch:
            for instance in instances:
                batch.delete(SopItem(*SopItem.key(instance.sop_uid)))
            for item in items:
                if not isinstance(item, DeletedStudyItem | StudyItem):
                    batch.delete(item)
        study_item = next((i for i in items if isinstance(i, StudyItem)), None)
        return RemovedEntries(study_item, instances)

    @on_own_table
    def finish(self, study: str, instances: int) -> None:
        """Remove the study item (the study may be stored anew) and close the tombstone."""
        with TransactWrite(connection=self._connection) as tx:
            tx.delete(StudyItem(*StudyItem.key(study)), condition=StudyItem.deleting.exists())
            tx.update(
                DeletedStudyItem(*DeletedStudyItem.key(study)),
                actions=[
                    DeletedStudyItem.instance_count.set(instances),
                    DeletedStudyItem.deleting.remove(),
                ],
            )

    @cached_property
    def _connection(self) -> Connection:
        return Connection(region=IndexItem.Meta.region)
