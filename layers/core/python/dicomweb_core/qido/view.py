"""What a QIDO-RS result is: the merged DICOM JSON a candidate is matched on and returned as
(PS3.18 §10.6.3: a series or instance result carries its study's and series' attributes)."""

from __future__ import annotations

import json
from typing import Any

from dicomweb_core.index.models import InstanceItem, SeriesItem, StudyItem

MODALITIES_IN_STUDY = "00080061"
Entity = StudyItem | SeriesItem | InstanceItem


def view(item: Entity) -> dict[str, Any]:
    """The merged DICOM JSON a candidate is matched on and returned as."""
    merged: dict[str, Any]
    if isinstance(item, StudyItem):
        merged = json.loads(item.dicom_json)
        modalities = sorted(item.modalities or ())
        if modalities:
            merged[MODALITIES_IN_STUDY] = {"vr": "CS", "Value": modalities}
        merged["00201206"] = {"vr": "IS", "Value": [int(item.series_count)]}
        merged["00201208"] = {"vr": "IS", "Value": [int(item.instance_count)]}
        return merged
    if isinstance(item, SeriesItem):
        merged = json.loads(item.study_json or "{}")
        merged |= json.loads(item.dicom_json)
        merged["00201209"] = {"vr": "IS", "Value": [int(item.instance_count)]}
        return merged
    merged = json.loads(item.study_json or "{}")
    merged |= json.loads(item.series_json or "{}")
    merged |= json.loads(item.dicom_json)
    return merged
