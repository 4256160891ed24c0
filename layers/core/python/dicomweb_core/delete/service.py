"""Deleting a study (``DELETE /studies/{study}``; not part of PS3.18, offered as the cloud
DICOM services and dcm4chee do).

In order, so that a crash at any point leaves a state a retry completes, and so that a
STOW racing the DELETE either lands before it (and is deleted with the study) or is
refused (docs/write-safety.md):

1. one transaction marks the study item ``deleting`` and writes the tombstone
   (``DeletedStudyItem``, with when this DELETE began). From then on every write into the
   study is refused, and its UIDs answer ``410 Gone``;
2. the index items go, read after the mark so that no instance committed before it is
   missed: the series, instance and inference-run items, and each instance's SOP item,
   so the SOP Instance UIDs can be stored again;
3. the objects go: instances and their metadata documents, pre-built series metadata and
   large-retrieval bodies. The bucket is versioned, so a delete only adds a delete marker:
   the bytes stay recoverable for ``DeletedVersionRetentionDays``;
4. the study item goes (the study may now be stored anew; a STOW whose objects were
   written before step 1 is still refused, since step 3 may have hidden them);
5. ``StudyDeleted`` is published.

A repeated DELETE of a study whose deletion was interrupted resumes it (step 1 again); of
a deleted study, it sweeps the objects again and answers 410. Search postings that still
name the study are harmless: searches read the study item they point to, which is gone.
The de-identified copy in the research store is not deleted (it is an export).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

import boto3
from pynamodb.connection import Connection
from pynamodb.exceptions import TransactWriteError
from pynamodb.transactions import TransactWrite

from dicomweb_core.errors import Gone, NotFound
from dicomweb_core.events import STUDY_DELETED, EventPublisher
from dicomweb_core.index import keys
from dicomweb_core.index.models import DeletedStudyItem, IndexItem, InstanceItem, SopItem, StudyItem, study_pk
from dicomweb_core.index.reader import tombstone as _tombstone

_OBJECT_PREFIXES = (
    "studies/{study}/",
    "cache/metadata/{study}/",
    "cache/thumbnails/{study}/",
    "bundles/{study}/",
)


@dataclass(frozen=True, slots=True)
class DeletedStudy:
    study_uid: str
    patient_id: str | None
    instances: int


class DeleteService:
    def __init__(self, *, bucket: str, events: EventPublisher, client: Any = None) -> None:
        self.bucket = bucket
        self.events = events
        self._client = client

    @cached_property
    def client(self) -> Any:
        return self._client or boto3.client("s3")

    def delete_study(self, study: str) -> DeletedStudy:
        started = datetime.now(UTC)
        if not self._mark(study, started):
            if _tombstone(study) is not None:
                self._delete_objects(study)  # finish an interrupted delete
                raise Gone("The study was deleted.")
            raise NotFound("No such study.")
        items = list(IndexItem.query(study_pk(study), consistent_read=True))
        study_item = next((i for i in items if isinstance(i, StudyItem)), None)
        instances = [i for i in items if isinstance(i, InstanceItem)]
        patient = keys.first_value(json.loads(study_item.dicom_json), "00100020") if study_item else None
        with IndexItem.batch_write() as batch:
            for instance in instances:
                batch.delete(SopItem(*SopItem.key(instance.sop_uid)))
            for item in items:
                if not isinstance(item, DeletedStudyItem | StudyItem):
                    batch.delete(item)
        self._delete_objects(study)
        with TransactWrite(connection=self._connection) as tx:
            tx.delete(StudyItem(*StudyItem.key(study)), condition=StudyItem.deleting.exists())
            tx.update(
                DeletedStudyItem(*DeletedStudyItem.key(study)),
                actions=[
                    DeletedStudyItem.instance_count.set(len(instances)),
                    DeletedStudyItem.deleting.remove(),
                ],
            )
        self.events.publish(STUDY_DELETED, [{"studyInstanceUID": study, "instances": len(instances)}])
        return DeletedStudy(study, str(patient) if patient else None, len(instances))

    def _mark(self, study: str, started: datetime) -> bool:
        """Step 1: the study is being deleted. False when there is no study item."""
        try:
            with TransactWrite(connection=self._connection) as tx:
                tx.update(
                    StudyItem(*StudyItem.key(study)),
                    # an interrupted DELETE keeps its start: writes since then stay refused
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

    @cached_property
    def _connection(self) -> Connection:
        return Connection(region=IndexItem.Meta.region)

    def _delete_objects(self, study: str) -> None:
        paginator = self.client.get_paginator("list_objects_v2")
        for template in _OBJECT_PREFIXES:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=template.format(study=study)):
                batch = [{"Key": entry["Key"]} for entry in page.get("Contents", [])]
                if batch:
                    self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
