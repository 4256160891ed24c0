"""Reconciliation of S3 with the index (docs/write-safety.md, "Reconciliation") against moto.

Each test makes the store diverge the way a fault does (tests/faults.py: the process dies
before the index write, S3 refuses a clean-up, an object is deleted out of band), runs the
job, and checks that it converged: instances indexed and found by QIDO-RS and WADO-RS,
leftovers hidden (recoverable), missing objects flagged and nothing else touched, and
:func:`tests.write_invariants.check` over the whole store. The job's clock is moved past
the grace period instead of waiting an hour.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from pydicom.dataset import Dataset

from dicomweb_core import audit, config
from dicomweb_core.config import ConfigurationError, Settings
from dicomweb_core.delete.service import DeleteService
from dicomweb_core.dicom.failures import FailureReason
from dicomweb_core.events import EventPublisher
from dicomweb_core.index.models import IndexItem, SopItem
from dicomweb_core.index.write_results import StoredObject
from dicomweb_core.index.writer import IndexWriter
from dicomweb_core.observability import metrics
from dicomweb_core.reconcile.job import Reconciler
from dicomweb_core.reconcile.objects import instance_object
from dicomweb_core.reconcile.report import GONE, NONCURRENT, Report
from dicomweb_core.reconcile.settings import ReconcileSettings
from dicomweb_core.storage import S3InstanceStore, metadata_key
from dicomweb_core.stow.service import StoreOutcome
from infra.datasets.generate import make_dataset, to_part10
from infra.samtemplate import load_template
from tests.faults import Crash, Faults
from tests.integration.test_wado_service import wado_event
from tests.lambda_harness import LambdaContext, load_handler
from tests.moto_stack import provisioned, stow_service
from tests.write_invariants import check

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish:UserWarning")

LATER = timedelta(hours=2)  # past the default grace period of one hour


@dataclass
class Clock:
    """The job's clock: now, or ``ahead`` of it."""

    ahead: timedelta = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.ahead


@dataclass
class Env:
    settings: Settings
    s3: Any
    qido: ModuleType
    wado: ModuleType
    audit_path: Path
    clock: Clock = field(default_factory=Clock)

    @property
    def bucket(self) -> str:
        return self.settings.bucket_name

    def stow(self, ds: Dataset) -> StoreOutcome | None:
        """One STOW request in a fresh function (None: the process died, no answer)."""
        try:
            return stow_service(self.settings).store_all([memoryview(to_part10(ds))], study=None)
        except Crash:
            return None

    def lose_index_write(self, faults: Faults, ds: Dataset, *, like: Dataset | None = None) -> None:
        """Store ``ds`` with the process dying right before its index commit: its objects
        are in S3 and its SOP claim in the index, no instance is indexed, and nobody was
        told it was stored.

        ``like``: an instance whose store makes the same calls (by default one of a new
        study), stored first to learn which call is the commit: the first store of a series
        commits in a transaction, later ones with their second PutItem (after the claim)."""
        with faults.armed():
            assert self.stow(like or make_dataset()) is not None
        if "TransactWriteItems" in faults.calls:
            commit = faults.calls.index("TransactWriteItems")
        else:
            commit = [i for i, call in enumerate(faults.calls) if call == "PutItem"][1]
        with faults.armed("crash_before", at=commit):
            assert self.stow(ds) is None

    def reconcile(self, *, later: bool = True, **limits: Any) -> Report:
        """One run of the job, its clock ``LATER`` ahead unless ``later`` is False."""
        self.clock.ahead = LATER if later else timedelta(0)
        job = Reconciler.of(self.settings, ReconcileSettings(**limits), now=self.clock)
        return job.run(trigger="test")

    def current(self, prefix: str) -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def versions(self, prefix: str) -> list[tuple[str, str, bool]]:
        listing = self.s3.list_object_versions(Bucket=self.bucket, Prefix=prefix)
        entries = listing.get("Versions", []) + listing.get("DeleteMarkers", [])
        return sorted((v["Key"], v["VersionId"], v["IsLatest"]) for v in entries)

    def index(self) -> list[dict[str, Any]]:
        """Every index item, as stored."""
        return sorted(
            (item.serialize() for item in IndexItem.scan()), key=lambda i: (i["pk"]["S"], i["sk"]["S"])
        )

    def get(self, handler: ModuleType, path: str, function: str) -> tuple[int, str]:
        response = handler.handler(wado_event(path), LambdaContext(function))
        metrics.clear_metrics()  # metrics are disabled in tests: nothing flushes them
        body = response.get("body") or ""
        if response.get("isBase64Encoded"):
            body = base64.b64decode(body).decode("latin-1")
        return int(response["statusCode"]), body


