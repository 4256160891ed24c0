"""DynamoDB stream records, as Lambda delivers them, and the instance writes they commit.

Only the instance item announces a stored instance. It is written once per instance write,
by the PutItem (or transaction) that commits the write, and it carries the fields of the
``InstanceStored`` detail: the three UIDs (the SOP item has the SOP Instance UID only in its
key) and the SOP Class, and where the bytes are (key, version, size). The Modality, a series
attribute, is the instance item's own when it carries one, else its series item's
(:class:`InstanceWrite`). The study and series items, postings and registry entries are
aggregates and search terms, which never announce anything.

A record commits an instance write when it is

- an ``INSERT`` of an instance item: the first store of the instance; or
- a ``MODIFY`` of an instance item whose object (S3 key and version) changed: an overwrite
  (every write of an instance puts its bytes under a key of its own, storage.instance_key).

A ``MODIFY`` that leaves the object as it was (a later change to another attribute) and a
``REMOVE`` (a DELETE of the study) announce nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dicomweb_core.index.models import IndexItem, InstanceItem
from dicomweb_core.index.stream import INSERT, MODIFY, StreamRecord, UnreadableRecord

_INSTANCE_KIND = IndexItem.kind.get_discriminator(InstanceItem)


@dataclass(frozen=True, slots=True)
class InstanceWrite:
    """A committed write of an instance: its item as the commit left it."""

    item: InstanceItem
    modality: str | None  # Modality (0008,0060); items written before it was kept have none


def committed_write(record: StreamRecord) -> InstanceWrite | None:
    """The instance write ``record`` commits, or None when it commits none."""
    if record.event_name not in (INSERT, MODIFY) or not _is_instance(record.new_image):
        return None
    new = _instance(record.new_image)
    if record.event_name == MODIFY and _is_instance(record.old_image):
        old = _instance(record.old_image)
        if (old.s3_key, old.s3_version_id) == (new.s3_key, new.s3_version_id):
            return None  # the same object: no new write of the instance
    return InstanceWrite(new, new.modality)


def _is_instance(image: Mapping[str, Any] | None) -> bool:
    return image is not None and image.get("kind", {}).get("S") == _INSTANCE_KIND


def _instance(image: Mapping[str, Any] | None) -> InstanceItem:
    """The image as the index's own model reads it (the models are the one definition)."""
    item = IndexItem.from_raw_data(dict(image or {}))
    if not isinstance(item, InstanceItem):  # pragma: no cover - _is_instance checked the kind
        raise UnreadableRecord("not an instance item")
    return item
