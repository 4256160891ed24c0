"""Deleting a study (``DELETE /studies/{study}``; not part of PS3.18, offered as the cloud
DICOM services and dcm4chee do).

In order, so that a crash at any point leaves a state a retry completes:

1. a tombstone item is written (``DeletedStudyItem``): from then on the study's UIDs
   answer ``410 Gone`` instead of ``404``;
2. the index items go: the study's partition (study, series, instance, inference-run
   items) and each instance's SOP item, so the SOP Instance UIDs can be stored again;
3. the objects go: instances and their metadata documents, pre-built series metadata and
   large-retrieval bodies. The bucket is versioned, so a delete only adds a delete marker:
   the bytes stay recoverable for ``DeletedVersionRetentionDays``;
4. ``StudyDeleted`` is published.

A repeated DELETE of a deleted study sweeps the objects again (finishing an interrupted
delete) and answers 410. Search postings that still name the study are harmless: searches
read the study item they point to, which is gone. The de-identified copy in the research
store is not deleted (it is an export).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

import boto3

from dicomweb_core.errors import Gone, NotFound
from dicomweb_core.events import STUDY_DELETED, EventPublisher
from dicomweb_core.index import keys
from dicomweb_core.index.models import DeletedStudyItem, IndexItem, InstanceItem, SopItem, StudyItem, study_pk

_OBJECT_PREFIXES = ("studies/{study}/", "cache/metadata/{study}/", "bundles/{study}/")


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
        items = list(IndexItem.query(study_pk(study), consistent_read=True))
        study_item = next((i for i in items if isinstance(i, StudyItem)), None)
        if study_item is None:
            if any(isinstance(i, DeletedStudyItem) for i in items):
                self._delete_objects(study)  # finish an interrupted delete
                raise Gone("The study was deleted.")
            raise NotFound("No such study.")
        instances = [i for i in items if isinstance(i, InstanceItem)]
        patient = keys.first_value(json.loads(study_item.dicom_json), "00100020")
        DeletedStudyItem(
            *DeletedStudyItem.key(study),
            study_uid=study,
            instance_count=len(instances),
            updated_at=datetime.now(UTC),
        ).save()
        with IndexItem.batch_write() as batch:
            for instance in instances:
                batch.delete(SopItem(*SopItem.key(instance.sop_uid)))
            for item in items:
                if not isinstance(item, DeletedStudyItem):
                    batch.delete(item)
        self._delete_objects(study)
        self.events.publish(STUDY_DELETED, [{"studyInstanceUID": study, "instances": len(instances)}])
        return DeletedStudy(study, str(patient) if patient else None, len(instances))

    def _delete_objects(self, study: str) -> None:
        paginator = self.client.get_paginator("list_objects_v2")
        for template in _OBJECT_PREFIXES:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=template.format(study=study)):
                batch = [{"Key": entry["Key"]} for entry in page.get("Contents", [])]
                if batch:
                    self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
