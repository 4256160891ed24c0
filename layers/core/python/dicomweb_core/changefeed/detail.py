"""The ``InstanceStored`` detail of a committed instance write.

The fields are the ones STOW published before the change feed existed, so consumers
(de-identification, stability) read events as they always did; ``writeKey`` is new: one
value per committed write of an instance, the same in every delivery of its event, so a
consumer can tell a redelivered event (at-least-once) from a new write of the instance.
"""

from __future__ import annotations

import hashlib
from typing import Any

from dicomweb_core.index.models import InstanceItem


def instance_stored(item: InstanceItem, *, bucket: str, modality: str) -> dict[str, Any]:
    """What consumers learn of the stored instance: its UIDs, SOP Class, Modality and object."""
    return {
        "studyInstanceUID": item.study_uid,
        "seriesInstanceUID": item.series_uid,
        "sopInstanceUID": item.sop_uid,
        "sopClassUID": item.sop_class_uid,
        "modality": modality,
        "bucket": bucket,
        "s3Key": item.s3_key,
        "s3VersionId": item.s3_version_id,
        "size": int(item.size),
        "writeKey": write_key(bucket, item.s3_key, item.s3_version_id),
    }


def write_key(bucket: str, key: str, version_id: str | None) -> str:
    """One committed write: the object it put (every write of an instance has a key of its
    own, and a version within it), as 32 hex digits."""
    named = f"{bucket}/{key}?versionId={version_id or ''}"
    return hashlib.sha256(named.encode()).hexdigest()[:32]
