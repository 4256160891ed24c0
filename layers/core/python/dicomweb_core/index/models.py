"""pynamodb models of the index table: the one definition of its items and indexes.

One table holds every item; keys are built only from validated UIDs:

| item     | pk                      | sk                           |
|----------|-------------------------|------------------------------|
| study    | ``STUDY#<study>``       | ``STUDY``                    |
| series   | ``STUDY#<study>``       | ``SERIES#<series>``          |
| instance | ``STUDY#<study>``       | ``INSTANCE#<series>#<sop>``  |
| SOP      | ``SOP#<sop>``           | ``SOP``                      |
| posting  | ``P#<family>#<bucket>`` | ``<term>#<study>[#<series>]``|
| registry | ``REGISTRY``            | ``<name>``                   |

A study's items share one partition, so the series and instances of a study are one
strongly consistent Query. The SOP item (a claim of the UID for one study and series)
makes a SOP Instance UID unique across the whole store. Aggregates (counts,
ModalitiesInStudy) live on the study and series items and are recounted from the
table's stream (``index.aggregates``).

Eight global secondary indexes, overloaded across item kinds, serve QIDO-RS; each index
key attribute is set only on the items that belong in that index (sparse indexes), and
each copies only what a QIDO-RS answer reads (``INDEX_PROJECTION``). The
design, what each index serves and what it costs per write is in docs/index-design.md.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

from pynamodb.attributes import (
    DiscriminatorAttribute,
    NumberAttribute,
    UnicodeAttribute,
    UnicodeSetAttribute,
    UTCDateTimeAttribute,
)
from pynamodb.connection import TableConnection
from pynamodb.indexes import GlobalSecondaryIndex, IncludeProjection
from pynamodb.models import Model

from dicomweb_core.index.table import TableNameFromContext, connection_for

GSI_COUNT = 8


def _region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


# gsi2, gsi3 and gsi4 order every entry by the item's own ``sort_key`` (the study's,
# series' or instance's result order), so an instance item does not carry the same long
# key three times more, in its base copy and in each index copy (docs/index-design.md).
SHARED_SORT_KEY_INDEXES = frozenset({2, 3, 4})


def index_sort_attribute(number: int) -> str:
    """The attribute ``gsi<number>`` sorts by."""
    return "sort_key" if number in SHARED_SORT_KEY_INDEXES else f"g{number}sk"


# What every GSI copies of an item besides its keys: what a QIDO-RS answer is built from
# (qido.view and qido.render). The UIDs are in the table's keys, which every index holds, and
# are read back from them (``uids_from_keys``); the object's location, checksums and frame
# index stay in the base item. So an instance's index copy is a third of its item, and an
# update of an attribute outside this list (a hook's version marks) writes no index at all.
INDEX_PROJECTION = ("kind", "dicom_json", "modalities", "series_count", "instance_count")


def _gsi(number: int) -> type[GlobalSecondaryIndex[Any]]:
    """GSI ``gsi<number>`` on ``g<number>pk`` and its sort attribute, projecting
    :data:`INDEX_PROJECTION`."""
    projection = IncludeProjection(list(INDEX_PROJECTION))
    meta = type("Meta", (), {"index_name": f"gsi{number}", "projection": projection})
    namespace = {
        "Meta": meta,
        f"g{number}pk": UnicodeAttribute(hash_key=True),
        index_sort_attribute(number): UnicodeAttribute(range_key=True),
    }
    return type(f"Gsi{number}", (GlobalSecondaryIndex,), namespace)


class IndexItem(Model):
    """Common key schema, kind and secondary-index attributes of every item."""

    class Meta(metaclass=TableNameFromContext):  # table_name: the table bound here (index.table)
        region = _region()

    pk = UnicodeAttribute(hash_key=True)
    sk = UnicodeAttribute(range_key=True)
    kind = DiscriminatorAttribute()
    updated_at = UTCDateTimeAttribute(null=True)

    g1pk = UnicodeAttribute(null=True)
    g1sk = UnicodeAttribute(null=True)
    g2pk = UnicodeAttribute(null=True)
    g3pk = UnicodeAttribute(null=True)
    g4pk = UnicodeAttribute(null=True)
    g5pk = UnicodeAttribute(null=True)
    g5sk = UnicodeAttribute(null=True)
    g6pk = UnicodeAttribute(null=True)
    g6sk = UnicodeAttribute(null=True)
    g7pk = UnicodeAttribute(null=True)
    g7sk = UnicodeAttribute(null=True)
    g8pk = UnicodeAttribute(null=True)
    g8sk = UnicodeAttribute(null=True)

    g1 = _gsi(1)()
    g2 = _gsi(2)()
    g3 = _gsi(3)()
    g4 = _gsi(4)()
    g5 = _gsi(5)()
    g6 = _gsi(6)()
    g7 = _gsi(7)()
    g8 = _gsi(8)()

    @classmethod
    def _get_connection(cls) -> TableConnection:
        """One connection per table for every model (pynamodb keeps one per model class and
        makes a new one whenever the class's table name changes)."""
        cls._connection = None
        return connection_for(cls.Meta.table_name, super()._get_connection)  # type: ignore[no-any-return]


def content_version(count: object, updated_at: datetime | None) -> str:
    """A study's or series' content version: it changes whenever an instance is added or
    replaced (the writer bumps ``updated_at`` in the same transaction). Used as the ETag of
    aggregate metadata and as the version stability and inference are keyed on."""
    stamp = updated_at.timestamp() if updated_at is not None else 0.0
    return f"{int(count)}-{int(stamp * 1_000_000)}"  # type: ignore[call-overload]


def study_pk(study: str) -> str:
    return f"STUDY#{study}"


class StudyItem(IndexItem, discriminator="study"):
    study_uid = UnicodeAttribute()
    dicom_json = UnicodeAttribute()  # study-level attributes, DICOM JSON (PS3.18 Annex F)
    sort_key = UnicodeAttribute()  # StudyDate+StudyTime+UID: the order of study results
    modalities = UnicodeSetAttribute(null=True)  # ModalitiesInStudy
    modality_combo = UnicodeAttribute(null=True)  # sorted ModalitiesInStudy joined by "\"
    series_count = NumberAttribute(default=0)  # NumberOfStudyRelatedSeries
    instance_count = NumberAttribute(default=0)  # NumberOfStudyRelatedInstances
    stable_version = UnicodeAttribute(null=True)  # the version last announced as StudyStable
    # Set when a DELETE of the study begins: from then on every write into it is refused.
    deleting = UTCDateTimeAttribute(null=True)
    # How many DELETEs of the study had begun when this item was created (the tombstone's
    # count); a write that read another count before putting its objects is refused.
    deletions = NumberAttribute(null=True)

    @staticmethod
    def key(study: str) -> tuple[str, str]:
        return study_pk(study), "STUDY"

    @property
    def version(self) -> str:
        return content_version(self.instance_count, self.updated_at)


class SeriesItem(IndexItem, discriminator="series"):
    study_uid = UnicodeAttribute()
    series_uid = UnicodeAttribute()
    modality = UnicodeAttribute(null=True)
    dicom_json = UnicodeAttribute()  # its study's attributes, then its own (index.items.series_item)
    sort_key = UnicodeAttribute(null=True)
    instance_count = NumberAttribute(default=0)  # NumberOfSeriesRelatedInstances
    stable_version = UnicodeAttribute(null=True)  # the version last announced as SeriesStable
    metadata_version = UnicodeAttribute(null=True)  # the version whose metadata document is pre-built

    @staticmethod
    def key(study: str, series: str) -> tuple[str, str]:
        return study_pk(study), f"SERIES#{series}"

    @property
    def version(self) -> str:
        return content_version(self.instance_count, self.updated_at)


class InstanceItem(IndexItem, discriminator="instance"):
    study_uid = UnicodeAttribute()
    series_uid = UnicodeAttribute()
    sop_uid = UnicodeAttribute()
    sop_class_uid = UnicodeAttribute()
    modality = UnicodeAttribute(null=True)  # the series' Modality, for InstanceStored (changefeed)
    transfer_syntax_uid = UnicodeAttribute()
    # instance-level attributes; the study's and series' are their items' (no copies: QIDO
    # reads the parents once per search, docs/index-design.md)
    dicom_json = UnicodeAttribute()
    sort_key = UnicodeAttribute(null=True)
    s3_key = UnicodeAttribute()
    s3_version_id = UnicodeAttribute(null=True)
    sha256 = UnicodeAttribute()
    size = NumberAttribute()
    frame_index = UnicodeAttribute(null=True)  # JSON: byte ranges of each frame (frames.py)
    # PatientID, so a retrieval's audit record names the patient without reading the study
    # item (audit.decorator); in no index. Absent on items written before it was added.
    patient_id = UnicodeAttribute(null=True)

    @staticmethod
    def key(study: str, series: str, sop: str) -> tuple[str, str]:
        return study_pk(study), f"INSTANCE#{series}#{sop}"


class SopItem(IndexItem, discriminator="sop"):
    """The claim of one SOP Instance UID for one study and series: what keeps the UID unique
    across the store. Written once, before the instance's objects, and never changed by an
    overwrite; the instance item at the claimed place says what is stored
    (docs/index-design.md, Writing an instance). ``updated_at`` is when it was claimed."""

    study_uid = UnicodeAttribute()
    series_uid = UnicodeAttribute()

    @staticmethod
    def key(sop: str) -> tuple[str, str]:
        return f"SOP#{sop}", "SOP"


class InferenceRunItem(IndexItem, discriminator="inference-run"):
    """A finished inference run: one per (series version, model, model version); its
    existence makes re-delivered ``SeriesStable`` events no-ops."""

    study_uid = UnicodeAttribute()
    series_uid = UnicodeAttribute()
    model = UnicodeAttribute()
    model_version = UnicodeAttribute()
    status = UnicodeAttribute()  # completed | declined
    results = UnicodeAttribute()  # JSON list of the stored result objects

    @staticmethod
    def key(study: str, series: str, version: str, model: str, model_version: str) -> tuple[str, str]:
        return study_pk(study), f"RUN#{series}#{version}#{model}#{model_version}"


class DeletedStudyItem(IndexItem, discriminator="deleted-study"):
    """A tombstone: the study was deleted, so its UIDs answer 410 Gone instead of 404."""

    study_uid = UnicodeAttribute()
    instance_count = NumberAttribute(default=0)  # how many instances it held
    deletions = NumberAttribute(null=True)  # how many DELETEs of the study have begun
    deleting = UTCDateTimeAttribute(null=True)  # set while a DELETE is under way

    @staticmethod
    def key(study: str) -> tuple[str, str]:
        return study_pk(study), "DELETED"


class PostingItem(IndexItem, discriminator="posting"):
    """One term of a multi-valued search key (name words, suffixes, request IDs)."""

    study_uid = UnicodeAttribute()
    series_uid = UnicodeAttribute(null=True)


class RegistryItem(IndexItem, discriminator="registry"):
    """Small sets the planner enumerates: the months that hold studies, modality combinations."""

    values = UnicodeSetAttribute(null=True)

    @staticmethod
    def key(name: str) -> tuple[str, str]:
        return "REGISTRY", name


MODELS: tuple[type[IndexItem], ...] = (
    StudyItem,
    SeriesItem,
    InstanceItem,
    SopItem,
    InferenceRunItem,
    DeletedStudyItem,
    PostingItem,
    RegistryItem,
)


def uids_from_keys(item: IndexItem) -> IndexItem:
    """Set a study's, series' or instance item's UIDs from its keys, as read from an index
    that does not project them (``INDEX_PROJECTION``); keys are ``STUDY#<study>`` and
    ``STUDY`` / ``SERIES#<series>`` / ``INSTANCE#<series>#<sop>``."""
    if not isinstance(item, StudyItem | SeriesItem | InstanceItem):
        return item
    item.study_uid = item.pk.removeprefix("STUDY#")
    if isinstance(item, SeriesItem):
        item.series_uid = item.sk.removeprefix("SERIES#")
    elif isinstance(item, InstanceItem):
        item.series_uid, item.sop_uid = item.sk.removeprefix("INSTANCE#").split("#")
    return item


def key_schema() -> dict[str, Any]:
    """The table's key schema as the models define it (tests compare it with template.yaml)."""
    return {"hash_key": IndexItem.pk.attr_name, "range_key": IndexItem.sk.attr_name}


def index_projection() -> dict[str, Any]:
    """The projection every GSI has, as template.yaml states it (tests compare the two)."""
    return {"ProjectionType": "INCLUDE", "NonKeyAttributes": list(INDEX_PROJECTION)}


def secondary_indexes() -> dict[str, tuple[str, str]]:
    """GSI name → (hash attribute, range attribute), as the models define them."""
    indexes = {}
    for number in range(1, GSI_COUNT + 1):
        index = getattr(IndexItem, f"g{number}")
        schema = index._get_schema()
        by_type = {k["KeyType"]: k["AttributeName"] for k in schema["key_schema"]}
        indexes[schema["index_name"]] = (by_type["HASH"], by_type["RANGE"])
    return indexes
