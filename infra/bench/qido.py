"""QIDO-RS latency and read amplification on a generated index (100,000 instances, 10,000 studies).

The index items are generated directly (no DICOM parsing, no S3) with the writer's own
item builders and key functions, and put straight into the local runtime's moto
backend. Each query family then runs through the local runtime (HTTP, authorizer,
Lambda worker) for latency, and in-process through the same planner for the read
amplification: DynamoDB items read (Query items + BatchGetItem items) per item returned.
Selective families run at two index sizes to show latency does not grow with the store.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests
from moto.backends import get_backend

from dicomweb_core.dicom.instance import ReceivedInstance
from dicomweb_core.index import items, keys
from dicomweb_core.index.models import IndexItem, PostingItem, RegistryItem
from dicomweb_core.index.table import use_by_default
from dicomweb_core.index.write_results import StoredObject, WriteContext
from dicomweb_core.qido.attributes import Level
from dicomweb_core.qido.query import parse_query
from dicomweb_core.qido.search import search
from infra.bench.stow import bench_options
from infra.local.provision import ACCOUNT_ID
from infra.local.serve import REGION, LocalStack

FAMILY_NAMES = [
    "Smith",
    "Müller",
    "O'Brien",
    "Nguyen",
    "García",
    "Johansson",
    "Kowalski",
    "Tanaka",
    "Dubois",
    "Rossi",
]
GIVEN_NAMES = ["Anne-Marie", "José", "Zoë", "John", "Wei", "Fatima", "Lars", "Yuki", "Pierre", "Giulia"]
MODALITY_MIX = [("CT",), ("CT",), ("MR",), ("CT", "PT"), ("MR", "SR"), ("CR",), ("US",), ("CT", "SR")]
SOP_CLASSES = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "PT": "1.2.840.10008.5.1.4.1.1.128",
    "SR": "1.2.840.10008.5.1.4.1.1.88.33",
    "CR": "1.2.840.10008.5.1.4.1.1.1",
    "US": "1.2.840.10008.5.1.4.1.1.6.1",
}


def _pn(text: str) -> dict[str, Any]:
    return {"vr": "PN", "Value": [{"Alphabetic": text}]}


def _value(vr: str, value: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": [value]}


@dataclass
class StudyPlan:
    uid: str
    study_json: dict[str, Any]
    series: list[tuple[str, str, int]] = field(default_factory=list)  # (uid, modality, instances)


def plan_studies(count: int, instances_per_study: int, *, seed: int = 11) -> list[StudyPlan]:
    rng = random.Random(seed)
    plans = []
    for number in range(count):
        uid = f"2.25.{10**20 + number}"
        date = f"20{rng.randint(15, 24):02d}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
        study_json = {
            "00080020": _value("DA", date),
            "00080030": _value("TM", f"{rng.randint(0, 23):02d}{rng.randint(0, 59):02d}00"),
            "00080050": _value("SH", f"ACC{number:07d}"),
            "00080090": _pn(f"{rng.choice(FAMILY_NAMES)}^Ref"),
            "00100010": _pn(f"{rng.choice(FAMILY_NAMES)}^{rng.choice(GIVEN_NAMES)}^{number}"),
            "00100020": _value("LO", f"PID{number // 2:06d}"),
            "0020000D": _value("UI", uid),
            "00200010": _value("SH", f"S{number}"),
        }
        plan = StudyPlan(uid, study_json)
        modalities = MODALITY_MIX[number % len(MODALITY_MIX)]
        share = instances_per_study // len(modalities)
        for index, modality in enumerate(modalities):
            size = share if index < len(modalities) - 1 else instances_per_study - share * index
            plan.series.append((f"{uid}.{index + 1}", modality, size))
        plans.append(plan)
    return plans


def generated_instance(plan: StudyPlan, series_number: int, number: int) -> ReceivedInstance:
    series_uid, modality, _ = plan.series[series_number]
    sop = f"{series_uid}.{number}"
    series_json = {
        "00080060": _value("CS", modality),
        "0020000E": _value("UI", series_uid),
        "00200011": _value("IS", series_number + 1),
        "00400275": {"vr": "SQ", "Value": [{"00400009": _value("SH", f"SPS-{series_uid}")}]},
    }
    instance_json = {
        "00080016": _value("UI", SOP_CLASSES[modality]),
        "00080018": _value("UI", sop),
        "00200013": _value("IS", number),
    }
    return ReceivedInstance(
        data=b"",
        sha256="0" * 64,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        sop_class_uid=SOP_CLASSES[modality],
        sop_instance_uid=sop,
        study_instance_uid=plan.uid,
        series_instance_uid=series_uid,
        modality=modality,
        study_json=plan.study_json,
        series_json=series_json,
        instance_json=instance_json,
    )


def index_items(plans: list[StudyPlan]) -> Iterator[IndexItem]:
    """Every item STOW would have written for these studies, with final aggregates."""
    now = datetime.now(UTC)
    stored = StoredObject("generated", None, "0" * 64, 0)
    months, combos = set(), set()
    for plan in plans:
        sort = keys.study_sort_key(plan.study_json, plan.uid)
        combo = "\\".join(sorted({m for _, m, _ in plan.series}))
        months.add(keys.month_of(keys.text_value(plan.study_json, keys.STUDY_DATE)))
        combos.add(combo)
        for posting in keys.study_postings(plan.study_json, plan.uid):
            yield PostingItem(*posting.key, study_uid=plan.uid)
        first: ReceivedInstance | None = None
        for series_number, (series_uid, _, size) in enumerate(plan.series):
            instances = [generated_instance(plan, series_number, n) for n in range(1, size + 1)]
            first = first or instances[0]
            for posting in keys.series_postings(instances[0].series_json, plan.uid, series_uid):
                yield PostingItem(*posting.key, study_uid=plan.uid, series_uid=series_uid)
            series = items.series_item(
                instances[0], now, study_sort=sort, study_json=json.dumps(first.study_json)
            )
            series.instance_count = size
            yield series
            for instance in instances:
                yield items.instance_item(instance, stored, now, series_sort=f"{sort}#{series_uid}")
        assert first is not None
        study = items.study_item(first, WriteContext(False, False, sort, deletions=0), now)
        # the aggregates as AggregatesFunction leaves them (index.aggregates)
        study.modalities = {m for _, m, _ in plan.series}
        study.modality_combo = combo
        for name, value in keys.modality_combo_attributes(combo, plan.uid, sort).items():
            setattr(study, name, value)
        study.series_count = len(plan.series)
        study.instance_count = sum(size for _, _, size in plan.series)
        yield study
    yield RegistryItem(*RegistryItem.key(items.STUDY_MONTHS), values=months)
    yield RegistryItem(*RegistryItem.key(items.MODALITY_COMBOS), values=combos)


def load(table: str, plans: list[StudyPlan]) -> int:
    backend = get_backend("dynamodb")[ACCOUNT_ID][REGION]
    count = 0
    for item in index_items(plans):
        backend.put_item(table, item.serialize())
        count += 1
    return count


@dataclass(frozen=True)
class Family:
    name: str
    level: Level
    query: Callable[[StudyPlan], str]
    scope: Callable[[StudyPlan], tuple[str | None, str | None]] = lambda plan: (None, None)
    selective: bool = True


def _name_of(plan: StudyPlan) -> str:
    return str(plan.study_json["00100010"]["Value"][0]["Alphabetic"])


FAMILIES = [
    Family("StudyInstanceUID", Level.STUDY, lambda p: f"StudyInstanceUID={p.uid}"),
    Family("PatientID", Level.STUDY, lambda p: f"PatientID={p.study_json['00100020']['Value'][0]}"),
    Family(
        "AccessionNumber", Level.STUDY, lambda p: f"AccessionNumber={p.study_json['00080050']['Value'][0]}"
    ),
    Family("StudyID", Level.STUDY, lambda p: f"StudyID={p.study_json['00200010']['Value'][0]}"),
    Family("PatientName exact", Level.STUDY, lambda p: f"PatientName={quote(_name_of(p))}"),
    Family("PatientName prefix*", Level.STUDY, lambda p: f"PatientName={quote(_name_of(p)[:-1])}*"),
    Family(
        "PatientName *contains*", Level.STUDY, lambda p: f"PatientName=*{quote(_name_of(p).split('^')[-1])}*"
    ),
    Family(
        "PatientName fuzzy",
        Level.STUDY,
        lambda p: f"PatientName={_name_of(p).split('^')[-1]}&fuzzymatching=true",
    ),
    Family(
        "ReferringPhysicianName",
        Level.STUDY,
        lambda p: "ReferringPhysicianName=Tanaka^Ref&limit=100",
        selective=False,
    ),
    Family("StudyDate (one day)", Level.STUDY, lambda p: f"StudyDate={p.study_json['00080020']['Value'][0]}"),
    Family(
        "StudyDate (one month)",
        Level.STUDY,
        lambda p: (
            f"StudyDate={p.study_json['00080020']['Value'][0][:6]}01-{p.study_json['00080020']['Value'][0][:6]}28&limit=100"
        ),
        selective=False,
    ),
    Family("ModalitiesInStudy", Level.STUDY, lambda p: "ModalitiesInStudy=PT&limit=100", selective=False),
    Family(
        "all studies (OHIF list)",
        Level.STUDY,
        lambda p: "limit=101&offset=0&fuzzymatching=false",
        selective=False,
    ),
    Family("SeriesInstanceUID", Level.SERIES, lambda p: f"SeriesInstanceUID={p.series[0][0]}"),
    Family("Modality", Level.SERIES, lambda p: "Modality=MR&limit=100", selective=False),
    Family(
        "ScheduledProcedureStepID",
        Level.SERIES,
        lambda p: f"RequestAttributesSequence.ScheduledProcedureStepID=SPS-{p.series[0][0]}",
    ),
    Family("series of a study", Level.SERIES, lambda p: "", lambda p: (p.uid, None)),
    Family("SOPInstanceUID", Level.INSTANCE, lambda p: f"SOPInstanceUID={p.series[0][0]}.1"),
    Family(
        "SOPClassUID", Level.INSTANCE, lambda p: f"SOPClassUID={SOP_CLASSES['US']}&limit=100", selective=False
    ),
    Family("InstanceNumber in study", Level.INSTANCE, lambda p: "InstanceNumber=3", lambda p: (p.uid, None)),
    Family("instances of a series", Level.INSTANCE, lambda p: "", lambda p: (p.uid, p.series[0][0])),
]

_PATHS = {Level.STUDY: "studies", Level.SERIES: "series", Level.INSTANCE: "instances"}


def _url(base: str, family: Family, plan: StudyPlan) -> str:
    study, series = family.scope(plan)
    path = f"/{_PATHS[family.level]}"
    if study and series:
        path = f"/studies/{study}/series/{series}/instances"
    elif study:
        path = f"/studies/{study}/{_PATHS[family.level]}"
    query = family.query(plan)
    return f"{base}{path}" + (f"?{query}" if query else "")


@dataclass
class Measured:
    family: str
    median_ms: float
    returned: float
    amplification: float


def measure(stack: LocalStack, plans: list[StudyPlan], *, runs: int) -> list[Measured]:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {stack.tokens['viewer']}"
    rng = random.Random(5)
    results = []
    for family in FAMILIES:
        latencies, reads, returned = [], 0, 0
        samples = [rng.choice(plans) for _ in range(runs)]
        session.get(_url(stack.base_url, family, samples[0]), timeout=60)  # warm: maps, worker
        for plan in samples:
            started = time.perf_counter()
            response = session.get(_url(stack.base_url, family, plan), timeout=60)
            latencies.append((time.perf_counter() - started) * 1000)
            if response.status_code not in (200, 204):
                raise RuntimeError(f"{family.name}: HTTP {response.status_code} {response.text[:200]}")
            study, series = family.scope(plan)
            found = search(parse_query(family.level, family.query(plan), study=study, series=series))
            reads += found.reads.items
            returned += len(found.matches)
        results.append(
            Measured(family.name, statistics.median(latencies), returned / runs, reads / max(returned, 1))
        )
    return results


def run(*, quick: bool = False) -> str:
    sizes = [(200, 10), (1000, 10)] if quick else [(1000, 10), (10000, 10)]
    runs = 5 if quick else 20
    tables = []
    with tempfile.TemporaryDirectory() as local_dir:
        options = bench_options(Path(local_dir), change_feed=False)  # items are written directly
        stack = LocalStack(options)
        stack.start()
        try:
            table = stack.stack.physical_ids["IndexTable"]
            os.environ["AWS_ENDPOINT_URL"] = stack.moto_url  # the in-process planner reads moto too
            use_by_default(table)
            loaded = 0
            all_plans: list[StudyPlan] = []
            for studies, per_study in sizes:
                plans = plan_studies(studies, per_study)
                new = plans[len(all_plans) :]
                started = time.perf_counter()
                with stack.gateway.activity.running():  # direct moto access, like an invocation
                    loaded += load(table, new)
                all_plans = plans
                load_s = time.perf_counter() - started
                tables.append(
                    (studies, studies * per_study, loaded, load_s, measure(stack, all_plans, runs=runs))
                )
        finally:
            stack.stop()
    return _report(tables, runs)


def _report(tables: list[tuple[int, int, int, float, list[Measured]]], runs: int) -> str:
    (small_studies, _, _, _, small), (studies, instances, items, _, large) = tables
    lines = [
        f"## QIDO-RS ({studies:,} studies, {instances:,} instances; {items:,} index items; "
        f"median of {runs} queries through the local runtime)",
        "",
        f"| query | returned (mean) | read amplification | median ms @ {studies:,} studies "
        f"| median ms @ {small_studies:,} studies |",
        "|---|---|---|---|---|",
    ]
    for big, little in zip(large, small, strict=True):
        lines.append(
            f"| {big.family} | {big.returned:.1f} | {big.amplification:.2f} | {big.median_ms:.0f} "
            f"| {little.median_ms:.0f} |"
        )
    return "\n".join(lines)
