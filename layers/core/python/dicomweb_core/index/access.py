"""One store's index as the services see it: :class:`Index`, over a small :class:`ItemStore`.

Retrieval (PS3.18 §10.4), rendering (§10.4.1.1.3), the hooks, the audit and on-demand
de-identification read the index only through :class:`Index`; none of them touches a
pynamodb model's table. :class:`Index` holds what the answers mean (404 or 410, the order
of series and instances, work keyed on a content version) and asks its :class:`ItemStore`
for items by key and by partition:

- :class:`DynamoItems` reads and writes one DynamoDB table (:class:`~.table.IndexTable`);
- tests that want no AWS at all give it an in-memory store (``tests/index_memory.py``),
  which ``tests/integration/test_index_access.py`` holds to the same behaviour as DynamoDB's.

Writing instances (STOW-RS, :mod:`.writer`), deleting studies (:mod:`dicomweb_core.delete`)
and QIDO-RS's searches (:mod:`dicomweb_core.index.search_reads`) need conditions,
transactions and secondary indexes; they use the models on an :class:`~.table.IndexTable`
of their own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol, TypeVar

from pynamodb.attributes import Attribute
from pynamodb.exceptions import UpdateError

from dicomweb_core.errors import Gone, NotFound
from dicomweb_core.index import keys
from dicomweb_core.index.models import (
    DeletedStudyItem,
    IndexItem,
    InferenceRunItem,
    InstanceItem,
    SeriesItem,
    StudyItem,
    study_pk,
)
from dicomweb_core.index.table import IndexTable, on_own_table
from dicomweb_core.web.uri import DicomWebURI

Item = TypeVar("Item", bound=IndexItem)
Versioned = TypeVar("Versioned", SeriesItem, StudyItem)


class ItemStore(Protocol):
    """The item operations :class:`Index` is built on."""

    def get(self, model: type[Item], key: tuple[str, str], *, consistent: bool = True) -> Item | None:
        """The item at ``key`` if it exists and is a ``model``."""
        ...

    def query(self, pk: str, sk_prefix: str, *, consistent: bool = True) -> list[IndexItem]:
        """The items of partition ``pk`` whose sort key starts with ``sk_prefix``, in key order."""
        ...

    def save(self, item: IndexItem) -> None:
        """Put the item, replacing any item at its key."""
        ...

    def mark_version(self, item: SeriesItem | StudyItem, attribute: str, *, once: bool) -> bool:
        """Set ``attribute`` to ``item.version`` if the item has not changed since it was read
        (its ``updated_at`` is the same) and, with ``once``, the attribute does not hold that
        version yet; False when a condition failed."""
        ...

    def unmark_version(self, item: SeriesItem | StudyItem, attribute: str) -> bool:
        """Remove ``attribute`` if it holds ``item.version``; False when it does not."""
        ...


class DynamoItems:
    """:class:`ItemStore` on one DynamoDB table, through the pynamodb models."""

    def __init__(self, table: IndexTable | None = None) -> None:
        self.table = table or IndexTable()

    @on_own_table
    def get(self, model: type[Item], key: tuple[str, str], *, consistent: bool = True) -> Item | None:
        try:
            item = IndexItem.get(*key, consistent_read=consistent)
        except IndexItem.DoesNotExist:
            return None
        return item if isinstance(item, model) else None

    @on_own_table
    def query(self, pk: str, sk_prefix: str, *, consistent: bool = True) -> list[IndexItem]:
        return list(IndexItem.query(pk, IndexItem.sk.startswith(sk_prefix), consistent_read=consistent))

    @on_own_table
    def save(self, item: IndexItem) -> None:
        item.save()

    @on_own_table
    def mark_version(self, item: SeriesItem | StudyItem, attribute: str, *, once: bool) -> bool:
        model = type(item)
        updated = model.updated_at
        condition = updated == item.updated_at if item.updated_at is not None else updated.does_not_exist()
        condition &= model.pk.exists()  # never create a stub of an item deleted since
        marked: Attribute[str] = getattr(model, attribute)
        if once:
            condition &= marked.does_not_exist() | (marked != item.version)
        return _conditional_update(item, marked.set(item.version), condition)

    @on_own_table
    def unmark_version(self, item: SeriesItem | StudyItem, attribute: str) -> bool:
        marked: Attribute[str] = getattr(type(item), attribute)
        return _conditional_update(item, marked.remove(), marked == item.version)


def _conditional_update(item: IndexItem, action: object, condition: object) -> bool:
    try:
        item.update(actions=[action], condition=condition)  # type: ignore[list-item,arg-type]
    except UpdateError as exc:
        if getattr(exc, "cause_response_code", "") == "ConditionalCheckFailedException":
            return False
        raise
    return True


# The PatientID of each study whose study, series (a copy of the study's attributes) or
# instance item (its ``patient_id``) was read during the current audited invocation, so that
# the audit record names the patient without reading the study item (audit.decorator); None
# outside one.
_patients_read: ContextVar[dict[str, str] | None] = ContextVar("patients_read", default=None)

Read = TypeVar("Read", StudyItem, SeriesItem, InstanceItem, StudyItem | None, SeriesItem | None)


@contextmanager
def noting_patients() -> Iterator[dict[str, str]]:
    """Within the block, the PatientID of each study read through an :class:`Index` is noted
    in the mapping it yields (study UID to PatientID)."""
    noted: dict[str, str] = {}
    token = _patients_read.set(noted)
    try:
        yield noted
    finally:
        _patients_read.reset(token)


def _noting_patient(item: Read) -> Read:
    noted = _patients_read.get()
    if noted is not None and item is not None and item.study_uid not in noted:
        if isinstance(item, InstanceItem):
            patient = item.patient_id
        else:
            patient = keys.first_value(json.loads(item.dicom_json), keys.PATIENT_ID)
        if patient:
            noted[item.study_uid] = str(patient)
    return item


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


class Index:
    """One store's index, as retrieval, rendering, the hooks and the audit read it."""

    def __init__(self, items: ItemStore | None = None) -> None:
        self.items: ItemStore = items if items is not None else DynamoItems()

    @classmethod
    def for_table(cls, table_name: str) -> Index:
        """The index in DynamoDB table ``table_name``."""
        return cls(DynamoItems(IndexTable(table_name)))

    # ------------------------------------------------------------ studies and series
    def study(self, study: str) -> StudyItem:
        """The study; 404 if it never existed, 410 if it was deleted or is being deleted."""
        item = self.find_study(study)
        if item is None:
            raise self.missing(study, "study")
        if item.deleting is not None:
            raise Gone("The study is being deleted.")
        return item

    def find_study(self, study: str, *, consistent: bool = True) -> StudyItem | None:
        return _noting_patient(self.items.get(StudyItem, StudyItem.key(study), consistent=consistent))

    def series(self, study: str, series: str) -> SeriesItem:
        """The series; 404 if it never existed, 410 if its study was deleted."""
        item = self.find_series(study, series)
        if item is None:
            raise self.missing(study, "series")
        return item

    def find_series(self, study: str, series: str) -> SeriesItem | None:
        return _noting_patient(self.items.get(SeriesItem, SeriesItem.key(study, series)))

    def series_of(self, study: str) -> list[SeriesItem]:
        """The study's series in order (:func:`series_order`)."""
        found = self.items.query(study_pk(study), "SERIES#")
        series = sorted((i for i in found if isinstance(i, SeriesItem)), key=series_order)
        for item in series[:1]:
            _noting_patient(item)
        return series

    def tombstone(self, study: str) -> DeletedStudyItem | None:
        """The study's tombstone: it was deleted (or is being deleted) at least once."""
        return self.items.get(DeletedStudyItem, DeletedStudyItem.key(study))

    def missing(self, study: str, what: str) -> NotFound | Gone:
        """404 for what never existed; 410 Gone when its study was deleted (a tombstone remains)."""
        if self.tombstone(study) is None:
            return NotFound(f"No such {what}.")
        return Gone(f"The {what} was deleted (its study was deleted).")

    # ------------------------------------------------------------ instances
    def instances(self, uri: DicomWebURI) -> list[InstanceItem]:
        """The instances of a study, series or instance URI, ordered; 404 when there are none."""
        assert uri.study is not None
        if uri.instance is not None:
            assert uri.series is not None
            item = self.items.get(InstanceItem, InstanceItem.key(uri.study, uri.series, uri.instance))
            if item is None:
                raise self.missing(uri.study, "instance")
            return [_noting_patient(item)]
        prefix = f"INSTANCE#{uri.series}#" if uri.series is not None else "INSTANCE#"
        found = [i for i in self.items.query(study_pk(uri.study), prefix) if isinstance(i, InstanceItem)]
        if not found:
            raise self.missing(uri.study, uri.resource_type.value)
        _noting_patient(found[0])
        if uri.series is not None:
            return sorted(found, key=instance_order)
        rank = {s.series_uid: n for n, s in enumerate(self.series_of(uri.study))}
        return sorted(found, key=lambda i: (rank.get(i.series_uid, 0), *instance_order(i)))

    def study_instances(self, study: str) -> list[InstanceItem]:
        """Every instance of the study, unordered, as an eventually consistent read."""
        found = self.items.query(study_pk(study), "INSTANCE#", consistent=False)
        return [i for i in found if isinstance(i, InstanceItem)]

    # ------------------------------------------------------------ content versions
    def at_version(self, model: type[Versioned], key: tuple[str, str], version: str) -> Versioned | None:
        """The study or series item if it still exists at ``version``; None when it is gone
        or has changed since (work keyed on a version: stability, metadata, bundles, inference)."""
        item = self.items.get(model, key)
        return item if item is not None and item.version == version else None

    def record_version(self, item: SeriesItem | StudyItem, attribute: str, *, once: bool = False) -> bool:
        """Record on the item that ``attribute``'s work was done for its current version, only
        while nothing changed since it was read (and, with ``once``, nobody recorded it first)."""
        return self.items.mark_version(item, attribute, once=once)

    def withdraw_version(self, item: SeriesItem | StudyItem, attribute: str) -> bool:
        """Take back :meth:`record_version` (the work it recorded failed after all)."""
        return self.items.unmark_version(item, attribute)

    # ------------------------------------------------------------ inference runs
    def run_recorded(self, key: tuple[str, str]) -> bool:
        return self.items.get(InferenceRunItem, key) is not None

    def record_run(self, run: InferenceRunItem) -> None:
        self.items.save(run)
