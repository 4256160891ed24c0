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

from dicomweb_core.errors import Gone, NotFound
from dicomweb_core.events import STUDY_DELETED, EventPublisher
from dicomweb_core.index import keys
from dicomweb_core.index.access import Index
from dicomweb_core.index.deletions import StudyDeletions

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
    def __init__(
        self,
        *,
        bucket: str,
        events: EventPublisher,
        client: Any = None,
        index: Index | None = None,
        deletions: StudyDeletions | None = None,
    ) -> None:
        self.bucket = bucket
        self.events = events
        self._client = client
        self.index = index if index is not None else Index()
        self.deletions = deletions if deletions is not None else StudyDeletions()

    @cached_property
    def client(self) -> Any:
        return self._client or boto3.client("s3")

    def delete_study(self, study: str) -> DeletedStudy:
        if not self.deletions.begin(study, datetime.now(UTC)):
            if self.index.tombstone(study) is not None:
                self._delete_objects(study)  # finish an interrupted delete
                raise Gone("The study was deleted.")
            raise NotFound("No such study.")
        removed = self.deletions.remove_entries(study)
        patient = (
            keys.first_value(json.loads(removed.study.dicom_json), keys.PATIENT_ID) if removed.study else None
        )
        self._delete_objects(study)
        self.deletions.finish(study, len(removed.instances))
        self.events.publish(STUDY_DELETED, [{"studyInstanceUID": study, "instances": len(removed.instances)}])
        return DeletedStudy(study, str(patient) if patient else None, len(removed.instances))

    def _delete_objects(self, study: str) -> None:
        paginator = self.client.get_paginator("list_objects_v2")
        for template in _OBJECT_PREFIXES:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=template.format(study=study)):
                batch = [{"Key": entry["Key"]} for entry in page.get("Contents", [])]
                if batch:
                    self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
