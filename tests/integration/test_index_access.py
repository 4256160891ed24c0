"""The index interface the services use (``index.access.Index``), on DynamoDB (moto) and on
the in-memory store tests may use instead (``tests/index_memory.py``): every behaviour is
checked against both, so a test that uses the fake relies only on what DynamoDB does.

Also: two stores' tables served by one process, each :class:`Index` reading its own table
with no global binding (``index.table``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from dicomweb_core.errors import Gone, NotFound
from dicomweb_core.index.access import DynamoItems, Index, noting_patients
from dicomweb_core.index.models import (
    DeletedStudyItem,
    InferenceRunItem,
    InstanceItem,
    SeriesItem,
    StudyItem,
)
from dicomweb_core.index.table import IndexTable, current_table_name
from dicomweb_core.web.uri import DicomWebURI
from infra.datasets.generate import new_uid
from tests.index_memory import MemoryItems
from tests.moto_stack import moto_account, provisioned

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def tables() -> Iterator[tuple[str, str]]:
    """The primary and research index tables of the template, in moto."""
    with moto_account():
        stack, _ = provisioned()
        yield stack.physical_ids["IndexTable"], stack.physical_ids["DeidTable"]


@pytest.fixture(params=["dynamodb", "memory"])
def index(request: pytest.FixtureRequest, tables: tuple[str, str]) -> Index:
    return Index.for_table(tables[0]) if request.param == "dynamodb" else Index(MemoryItems())


def _attributes(**values: str) -> str:
    return json.dumps({tag: {"vr": "IS", "Value": [value]} for tag, value in values.items()})


def study(uid: str, *, count: int = 0, updated: datetime = T0) -> StudyItem:
    return StudyItem(
        *StudyItem.key(uid),
        study_uid=uid,
        dicom_json="{}",
        sort_key=uid,
        instance_count=count,
        updated_at=updated,
    )


def series(
    study_uid: str, uid: str, number: int | None, *, count: int = 1, updated: datetime = T0
) -> SeriesItem:
    return SeriesItem(
        *SeriesItem.key(study_uid, uid),
        study_uid=study_uid,
        series_uid=uid,
        modality="CT",
        dicom_json=_attributes(**({"00200011": str(number)} if number is not None else {})),
        instance_count=count,
        updated_at=updated,
    )


def instance(study_uid: str, series_uid: str, uid: str, number: int | None) -> InstanceItem:
    return InstanceItem(
        *InstanceItem.key(study_uid, series_uid, uid),
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uid=uid,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        dicom_json=_attributes(**({"00200013": str(number)} if number is not None else {})),
        s3_key=f"studies/{study_uid}/series/{series_uid}/instances/{uid}.dcm",
        sha256="0" * 64,
        size=1000,
    )


def test_what_was_never_stored_is_404_and_what_was_deleted_is_410(index: Index) -> None:
    never, deleted = new_uid(), new_uid()
    index.items.save(DeletedStudyItem(*DeletedStudyItem.key(deleted), study_uid=deleted, deletions=1))
    for call in (
        index.study,
        lambda uid: index.series(uid, new_uid()),
        lambda uid: index.instances(DicomWebURI("", study=uid)),
        lambda uid: index.instances(DicomWebURI("", study=uid, series=new_uid(), instance=new_uid())),
    ):
        with pytest.raises(NotFound):
            call(never)
        with pytest.raises(Gone):
            call(deleted)
    assert index.find_study(never) is None and index.find_series(never, new_uid()) is None


def test_a_study_being_deleted_is_gone(index: Index) -> None:
    uid = new_uid()
    item = study(uid)
    item.deleting = T0
    index.items.save(item)
    with pytest.raises(Gone, match="being deleted"):
        index.study(uid)
    assert index.find_study(uid) is not None  # the hooks still see it


def test_series_and_instances_come_in_their_numbers_order(index: Index) -> None:
    st, first, second, unnumbered = new_uid(), new_uid(), new_uid(), new_uid()
    index.items.save(study(st, count=5))
    for uid, number in ((unnumbered, None), (second, 2), (first, 1)):
        index.items.save(series(st, uid, number))
    a, b, c = new_uid(), new_uid(), new_uid()
    for sop, number in ((a, 10), (b, 2), (c, None)):
        index.items.save(instance(st, second, sop, number))
    index.items.save(instance(st, first, (d := new_uid()), 7))
    index.items.save(instance(st, unnumbered, (e := new_uid()), 1))

    assert [s.series_uid for s in index.series_of(st)] == [first, second, unnumbered]
    assert [i.sop_uid for i in index.instances(DicomWebURI("", study=st, series=second))] == [b, a, c]
    assert [i.sop_uid for i in index.instances(DicomWebURI("", study=st))] == [d, b, a, c, e]
    assert sorted(i.sop_uid for i in index.study_instances(st)) == sorted([a, b, c, d, e])
    (one,) = index.instances(DicomWebURI("", study=st, series=second, instance=a))
    assert (one.s3_key, one.size, one.study_uid) == (instance(st, second, a, 10).s3_key, 1000, st)


def test_work_keyed_on_a_version_is_recorded_once_and_only_while_current(index: Index) -> None:
    st, se = new_uid(), new_uid()
    index.items.save(series(st, se, 1))
    read = index.series(st, se)
    assert index.at_version(SeriesItem, SeriesItem.key(st, se), read.version) is not None
    assert index.at_version(SeriesItem, SeriesItem.key(st, se), "1-0") is None
    # once: the first to record wins, a second (a duplicate message) does not
    assert index.record_version(read, "stable_version", once=True)
    assert read.stable_version == read.version
    assert not index.record_version(index.series(st, se), "stable_version", once=True)
    # withdrawn (its announcement failed): it can be recorded again
    assert index.withdraw_version(read, "stable_version")
    assert index.series(st, se).stable_version is None
    assert not index.withdraw_version(read, "stable_version")
    # an item changed since it was read records nothing
    index.items.save(series(st, se, 1, count=2, updated=T0 + timedelta(seconds=1)))
    assert not index.record_version(read, "metadata_version")
    assert index.series(st, se).metadata_version is None
    fresh = index.series(st, se)
    assert index.record_version(fresh, "metadata_version")
    assert (
        index.series(st, se).metadata_version == fresh.version == "2-" + str(int((T0.timestamp() + 1) * 1e6))
    )


def test_an_item_deleted_since_it_was_read_records_nothing_and_is_not_recreated(index: Index) -> None:
    st = new_uid()
    index.items.save(study(st))
    read = index.study(st)
    index.items.save(DeletedStudyItem(*DeletedStudyItem.key(st), study_uid=st))
    if isinstance(index.items, MemoryItems):
        del index.items.items[(read.pk, read.sk)]
    else:
        with index.items.table.bound():  # type: ignore[attr-defined]
            StudyItem(*StudyItem.key(st)).delete()
    assert not index.record_version(read, "stable_version", once=True)
    assert index.find_study(st) is None


def test_inference_runs_are_recorded(index: Index) -> None:
    key = InferenceRunItem.key(new_uid(), new_uid(), "3-1", "bodymask", "1")
    assert not index.run_recorded(key)
    index.record_run(
        InferenceRunItem(
            *key,
            study_uid="1.2",
            series_uid="1.3",
            model="bodymask",
            model_version="1",
            status="completed",
            results="[]",
        )
    )
    assert index.run_recorded(key)


def test_two_stores_in_one_process_each_read_their_own_table(tables: tuple[str, str]) -> None:
    primary, research = (Index.for_table(name) for name in tables)
    uid = new_uid()
    research.items.save(study(uid, count=3))
    primary.items.save(study(uid, count=1))
    for _ in range(2):  # interleaved, no rebinding in between
        assert primary.study(uid).instance_count == 1
        assert research.study(uid).instance_count == 3
    # and nothing stays bound after a call
    assert current_table_name() == tables[0]
    with IndexTable(tables[1]).bound():
        assert current_table_name() == tables[1]
        assert primary.study(uid).instance_count == 1  # an Index binds its own table
    assert current_table_name() == tables[0]
    assert isinstance(primary.items, DynamoItems) and primary.items.table.resolved_name == tables[0]


def test_the_patient_of_what_was_read_is_noted_for_the_audit(index: Index) -> None:
    st, se, sop = new_uid(), new_uid(), new_uid()
    copied = series(st, se, 1)
    copied.dicom_json = json.dumps(
        {"00100020": {"vr": "LO", "Value": ["PID-9"]}} | json.loads(copied.dicom_json)
    )
    index.items.save(copied)
    item = instance(st, se, sop, 1)
    item.patient_id = "PID-9"
    index.items.save(item)
    index.series(st, se)  # outside an audited invocation: nothing is kept
    with noting_patients() as noted:
        index.instances(DicomWebURI("", study=st, series=se, instance=sop))
    assert noted == {st: "PID-9"}
    with noting_patients() as noted:
        index.series(st, se)
    assert noted == {st: "PID-9"}
    with noting_patients() as noted:
        index.instances(DicomWebURI("", study=st, series=se))
        index.find_series(new_uid(), new_uid())
    assert noted == {st: "PID-9"}
