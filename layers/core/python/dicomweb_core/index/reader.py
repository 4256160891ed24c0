"""Reading the index for retrieval: the instances a WADO-RS resource names, in order."""

from __future__ import annotations

import json

from dicomweb_core.errors import Gone, NotFound
from dicomweb_core.index import keys
from dicomweb_core.index.models import (
    DeletedStudyItem,
    IndexItem,
    InstanceItem,
    SeriesItem,
    StudyItem,
    study_pk,
)
from dicomweb_core.web.uri import DicomWebURI


def series_order(item: SeriesItem) -> tuple[int, str]:
    """Series by SeriesNumber, then UID (series without a number last)."""
    number = _first_int(item.dicom_json, keys.SERIES_NUMBER)
    return (number if number is not None else 1 << 31, item.series_uid)


def instance_order(item: InstanceItem) -> tuple[int, str]:
    """Instances by InstanceNumber, then UID."""
    number = _first_int(item.dicom_json, keys.INSTANCE_NUMBER)
    return (number if number is not None else 1 << 31, item.sop_uid)


def _first_int(dicom_json: str, tag: str) -> int | None:
    value = keys.first_value(json.loads(dicom_json), tag)
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def series_of(study: str) -> list[SeriesItem]:
    items = IndexItem.query(study_pk(study), IndexItem.sk.startswith("SERIES#"), consistent_read=True)
    return sorted((i for i in items if isinstance(i, SeriesItem)), key=series_order)


def series_item(study: str, series: str) -> SeriesItem:
    try:
        return SeriesItem.get(*SeriesItem.key(study, series), consistent_read=True)
    except SeriesItem.DoesNotExist:
        raise missing(study, "series") from None


def study_item(study: str) -> StudyItem:
    try:
        item = StudyItem.get(*StudyItem.key(study), consistent_read=True)
    except StudyItem.DoesNotExist:
        raise missing(study, "study") from None
    if item.deleting is not None:
        raise Gone("The study is being deleted.")
    return item


def tombstone(study: str) -> DeletedStudyItem | None:
    """The study's tombstone: it was deleted (or is being deleted) at least once."""
    try:
        return DeletedStudyItem.get(*DeletedStudyItem.key(study), consistent_read=True)
    except DeletedStudyItem.DoesNotExist:
        return None


def missing(study: str, what: str) -> NotFound | Gone:
    """404 for what never existed; 410 Gone when its study was deleted (a tombstone remains)."""
    if tombstone(study) is None:
        return NotFound(f"No such {what}.")
    return Gone(f"The {what} was deleted (its study was deleted).")


def instances_of(uri: DicomWebURI) -> list[InstanceItem]:
    """The instances of a study, series or instance URI, ordered; 404 when there are none."""
    assert uri.study is not None
    if uri.instance is not None:
        assert uri.series is not None
        try:
            return [
                InstanceItem.get(*InstanceItem.key(uri.study, uri.series, uri.instance), consistent_read=True)
            ]
        except InstanceItem.DoesNotExist:
            raise missing(uri.study, "instance") from None
    prefix = f"INSTANCE#{uri.series}#" if uri.series is not None else "INSTANCE#"
    items = [
        i
        for i in IndexItem.query(study_pk(uri.study), IndexItem.sk.startswith(prefix), consistent_read=True)
        if isinstance(i, InstanceItem)
    ]
    if not items:
        raise missing(uri.study, uri.resource_type.value)
    if uri.series is not None:
        return sorted(items, key=instance_order)
    rank = {s.series_uid: n for n, s in enumerate(series_of(uri.study))}
    return sorted(items, key=lambda i: (rank.get(i.series_uid, 0), *instance_order(i)))