@pytest.fixture
def env(aws: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Env]:
    stack, settings = provisioned()
    template = load_template()
    for function in ("QidoFunction", "WadoFunction", "ReconcileFunction"):
        for name, value in stack.function_environment(template.functions()[function]).items():
            monkeypatch.setenv(name, value)
    config.settings.cache_clear()
    audit_path = tmp_path / "audit.jsonl"
    monkeypatch.setattr(audit.sinks, "sink", lambda: audit.FileSink(audit_path))
    yield Env(
        settings, boto3.client("s3"), load_handler("QidoFunction"), load_handler("WadoFunction"), audit_path
    )
    config.settings.cache_clear()


def indexed_object(sop: str) -> StoredObject | None:
    """The object the index names for ``sop`` (its claim, then the instance item there)."""
    existing = IndexWriter().find(sop)
    return existing.stored if existing is not None else None


def instance_prefix(ds: Dataset) -> str:
    return f"studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}/"


# ---------------------------------------------------------------- objects without an index entry


def test_an_instance_whose_index_write_was_lost_is_indexed_found_and_its_stray_hidden(
    env: Env, faults: Faults
) -> None:
    # Given an instance whose objects reached S3 but whose index write was lost
    ds = make_dataset(PatientID="LOST-1")
    env.lose_index_write(faults, ds)
    (stray,) = [k for k in env.current(instance_prefix(ds)) if k.endswith(".dcm")]
    assert indexed_object(ds.SOPInstanceUID) is None

    # When the job runs after the grace period
    report = env.reconcile()

    # Then it indexed the instance, under a write key of its own
    assert [(f.sop, f.key) for f in report.indexed] == [(ds.SOPInstanceUID, stray)]
    item = indexed_object(ds.SOPInstanceUID)
    assert item is not None and item.key != stray
    assert report.indexed[0].detail == f"indexed at {item.key}"
    # And QIDO-RS finds it, WADO-RS retrieves it and its metadata
    status, body = env.get(env.qido, f"/studies/{ds.StudyInstanceUID}/instances", "QidoFunction")
    assert status == 200 and [m["00080018"]["Value"] for m in json.loads(body)] == [[ds.SOPInstanceUID]]
    instance = f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    assert env.get(env.wado, instance, "WadoFunction")[0] == 200
    status, body = env.get(env.wado, f"{instance}/metadata", "WadoFunction")
    assert status == 200 and json.loads(body)[0]["00100020"]["Value"] == ["LOST-1"]
    # And the stray objects are hidden, not deleted: their versions stay recoverable
    assert stray not in env.current("studies/") and metadata_key(stray) not in env.current("studies/")
    kept = [(key, latest) for key, _, latest in env.versions(stray.removesuffix(".dcm"))]
    assert sorted(kept) == [
        (stray, False),
        (stray, True),  # the delete marker
        (metadata_key(stray), False),
        (metadata_key(stray), True),
    ]
    # And the whole store keeps its invariants, with no unreferenced current object left
    check(env.s3, env.bucket, acknowledged={ds.SOPInstanceUID: [to_part10(ds)]})


