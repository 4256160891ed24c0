"""What a QIDO-RS result is: the merged DICOM JSON a candidate is matched on and returned as
(PS3.18 §10.6.3: a series or instance result carries its study's and series' attributes).

A series item holds its study's attributes and its own (copied once per series); an
instance item holds its own only, and its series' (with the study's) come from the series
item, read once per search and series (:class:`Parents`), so a stored instance writes no
copy of them (docs/index-design.md).
"""

from __future__ import annotations

import json
from typing import Any

from dicomweb_core.index.models import InstanceItem, SeriesItem, StudyItem
from dicomweb_core.index.search_reads import IndexReads

MODALITIES_IN_STUDY = "00080061"
STUDY_INSTANCE_UID = "0020000D"
Entity = StudyItem | SeriesItem | InstanceItem


class Parents:
    """The study and series items of a search's candidates, each read once (counted)."""

    def __init__(self, reads: IndexReads) -> None:
        self.reads = reads
        self._studies: dict[str, StudyItem | None] = {}
        self._series: dict[tuple[str, str], SeriesItem | None] = {}

    def study(self, study_uid: str) -> StudyItem | None:
        if study_uid not in self._studies:
            found = self.reads.batch_get([StudyItem.key(study_uid)])
            self._studies[study_uid] = next((i for i in found if isinstance(i, StudyItem)), None)
        return self._studies[study_uid]

    def series(self, study_uid: str, series_uid: str) -> SeriesItem | None:
        key = (study_uid, series_uid)
        if key not in self._series:
            found = self.reads.batch_get([SeriesItem.key(study_uid, series_uid)])
            self._series[key] = next((i for i in found if isinstance(i, SeriesItem)), None)
        return self._series[key]

    def study_json(self, study_uid: str) -> dict[str, Any]:
        study = self.study(study_uid)
        return json.loads(study.dicom_json) if study is not None else {}

    def series_json(self, study_uid: str, series_uid: str) -> dict[str, Any]:
        series = self.series(study_uid, series_uid)
        return json.loads(series.dicom_json) if series is not None else {}


def view(item: Entity, parents: Parents) -> dict[str, Any]:
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
        merged = _with_study(parents, item.study_uid, json.loads(item.dicom_json))
        merged["00201209"] = {"vr": "IS", "Value": [int(item.instance_count)]}
        return merged
    merged = _with_study(parents, item.study_uid, parents.series_json(item.study_uid, item.series_uid))
    merged |= json.loads(item.dicom_json)
    return merged


def _with_study(parents: Parents, study_uid: str, series: dict[str, Any]) -> dict[str, Any]:
    """A series' attributes with its study's. A series item holds a copy of them (its
    StudyInstanceUID says so); one written before it did is completed from the study item."""
    if STUDY_INSTANCE_UID in series:
        return series
    return parents.study_json(study_uid) | series
