"""The items one stored instance writes (docs/index-design.md).

Built here, written by :mod:`dicomweb_core.index.writer`: the SOP claim (the UID's
uniqueness), the instance item (the commit: where the bytes are), and for the first
instance of a series or study its series and study item (in one transaction with the
instance item), with the secondary-index key attributes from ``index.keys``. Their
aggregates are then kept by :mod:`dicomweb_core.index.aggregates`.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TypeVar

from dicomweb_core.dicom.instance import ReceivedInstance
from dicomweb_core.index import keys
from dicomweb_core.index.models import IndexItem, InstanceItem, SeriesItem, SopItem, StudyItem
from dicomweb_core.index.write_results import StoredObject, WriteContext

_Item = TypeVar("_Item", bound=IndexItem)

# Registry sets the QIDO planner enumerates (index.models.RegistryItem).
STUDY_MONTHS = "STUDY_MONTHS"
PPS_MONTHS = "PPS_MONTHS"
MODALITY_COMBOS = "MODALITY_COMBOS"


def study_item(instance: ReceivedInstance, context: WriteContext, now: datetime) -> StudyItem:
    study = instance.study_instance_uid
    attributes = keys.study_index_attributes(instance.study_json, study)
    if instance.modality:  # ModalitiesInStudy of its first instance; index.aggregates keeps it
        attributes |= keys.modality_combo_attributes(instance.modality, study, context.study_sort)
    item = StudyItem(
        *StudyItem.key(study),
        study_uid=study,
        dicom_json=json.dumps(instance.study_json),
        sort_key=context.study_sort,
        modalities={instance.modality} if instance.modality else None,
        modality_combo=instance.modality or None,
        series_count=1,
        instance_count=1,
        deletions=context.deletions,
        updated_at=now,
    )
    return _with_index_attributes(item, attributes)


def series_item(instance: ReceivedInstance, now: datetime, *, study_sort: str, study_json: str) -> SeriesItem:
    """The series item, its attributes after a copy of its study's (``study_json``, as the
    study item holds them): every series result of QIDO-RS returns them (PS3.18 §10.6.3.3),
    and a study's attributes never change once stored, so a series search reads no study
    item (docs/index-design.md)."""
    study, series = instance.study_instance_uid, instance.series_instance_uid
    attributes = keys.series_index_attributes(instance.series_json, study_sort=study_sort, series_uid=series)
    item = SeriesItem(
        *SeriesItem.key(study, series),
        study_uid=study,
        series_uid=series,
        modality=instance.modality or None,
        dicom_json=json.dumps(json.loads(study_json) | instance.series_json),
        instance_count=1,
        updated_at=now,
    )
    return _with_index_attributes(item, attributes)


def sop_claim(instance: ReceivedInstance, now: datetime) -> SopItem:
    """The claim of the instance's SOP Instance UID for its study and series."""
    return SopItem(
        *SopItem.key(instance.sop_instance_uid),
        study_uid=instance.study_instance_uid,
        series_uid=instance.series_instance_uid,
        updated_at=now,
    )


def instance_item(
    instance: ReceivedInstance, stored: StoredObject, now: datetime, *, series_sort: str
) -> InstanceItem:
    attributes = keys.instance_index_attributes(
        instance.instance_json,
        series_sort=series_sort,
        sop_uid=instance.sop_instance_uid,
        sop_class_uid=instance.sop_class_uid,
    )
    item = InstanceItem(
        *InstanceItem.key(
            instance.study_instance_uid, instance.series_instance_uid, instance.sop_instance_uid
        ),
        study_uid=instance.study_instance_uid,
        series_uid=instance.series_instance_uid,
        sop_uid=instance.sop_instance_uid,
        sop_class_uid=instance.sop_class_uid,
        modality=instance.modality or None,
        transfer_syntax_uid=instance.transfer_syntax_uid,
        dicom_json=json.dumps(instance.instance_json),
        s3_key=stored.key,
        s3_version_id=stored.version_id,
        sha256=stored.sha256,
        size=stored.size,
        frame_index=frame_index_json(instance),
        patient_id=keys.text_value(instance.study_json, keys.PATIENT_ID) or None,
        updated_at=now,
    )
    return _with_index_attributes(item, attributes)


def frame_index_json(instance: ReceivedInstance) -> str | None:
    if instance.frames is None:
        return None
    return json.dumps({"encapsulated": instance.frames.encapsulated, "frames": instance.frames.to_json()})


def _with_index_attributes(item: _Item, attributes: dict[str, str]) -> _Item:
    """Set the secondary-index key attributes (g<n>pk/g<n>sk) computed in index.keys."""
    for name, value in attributes.items():
        setattr(item, name, value)
    return item