def test_a_leftover_of_a_losing_duplicate_is_hidden_and_the_index_unchanged(
    env: Env, faults: Faults, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an instance stored while another request with other content under the same UIDs
    # was between its lookup and its commit, and S3 refused the loser's clean-up
    kept = make_dataset(PatientName="Right^Patient")
    imposter = make_dataset(
        study=kept.StudyInstanceUID,
        series=kept.SeriesInstanceUID,
        sop=kept.SOPInstanceUID,
        PatientName="Wrong^Patient",
    )
    with faults.armed():
        env.stow(make_dataset())
    commit = faults.calls.index("TransactWriteItems")

    def refuse(self: S3InstanceStore, key: str, version_id: str | None) -> None:
        raise ClientError({"Error": {"Code": "SlowDown", "Message": "injected"}}, "DeleteObject")

    with monkeypatch.context() as refusing:
        refusing.setattr(S3InstanceStore, "delete_version", refuse)
        with faults.armed("run_before", at=commit, other=lambda: env.stow(kept)):
            outcome = env.stow(imposter)
    assert outcome is not None
    assert [f.reason for f in outcome.failures] == [FailureReason.DUPLICATE_SOP_INSTANCE]
    indexed = indexed_object(kept.SOPInstanceUID)
    assert indexed is not None
    (leftover,) = [k for k in env.current(instance_prefix(kept)) if k.endswith(".dcm") and k != indexed.key]
    index_before = env.index()

    # When the job runs
    report = env.reconcile()

    # Then the leftover and its metadata document are hidden, and the index is as it was
    assert [(f.sop, f.key, f.detail) for f in report.hidden] == [
        (kept.SOPInstanceUID, leftover, f"indexed at {indexed.key}")
    ]
    assert not report.indexed and not report.missing
    assert env.index() == index_before
    assert env.current(instance_prefix(kept)) == sorted([indexed.key, metadata_key(indexed.key)])
    check(env.s3, env.bucket, acknowledged={kept.SOPInstanceUID: [to_part10(kept)]})


def test_objects_younger_than_the_grace_period_are_left_alone(env: Env, faults: Faults) -> None:
    # Given an instance whose index write was lost a moment ago (or is still under way)
    ds = make_dataset()
    env.lose_index_write(faults, ds)
    before = env.versions("studies/")

    # When the job runs now
    report = env.reconcile(later=False)

    # Then it looked at its objects but left them as they were, and the index too
    assert report.young >= 1 and report.instances_checked == 0
    assert not (report.indexed or report.hidden or report.missing)
    assert env.versions("studies/") == before
    assert indexed_object(ds.SOPInstanceUID) is None


def test_objects_of_a_study_being_deleted_are_left_to_the_delete(env: Env, faults: Faults) -> None:
    # Given a study with one stored instance and one whose index write was lost
    stored = make_dataset()
    assert env.stow(stored) is not None
    lost = make_dataset(study=stored.StudyInstanceUID, series=stored.SeriesInstanceUID)
    env.lose_index_write(
        faults, lost, like=make_dataset(study=lost.StudyInstanceUID, series=lost.SeriesInstanceUID)
    )
    # And a DELETE of the study that died before it hid the objects
    delete = DeleteService(bucket=env.bucket, events=EventPublisher(env.settings.event_bus_name))
    other = make_dataset()
    assert env.stow(other) is not None
    with faults.armed():
        delete.delete_study(other.StudyInstanceUID)
    sweep = faults.calls.index("ListObjectsV2")
    with faults.armed("crash_before", at=sweep), pytest.raises(Crash):
        delete.delete_study(stored.StudyInstanceUID)
    before = env.versions(f"studies/{stored.StudyInstanceUID}/")

    # When the job runs
    report = env.reconcile()

    # Then it indexes nothing of the study and hides nothing: the DELETE's repeat will
    assert {f.study for f in report.left_to_delete} == {stored.StudyInstanceUID}
    assert {stored.SOPInstanceUID, lost.SOPInstanceUID} <= {f.sop for f in report.left_to_delete}
    assert not (report.indexed or report.hidden)
    assert env.versions(f"studies/{stored.StudyInstanceUID}/") == before
    assert indexed_object(lost.SOPInstanceUID) is None


# ---------------------------------------------------------------- index entries without an object


@pytest.mark.parametrize(("deletion", "state"), [("delete marker", NONCURRENT), ("version deleted", GONE)])
def test_an_object_deleted_out_of_band_is_flagged_and_the_index_untouched(
    env: Env, deletion: str, state: str
) -> None:
    # Given two stored instances, one of whose objects is then deleted out of band
    intact, damaged = make_dataset(), make_dataset()
    assert env.stow(intact) is not None and env.stow(damaged) is not None
    item = indexed_object(damaged.SOPInstanceUID)
    assert item is not None
    if deletion == "delete marker":
        env.s3.delete_object(Bucket=env.bucket, Key=item.key)
    else:
        env.s3.delete_object(Bucket=env.bucket, Key=item.key, VersionId=item.version_id)
    index_before = env.index()

    # When the job runs
    report = env.reconcile()

    # Then the instance is flagged with its UIDs and what became of its object
    assert [(f.study, f.series, f.sop, f.key, f.detail) for f in report.missing] == [
        (damaged.StudyInstanceUID, damaged.SeriesInstanceUID, damaged.SOPInstanceUID, item.key, state)
    ]
    assert report.entries_scanned == 2
    # And the index is left exactly as it was, and nothing was stored again or hidden
    assert env.index() == index_before
    assert not (report.indexed or report.hidden)


# ---------------------------------------------------------------- runs


def test_a_claim_that_never_got_its_instance_is_released_and_reported(env: Env, faults: Faults) -> None:
    # Given a write into an existing series whose commit was refused after its SOP claim
    # (its objects were discarded; the claim stayed, naming its series)
    first = make_dataset()
    assert env.stow(first) is not None
    with faults.armed():
        env.stow(make_dataset(study=first.StudyInstanceUID, series=first.SeriesInstanceUID))
    commit = [i for i, call in enumerate(faults.calls) if call == "PutItem"][1]
    ds = make_dataset(study=first.StudyInstanceUID, series=first.SeriesInstanceUID)
    with faults.armed("fail", at=commit):
        outcome = env.stow(ds)
    assert outcome is not None and outcome.failures and indexed_object(ds.SOPInstanceUID) is None
    assert (
        SopItem.get(*SopItem.key(ds.SOPInstanceUID), consistent_read=True).series_uid == ds.SeriesInstanceUID
    )

    # When the job runs within the claim's grace, then after it
    assert env.reconcile(later=False).released == []
    report = env.reconcile()

    # Then the claim is released and reported, and the stored instance's claim is kept
    assert [(f.study, f.series, f.sop) for f in report.released] == [
        (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    ]
    assert report.counts()["ClaimsReleased"] == 1 and report.changed
    with pytest.raises(SopItem.DoesNotExist):
        SopItem.get(*SopItem.key(ds.SOPInstanceUID), consistent_read=True)
    assert indexed_object(first.SOPInstanceUID) is not None
    check(env.s3, env.bucket, acknowledged={first.SOPInstanceUID: [to_part10(first)]})
    # And the UID can be stored anywhere again
    elsewhere = make_dataset(study=first.StudyInstanceUID, sop=ds.SOPInstanceUID)
    assert env.stow(elsewhere) is not None and indexed_object(ds.SOPInstanceUID) is not None


def test_a_second_run_changes_nothing(env: Env, faults: Faults) -> None:
    # Given a store the job has reconciled: a lost index write, a missing object
    lost, damaged = make_dataset(), make_dataset()
    env.lose_index_write(faults, lost)
    assert env.stow(damaged) is not None
    item = indexed_object(damaged.SOPInstanceUID)
    assert item is not None
    env.s3.delete_object(Bucket=env.bucket, Key=item.key)
    first = env.reconcile()
    assert len(first.indexed) == 1 and len(first.missing) == 1
    objects, index = env.versions("studies/"), env.index()

    # When it runs again
    second = env.reconcile()

    # Then it changes nothing (the missing object is still reported: nobody restored it)
    assert not (second.indexed or second.hidden or second.refused) and second.errors == 0
    assert [f.sop for f in second.missing] == [damaged.SOPInstanceUID]
    assert env.versions("studies/") == objects
    assert env.index() == index


def test_runs_resume_where_the_last_one_stopped(env: Env, faults: Faults) -> None:
    # Given three lost index writes (six objects) and a run that lists two keys and reads
    # two index items at most
    lost = [make_dataset() for _ in range(3)]
    for ds in lost:
        env.lose_index_write(faults, ds)
    stored = [make_dataset() for _ in range(3)]
    for ds in stored:
        assert env.stow(ds) is not None

    # When the job runs until both passes completed
    reports = [env.reconcile(max_objects=2, max_scanned_items=2)]
    while not (reports[-1].objects_pass_complete or len(reports) > 20):
        reports.append(env.reconcile(max_objects=2, max_scanned_items=2))

    # Then each run went on from the last, and together they indexed every lost instance once
    assert all(r.objects_scanned <= 2 for r in reports)
    assert reports[-1].objects_pass_complete
    assert sum(r.objects_scanned for r in reports) >= 12  # the lost and the stored, two objects each
    indexed = [f.sop for r in reports for f in r.indexed]
    assert sorted(indexed) == sorted(ds.SOPInstanceUID for ds in lost)
    assert sum(r.entries_scanned for r in reports) >= 3
    check(env.s3, env.bucket, acknowledged={ds.SOPInstanceUID: [to_part10(ds)] for ds in lost + stored})
    # And the cursor says where the next run starts: over again
    state = json.loads(
        env.s3.get_object(Bucket=env.bucket, Key="reports/reconcile/state.json")["Body"].read()
    )
    assert state["objects_after"] is None and state["objects_passes"] == 1


def test_the_report_metrics_and_audit_records_say_what_was_done(
    env: Env, faults: Faults, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a lost index write, a leftover and a missing object, and the scheduled function
    lost, damaged = make_dataset(PatientID="PID-LOST"), make_dataset()
    env.lose_index_write(faults, lost)
    assert env.stow(damaged) is not None
    item = indexed_object(damaged.SOPInstanceUID)
    assert item is not None
    env.s3.delete_object(Bucket=env.bucket, Key=item.key)
    leftover = f"{instance_prefix(damaged)}0000000000000000deadbeef.dcm"
    env.s3.put_object(Bucket=env.bucket, Key=leftover, Body=to_part10(damaged))
    function = load_handler("ReconcileFunction")
    # (its clock past the grace period)
    monkeypatch.setattr(
        function, "JOB", Reconciler.of(config.settings(), ReconcileSettings(), now=Clock(LATER))
    )

    # When EventBridge Scheduler invokes it
    answer = function.handler({"trigger": "schedule"}, LambdaContext("ReconcileFunction"))

    # Then its answer names the report, which says what was done, instance by instance
    document = json.loads(env.s3.get_object(Bucket=env.bucket, Key=answer["report"])["Body"].read())
    assert answer["report"].startswith("reports/reconcile/") and document["trigger"] == "schedule"
    assert (answer["InstancesIndexed"], answer["LeftoversHidden"], answer["MissingObjects"]) == (1, 1, 1)
    assert [i["sop"] for i in document["objects"]["indexed"]["instances"]] == [lost.SOPInstanceUID]
    assert [i["key"] for i in document["objects"]["hiddenLeftovers"]["instances"]] == [leftover]
    (missing,) = document["indexEntries"]["missingObjects"]["instances"]
    assert (missing["study"], missing["sop"], missing["detail"]) == (
        damaged.StudyInstanceUID,
        damaged.SOPInstanceUID,
        NONCURRENT,
    )
    assert document["objects"]["scanned"] == answer["ObjectsScanned"] > 0
    assert "PID-LOST" not in json.dumps(document)  # the report names instances, not patients
    # And each count is a metric
    emitted = dict(function.metrics.metric_set)
    function.metrics.clear_metrics()
    assert emitted["ReconcileInstancesIndexed"]["Value"] == [1.0]
    assert emitted["ReconcileLeftoversHidden"]["Value"] == [1.0]
    assert emitted["ReconcileMissingObjects"]["Value"] == [1.0]
    # And the audit trail has one Instances Accessed record per study and action
    records = [json.loads(line) for line in env.audit_path.read_text().splitlines()]
    records = [r for r in records if "Route" not in r]  # not those of the requests above
    summary = {
        (
            r["EventIdentification"]["EventID"]["csd-code"],
            r["EventIdentification"]["EventActionCode"],
            r["EventIdentification"]["EventOutcomeIndicator"],
            next(
                o["ParticipantObjectID"]
                for o in r["ParticipantObjectIdentification"]
                if o["ParticipantObjectTypeCode"] == 2
            ),
        )
        for r in records
    }
    assert summary == {
        ("110103", "U", 0, lost.StudyInstanceUID),
        ("110103", "D", 0, damaged.StudyInstanceUID),
        ("110103", "R", 8, damaged.StudyInstanceUID),
    }
    indexed_record = next(r for r in records if r["EventIdentification"]["EventActionCode"] == "U")
    assert {"ParticipantObjectID": "PID-LOST"}.items() <= indexed_record["ParticipantObjectIdentification"][
        0
    ].items()
    assert all(r["ReconcileReport"] == answer["report"] for r in records)
    assert all(r["ActiveParticipant"][0]["UserIsRequestor"] for r in records)  # the system acted


# ---------------------------------------------------------------- keys and settings


@pytest.mark.parametrize(
    "key",
    [
        "studies/1.2.3/series/1.2.4/instances/1.2.5/0189abcdef012345deadbeef.dcm",
        "studies/1.2.3/series/1.2.4/instances/1.2.5.dcm",  # before per-write keys
    ],
)
def test_instance_objects_are_recognised_in_both_layouts(key: str) -> None:
    located = instance_object(key)
    assert located is not None
    assert (located.study, located.series, located.sop) == ("1.2.3", "1.2.4", "1.2.5")


@pytest.mark.parametrize(
    "key",
    [
        "studies/1.2.3/series/1.2.4/instances/1.2.5/0189abcdef012345deadbeef.json",
        "studies/1.2.3/series/1.2.4/instances/1.2.5/.dcm",
        "studies/1.2.3/series/1.2.4/instances/01.2.5/w.dcm",  # a leading zero: not a UID
        "studies/1.2.3/series/1.2.4/frames/1.2.5/w.dcm",
        "studies/1.2.3/series/1.2.4/instances/1.2.5/w/x.dcm",
        "cache/metadata/1.2.3/1.2.4/v.json.gz",
    ],
)
def test_other_keys_are_not_instance_objects(key: str) -> None:
    assert instance_object(key) is None


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"RECONCILE_GRACE_SECONDS": "60"}, "RECONCILE_GRACE_SECONDS must be at least 900"),
        ({"RECONCILE_MAX_OBJECTS": "0"}, "max_objects must be a positive number"),
        ({"RECONCILE_MAX_SCANNED_ITEMS": "many"}, "RECONCILE_MAX_SCANNED_ITEMS must be a whole number"),
    ],
)
def test_settings_refuse_a_grace_shorter_than_a_write_and_empty_budgets(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        ReconcileSettings.from_environ(environ)


def test_the_template_configures_the_function_with_valid_settings() -> None:
    environment = load_template().functions()["ReconcileFunction"].environment
    settings = ReconcileSettings.from_environ({k: str(v) for k, v in environment.items()})
    assert settings.grace == timedelta(hours=1)
