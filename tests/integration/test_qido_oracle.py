"""QIDO-RS search against an independent oracle (tests/qido_oracle.py), on moto.

A seeded corpus of ~40 awkward studies is stored once through STOW-RS; every query is then
answered by the server's planner and matcher and, separately, by the oracle over the
pydicom data sets. The sets of UIDs must agree; paging must cut one deterministic sequence.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from pydicom.uid import (
    BasicTextSRStorage,
    ComprehensiveSRStorage,
    CTImageStorage,
    EnhancedSRStorage,
)

from dicomweb_core.errors import BadRequest
from dicomweb_core.index.models import SeriesItem, StudyItem
from dicomweb_core.qido.attributes import Level
from dicomweb_core.qido.query import parse_query
from dicomweb_core.qido.render import result
from dicomweb_core.qido.search import search
from dicomweb_core.qido.view import Entity
from infra.datasets.generate import to_part10
from tests.moto_stack import BASE_URL, moto_account, provisioned, stow_service
from tests.qido_oracle import INSTANCE, SERIES, STUDY, Corpus, Oracle, build_corpus
from tests.streams import settle

LEVELS = {STUDY: Level.STUDY, SERIES: Level.SERIES, INSTANCE: Level.INSTANCE}
SR_CLASSES = f"{BasicTextSRStorage},{EnhancedSRStorage},{ComprehensiveSRStorage}"
ALL_MODALITIES = "Modality=CT,PT,MR,SR,US,DX"


@dataclass
class Store:
    corpus: Corpus
    oracle: Oracle

    def resolve(self, text: str) -> str:
        for name, uid in self.corpus.names.items():
            text = text.replace("{" + name + "}", uid)
        return text


@pytest.fixture(scope="module")
def store() -> Iterator[Store]:
    """The corpus stored through StowService into moto resources made from template.yaml."""
    with moto_account():
        stack, settings = provisioned(base_url=BASE_URL)
        service = stow_service(settings)
        corpus = build_corpus()
        payloads = [memoryview(to_part10(ds)) for ds in corpus.datasets]
        for start in range(0, len(payloads), 25):
            outcome = service.store_all(payloads[start : start + 25], study=None)
            assert not outcome.failures, outcome.failures
        settle(stack)  # the aggregates, recounted from the stream as AggregatesFunction does
        yield Store(corpus, Oracle(corpus.datasets))


def _uid(item: Entity) -> str:
    if isinstance(item, StudyItem):
        return item.study_uid
    if isinstance(item, SeriesItem):
        return item.series_uid
    return item.sop_uid


def _resource(store: Store, resource: str) -> tuple[str, str | None, str | None]:
    """(level, study, series) of a resource path like /studies/{MULTI}/series."""
    parts = store.resolve(resource).strip("/").split("/")
    study = parts[1] if len(parts) > 2 else None
    series = parts[3] if len(parts) > 4 else None
    level = {"studies": STUDY, "series": SERIES, "instances": INSTANCE}[parts[-1]]
    return level, study, series


def _server(store: Store, resource: str, raw_query: str) -> tuple[list[str], bool, list[Any]]:
    level, study, series = _resource(store, resource)
    query = parse_query(LEVELS[level], store.resolve(raw_query), study=study, series=series)
    found = search(query)
    return [_uid(i) for i in found.matches], found.more, list(zip(found.matches, found.views, strict=True))


# (resource, query): every query adds limit=1000 unless it sets a limit itself.
QUERIES = [
    # --- OHIF study list
    ("/studies", "limit=101&offset=0&fuzzymatching=false&includefield=00081030,00080060"),
    ("/studies", "limit=101&offset=0&fuzzymatching=false&includefield=00081030,00080060&PatientName=*smi*"),
    ("/studies", "limit=101&offset=0&fuzzymatching=false&includefield=00081030,00080060&00100020=*123*"),
    ("/studies", "limit=101&offset=0&includefield=00081030,00080060&ModalitiesInStudy=CT"),
    ("/studies", "limit=101&offset=0&includefield=00081030,00080060&StudyDate=20240101-20241231"),
    ("/studies", "PatientName=*smi*&ModalitiesInStudy=CT&StudyDate=20240101-20241231"),
    # --- person names
    ("/studies", ""),
    ("/studies", "PatientName=Smith^John"),
    ("/studies", "PatientName=smith^JOHN"),
    ("/studies", "PatientName=SMITH"),
    ("/studies", "PatientName=Smith^Jane"),
    ("/studies", "PatientName=M%C3%BCller^Jos%C3%A9"),
    ("/studies", "PatientName=muller^jose"),
    ("/studies", "PatientName=MULLER*"),
    ("/studies", "PatientName=O'Brien*"),
    ("/studies", "PatientName=obrien^anne marie"),
    ("/studies", "PatientName=Anne-Marie*"),
    ("/studies", "PatientName=*marie*"),
    ("/studies", "PatientName=dupont^zoe"),
    ("/studies", "PatientName=Zo%C3%AB*"),
    ("/studies", "PatientName=*Zoe"),
    ("/studies", "PatientName=?mith*"),
    ("/studies", "PatientName=de la cruz*"),
    ("/studies", "PatientName=^Madonna"),
    ("/studies", "PatientName=Nguyen^Van^Minh^Dr"),
    ("/studies", "PatientName=st john*"),
    ("/studies", "PatientName=*"),
    ("/studies", "PatientName="),
    ("/studies", "PatientName=Smith&fuzzymatching=true"),
    ("/studies", "PatientName=jo&fuzzymatching=true"),
    ("/studies", "PatientName=jos mul&fuzzymatching=true"),
    ("/studies", "PatientName=ann&fuzzymatching=true"),
    ("/studies", "PatientName=smi*&fuzzymatching=true"),
    ("/studies", "PatientName=smith^j*"),
    ("/studies", "PatientName=*^anna"),
    ("/studies", "PatientName=maria cruz&fuzzymatching=true"),
    ("/studies", "PatientName=o bri&fuzzymatching=true"),
    ("/studies", "PatientName=smith*&ModalitiesInStudy=CT"),
    ("/studies", "ReferringPhysicianName=hou&fuzzymatching=true"),
    ("/studies", "ReferringPhysicianName=house*"),
    ("/studies", "ReferringPhysicianName=Wilson^James"),
    # --- IDs (case-sensitive)
    ("/studies", "PatientID=PAT123"),
    ("/studies", "PatientID=pat123"),
    ("/studies", "PatientID=PAT*"),
    ("/studies", "PatientID=*-45"),
    ("/studies", "PatientID=mul-1"),
    ("/studies", "PatientID=mul*"),
    ("/studies", "PatientID=?AT*"),
    ("/studies", "StudyID=S3&AccessionNumber=ACC*"),
    ("/studies", "PatientID=*"),
    ("/studies", "AccessionNumber=ACC-77"),
    ("/studies", "AccessionNumber=acc-77"),
    ("/studies", "AccessionNumber=ACC*"),
    ("/studies", "AccessionNumber=*0?1"),
    ("/studies", "AccessionNumber="),
    ("/studies", "StudyID=S3"),
    ("/studies", "StudyDescription=*Chest*"),
    ("/studies", "StudyDescription=*chest*"),
    ("/studies", "PatientSex=F&PatientBirthDate=-19791231"),
    # --- dates and times
    ("/studies", "StudyDate=20240229"),
    ("/studies", "StudyDate=20231231-20240101"),
    ("/studies", "StudyDate=-20231231"),
    ("/studies", "StudyDate=20250101-"),
    ("/studies", "StudyDate=20240201-20240229"),
    ("/studies", "StudyDate=20221130-20240101"),
    ("/studies", "StudyDate=20200101-20251231"),
    ("/studies", "StudyDate=20240101-20240131&StudyTime=120000-"),
    ("/studies", "StudyDate=20231231-20240101&StudyTime=2300-0100"),
    ("/studies", "StudyDate=20240101-&StudyTime=-0800"),
    ("/studies", "StudyDate=20240229&StudyTime=1000-1800"),
    ("/studies", "StudyTime=101010.6-"),
    ("/studies", "StudyTime=-101010.4"),
    ("/studies", "StudyTime=-08"),
    ("/studies", "StudyTime=120000"),
    ("/studies", "StudyTime=101010"),
    ("/studies", "StudyTime=2359-"),
    # --- ModalitiesInStudy and UIDs
    ("/studies", "ModalitiesInStudy=CT,PT"),
    ("/studies", "ModalitiesInStudy=SR"),
    ("/studies", "ModalitiesInStudy=ct"),
    ("/studies", "ModalitiesInStudy=?R"),
    ("/studies", "StudyInstanceUID={MULTI},{DUPSERIES}"),
    ("/studies", "StudyInstanceUID={MULTI}&PatientName=nobody"),
    # --- series
    ("/series", "Modality=CT"),
    ("/series", "Modality=CT,PT"),
    ("/series", "Modality=PT&StudyDate=20240101-20241231"),
    ("/series", "SeriesNumber=1"),
    ("/series", "SeriesNumber=+1&Modality=CT"),
    ("/series", "PatientID=PAT123"),
    ("/series", "PatientName=*smi*&Modality=CT"),
    ("/series", "RequestAttributesSequence.ScheduledProcedureStepID=SPS-10"),
    ("/series", "RequestAttributesSequence.RequestedProcedureID=RP2"),
    ("/series", "RequestAttributesSequence.RequestedProcedureID=RP*&Modality=SR"),
    ("/series", "SeriesInstanceUID={MULTI_SERIES}"),
    ("/series", "StudyInstanceUID={MULTI},{DUPSERIES}&Modality=MR,SR"),
    ("/series", "ModalitiesInStudy=SR"),
    ("/series", "ModalitiesInStudy=PT&Modality=CT"),
    ("/series", "StudyDate=20240229"),
    ("/series", "PerformedProcedureStepStartDate=20240101-20240630"),
    ("/series", "PerformedProcedureStepStartDate=20240630"),
    ("/series", "PerformedProcedureStepStartDate=20240201-"),
    ("/series", "AccessionNumber=ACC-77"),
    ("/series", "PatientName=dupont^zoe"),
    ("/series", "SeriesNumber=100&StudyDate=-20240101"),
    ("/series", "SeriesDescription=*xial*&Modality=CT"),
    ("/series", ALL_MODALITIES),
    # --- instances
    ("/instances", f"SOPClassUID={CTImageStorage}"),
    ("/instances", f"SOPClassUID={SR_CLASSES}"),
    ("/instances", "InstanceNumber=1"),
    ("/instances", "InstanceNumber=2&Modality=PT"),
    ("/instances", "PatientID=PAT123"),
    ("/instances", "SeriesInstanceUID={MULTI_SERIES}"),
    ("/instances", "SOPInstanceUID={MULTI_SOP}"),
    ("/instances", "SOPInstanceUID={MULTI_SOP}&InstanceNumber=999"),
    ("/instances", "Modality=SR"),
    ("/instances", "AccessionNumber=*77"),
    ("/instances", "StudyDate=20240229&InstanceNumber=1"),
    ("/instances", f"StudyDate=20231231-20240101&SOPClassUID={CTImageStorage}"),
    ("/instances", "ModalitiesInStudy=PT&InstanceNumber=1"),
    ("/instances", "RequestAttributesSequence.ScheduledProcedureStepID=SPS-11"),
    ("/instances", "PatientName=muller*&InstanceNumber=1"),
    # --- within a study or series
    ("/studies/{MULTI}/series", ""),
    ("/studies/{MULTI}/series", "Modality=PT"),
    ("/studies/{MULTI}/series", "Modality=ct"),
    ("/studies/{MULTI}/series", "RequestAttributesSequence.ScheduledProcedureStepID=SPS*"),
    ("/studies/{MULTI}/series", "ModalitiesInStudy=SR"),
    ("/studies/{MULTI}/series", "StudyInstanceUID={DUPSERIES}"),
    ("/studies/{DUPSERIES}/series", "SeriesNumber=1"),
    ("/studies/{DUPSERIES}/series", "PatientName=nobody"),
    ("/studies/{MULTI}/instances", ""),
    ("/studies/{MULTI}/instances", f"SOPClassUID={SR_CLASSES}"),
    ("/studies/{MULTI}/instances", "InstanceNumber=1"),
    ("/studies/{DUPSERIES}/instances", "Modality=MR"),
    ("/studies/{MULTI}/series/{MULTI_SERIES}/instances", ""),
    ("/studies/{MULTI}/series/{MULTI_SERIES}/instances", "InstanceNumber=1"),
    ("/studies/{MULTI}/series/{MULTI_SERIES}/instances", "SOPInstanceUID={MULTI_SOP}"),
    ("/studies/{DUPSERIES}/series/{MULTI_SERIES}/instances", ""),
]


@pytest.mark.parametrize(("resource", "raw_query"), QUERIES, ids=[f"{r}?{q}" for r, q in QUERIES])
def test_search_matches_the_oracle(store: Store, resource: str, raw_query: str) -> None:
    # Given the stored corpus and a query at one of the six resources
    query = raw_query if "limit=" in raw_query else "&".join(filter(None, [raw_query, "limit=1000"]))
    level, study, series = _resource(store, resource)
    # When the server and the oracle answer it
    uids, more, _ = _server(store, resource, query)
    expected = store.oracle.search(level, store.resolve(query), study=study, series=series)
    # Then they return the same results, each once, all on one page
    assert len(uids) == len(set(uids))
    assert set(uids) == expected, (sorted(set(uids) - expected), sorted(expected - set(uids)))
    assert more is False


def test_the_corpus_exercises_the_queries(store: Store) -> None:
    # Given the corpus and the queries above
    answered = 0
    discriminating = 0
    for resource, raw_query in QUERIES:
        level, study, series = _resource(store, resource)
        pool = {STUDY: store.oracle.studies, SERIES: store.oracle.series}.get(level, store.oracle.instances)
        # When the oracle answers each of them
        found = store.oracle.search(level, store.resolve(raw_query), study=study, series=series)
        answered += bool(found)
        discriminating += len(found) < len(pool)
    # Then most queries find something and most leave something out
    assert answered >= 0.8 * len(QUERIES)
    assert discriminating >= 0.7 * len(QUERIES)


PAGED = [
    ("/studies", ""),
    ("/studies", "PatientName=*smi*"),
    ("/studies", "ModalitiesInStudy=CT"),
    ("/studies", "StudyDate=20240101-20241231"),
    ("/studies", "PatientName=jo&fuzzymatching=true"),
    ("/studies", "00100020=*123*"),
    ("/series", ALL_MODALITIES),
    ("/series", "StudyDate=20231231-20240301"),
    ("/instances", f"SOPClassUID={CTImageStorage}"),
    ("/instances", "InstanceNumber=1"),
    ("/studies/{MULTI}/instances", ""),
    ("/studies/{DUPSERIES}/series", ""),
]


@pytest.mark.parametrize("page_size", [4, 11])
@pytest.mark.parametrize(("resource", "raw_query"), PAGED, ids=[f"{r}?{q}" for r, q in PAGED])
def test_paging_cuts_one_sequence(store: Store, resource: str, raw_query: str, page_size: int) -> None:
    # Given the whole answer to a query on one page
    prefix = f"{raw_query}&" if raw_query else ""
    everything, more, _ = _server(store, resource, f"{prefix}limit=1000")
    assert not more
    assert len(everything) > 2
    # When it is read page by page with limit and offset
    pages: list[str] = []
    for offset in range(0, len(everything) + page_size, page_size):
        page, more, _ = _server(store, resource, f"{prefix}limit={page_size}&offset={offset}")
        # Then each page says whether more follow
        assert more is (offset + page_size < len(everything)), offset
        assert len(page) == min(page_size, max(0, len(everything) - offset))
        pages += page
    # Then the pages concatenate to the same sequence: no duplicates, no gaps
    assert pages == everything


def test_more_is_false_exactly_at_the_end(store: Store) -> None:
    # Given the number of studies stored
    total = len(store.oracle.studies)
    # When the first total-1, total and total+1 results are asked for
    # Then only the first leaves more to read
    assert _server(store, "/studies", f"limit={total - 1}")[1] is True
    assert _server(store, "/studies", f"limit={total}")[1] is False
    assert _server(store, "/studies", f"limit={total + 1}")[1] is False
    assert _server(store, "/studies", f"limit=5&offset={total}")[:2] == ([], False)


def test_study_rows_carry_the_aggregates(store: Store) -> None:
    # Given every study
    _, _, items = _server(store, "/studies", "limit=1000")
    assert len(items) == len(store.oracle.studies)
    for item, merged in items:
        # When it is rendered as a result
        row = result(item, merged, base_url=BASE_URL)
        uid = row["0020000D"]["Value"][0]
        # Then ModalitiesInStudy and the counts are the oracle's
        assert row["00080061"]["Value"] == sorted(store.oracle.modalities[uid])
        assert row["00201206"]["Value"] == [len(store.oracle.study_series[uid])]
        assert row["00201208"]["Value"] == [store.oracle.study_instances[uid]]
        assert row["00081190"]["Value"] == [f"{BASE_URL}/studies/{uid}"]


def test_series_rows_carry_the_instance_count(store: Store) -> None:
    # Given every series
    _, _, items = _server(store, "/series", f"{ALL_MODALITIES}&limit=1000")
    assert len(items) == len(store.oracle.series)
    for item, merged in items:
        # When it is rendered as a result
        row = result(item, merged, base_url=BASE_URL)
        uid = row["0020000E"]["Value"][0]
        # Then NumberOfSeriesRelatedInstances is the oracle's, and the study's attributes are there
        assert row["00201209"]["Value"] == [store.oracle.series_instances[uid]]
        assert row["0020000D"]["Value"] == [store.oracle.series[uid].study_uid]


def test_a_range_across_midnight_needs_a_date_range() -> None:
    # Given a StudyTime range that ends before it starts
    # When it comes without a StudyDate range
    # Then it is refused; with one, it is one date-time range
    with pytest.raises(BadRequest, match="StudyTime range starts after it ends"):
        parse_query(Level.STUDY, "StudyDate=20240101&StudyTime=2300-0100")
    parse_query(Level.STUDY, "StudyDate=20231231-20240101&StudyTime=2300-0100")


def _search(store: Store, resource: str, raw_query: str) -> Any:
    level, study, series = _resource(store, resource)
    return search(parse_query(LEVELS[level], store.resolve(raw_query), study=study, series=series))


def _dataset(store: Store, sop_uid: str) -> Any:
    return next(ds for ds in store.corpus.datasets if ds.SOPInstanceUID == sop_uid)


def test_series_and_instance_results_carry_their_parents_with_one_item_read_per_series(store: Store) -> None:
    source = _dataset(store, store.corpus.names["MULTI_SOP"])
    expected = {
        "00100020": source.PatientID,
        "00080050": source.AccessionNumber,
        "00200011": source.SeriesNumber,
    }
    # A series result: its item holds its study's attributes, so the search reads that one item
    found = _search(store, "/series", "SeriesInstanceUID={MULTI_SERIES}")
    ((series_view),) = found.views
    assert found.reads.items == 1
    # An instance result: its item and its series' (holding the study's), nothing else
    found = _search(store, "/instances", "SOPInstanceUID={MULTI_SOP}")
    ((instance_view),) = found.views
    assert found.reads.items == 2
    # The series of a study read only their own items
    found = _search(store, "/studies/{MULTI}/series", "")
    assert found.reads.items == len(found.matches) == len(store.oracle.study_series[source.StudyInstanceUID])
    for view in (series_view, instance_view):
        assert {tag: view[tag]["Value"][0] for tag in expected} == expected
        assert view["0020000D"]["Value"] == [source.StudyInstanceUID]


def test_a_series_item_without_its_studys_attributes_is_completed_from_the_study(store: Store) -> None:
    # Given a series item as written before series items held a copy of their study's attributes
    item = SeriesItem.get(*SeriesItem.key(store.corpus.names["MULTI"], store.corpus.names["MULTI_SERIES"]))
    copied = item.dicom_json
    before = _search(store, "/instances", "SOPInstanceUID={MULTI_SOP}").views
    study_tags = set(json.loads(StudyItem.get(*StudyItem.key(item.study_uid)).dicom_json))
    own = {
        tag: value for tag, value in json.loads(copied).items() if tag not in study_tags or tag == "00080005"
    }
    item.update(actions=[SeriesItem.dicom_json.set(json.dumps(own))])
    try:
        # When series and instances are searched, Then the answers are the same, the study read once more
        after = _search(store, "/instances", "SOPInstanceUID={MULTI_SOP}")
        assert after.views == before and after.reads.items == 3
        series = _search(store, "/series", "SeriesInstanceUID={MULTI_SERIES}")
        assert series.reads.items == 2 and series.views[0]["00100020"] == before[0]["00100020"]
    finally:
        item.update(actions=[SeriesItem.dicom_json.set(copied)])
