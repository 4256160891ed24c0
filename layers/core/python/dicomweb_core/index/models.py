"""pynamodb models of the index table: the one definition of its items.

One table holds every item; keys are built only from validated UIDs:

| item     | pk                 | sk                           |
|----------|--------------------|------------------------------|
| study    | ``STUDY#<study>``  | ``STUDY``                    |
| series   | ``STUDY#<study>``  | ``SERIES#<series>``          |
| instance | ``STUDY#<study>``  | ``INSTANCE#<series>#<sop>``  |
| SOP      | ``SOP#<sop>``      | ``SOP``                      |

A study's items share one partition, so the series and instances of a study are one
strongly consistent Query. The SOP item makes a SOP Instance UID unique across the
whole store (a transaction puts it with ``attribute_not_exists``) and finds an instance
from its UID alone. Aggregates (counts, ModalitiesInStudy) live on the study and series
items and change only in the same transaction that adds an instance.
"""

from __future__ import annotations

import os
from typing import Any

from pynamodb.attributes import (
    NumberAttribute,
    UnicodeAttribute,
    UnicodeSetAttribute,
    UTCDateTimeAttribute,
)
from pynamodb.models import Model

DEFAULT_TABLE_NAME = "dicomweb-index"


def _region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


class IndexItem(Model):
    """Common key schema of every item in the index table."""

    class Meta:
        table_name = os.environ.get("TABLE_NAME", DEFAULT_TABLE_NAME)
        region = _region()

    pk = UnicodeAttribute(hash_key=True)
    sk = UnicodeAttribute(range_key=True)
    updated_at = UTCDateTimeAttribute()


def study_pk(study: str) -> str:
    return f"STUDY#{study}"


class StudyItem(IndexItem):
    study_uid = UnicodeAttribute()
    dicom_json = UnicodeAttribute()  # study-level attributes, DICOM JSON (PS3.18 Annex F)
    modalities = UnicodeSetAttribute(null=True)  # ModalitiesInStudy
    series_count = NumberAttribute(default=0)  # NumberOfStudyRelatedSeries
    instance_count = NumberAttribute(default=0)  # NumberOfStudyRelatedInstances

    @staticmethod
    def key(study: str) -> tuple[str, str]:
        return study_pk(study), "STUDY"


class SeriesItem(IndexItem):
    study_uid = UnicodeAttribute()
    series_uid = UnicodeAttribute()
    modality = UnicodeAttribute(null=True)
    dicom_json = UnicodeAttribute()
    instance_count = NumberAttribute(default=0)  # NumberOfSeriesRelatedInstances

    @staticmethod
    def key(study: str, series: str) -> tuple[str, str]:
        return study_pk(study), f"SERIES#{series}"


class InstanceItem(IndexItem):
    study_uid = UnicodeAttribute()
    series_uid = UnicodeAttribute()
    sop_uid = UnicodeAttribute()
    sop_class_uid = UnicodeAttribute()
    transfer_syntax_uid = UnicodeAttribute()
    dicom_json = UnicodeAttribute()
    s3_key = UnicodeAttribute()
    s3_version_id = UnicodeAttribute(null=True)
    sha256 = UnicodeAttribute()
    size = NumberAttribute()

    @staticmethod
    def key(study: str, series: str, sop: str) -> tuple[str, str]:
        return study_pk(study), f"INSTANCE#{series}#{sop}"


class SopItem(IndexItem):
    """Uniqueness guard and lookup of one SOP Instance UID."""

    study_uid = UnicodeAttribute()
    series_uid = UnicodeAttribute()
    sop_class_uid = UnicodeAttribute()
    s3_key = UnicodeAttribute()
    s3_version_id = UnicodeAttribute(null=True)
    sha256 = UnicodeAttribute()
    size = NumberAttribute()

    @staticmethod
    def key(sop: str) -> tuple[str, str]:
        return f"SOP#{sop}", "SOP"


MODELS: tuple[type[IndexItem], ...] = (StudyItem, SeriesItem, InstanceItem, SopItem)


def bind_table(table_name: str, *, region: str | None = None) -> None:
    """Point every model at ``table_name`` (tests and the local runtime call this)."""
    models: tuple[type[IndexItem], ...] = (IndexItem, *MODELS)
    for model in models:
        model.Meta.table_name = table_name
        if region:
            model.Meta.region = region
        model._connection = None


def key_schema() -> dict[str, Any]:
    """The table's key schema as the models define it (tests compare it with template.yaml)."""
    return {
        "hash_key": IndexItem.pk.attr_name,
        "range_key": IndexItem.sk.attr_name,
    }
