"""STOW-RS write path against moto: S3 first, then the index in one transaction; its
InstanceStored event comes from the table's stream (delivered by tests/streams.py).

Resources come from template.yaml through the local runtime's provisioner, so the table's
keys and the bucket's versioning are the deployed ones.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import boto3
import pytest

from dicomweb_core.config import DuplicatePolicy, Settings
from dicomweb_core.dicom.failures import FailureReason
from dicomweb_core.index import writer
from dicomweb_core.index.models import SeriesItem, StudyItem
from dicomweb_core.index.write_results import Prior, StoredObject
from dicomweb_core.index.writer import IndexWriter
from dicomweb_core.stow.service import StowService, store_response
from infra.datasets.generate import make_dataset, make_instance, new_uid, to_part10
from infra.local.provision import Stack
from tests.moto_stack import BASE_URL, provisioned, stow_service
from tests.streams import deliver_stream, settle


@dataclass
class Env:
    stack: Stack
    settings: Settings
    service: StowService
    s3: Any
    event_queue: str

    def with_policy(self, policy: DuplicatePolicy) -> StowService:
        settings = replace(self.settings, duplicate_policy=policy)
        return StowService(settings=settings, store=self.service.store, index=self.service.index)

    def events(self) -> list[dict[str, Any]]:
        """The events on the bus once the stream delivered what was committed."""
        deliver_stream(self.stack)
        sqs = boto3.client("sqs")
        found = []
        while True:
            messages = sqs.receive_message(QueueUrl=self.event_queue, MaxNumberOfMessages=10).get(
                "Messages", []
            )
            if not messages:
                return found
            for message in messages:
                found.append(json.loads(message["Body"]))
                sqs.delete_message(QueueUrl=self.event_queue, ReceiptHandle=message["ReceiptHandle"])


@pytest.fixture
def env(aws: None) -> Iterator[Env]:
    stack, settings = provisioned(base_url=BASE_URL)
    sqs, events = boto3.client("sqs"), boto3.client("events")
    queue = sqs.create_queue(QueueName="captured-events")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(
        Name="capture", EventBusName=settings.event_bus_name, EventPattern='{"source":["dicomweb"]}'
    )
    events.put_targets(
        Rule="capture", EventBusName=settings.event_bus_name, Targets=[{"Id": "q", "Arn": arn}]
    )
    service = stow_service(settings)
    yield Env(stack, settings, service, boto3.client("s3"), queue)


def counts(study: str) -> tuple[int, int, set[str]]:
    """The study's aggregates once AggregatesFunction has recounted them."""
    settle()
    item = StudyItem.get(*StudyItem.key(study), consistent_read=True)
    return int(item.instance_count), int(item.series_count), set(item.modalities or ())


def series_count(study: str, series: str) -> int:
    settle()
    return int(SeriesItem.get(*SeriesItem.key(study, series), consistent_read=True).instance_count)


def stored_bytes(env: Env, sop: str) -> bytes:
    stored = indexed_object(sop)
    return env.s3.get_object(Bucket=env.settings.bucket_name, Key=stored.key, VersionId=stored.version_id)[
        "Body"
    ].read()


def indexed_object(sop: str) -> StoredObject:
    existing = IndexWriter().find(sop)
    assert existing is not None, f"{sop} is not indexed"
    return existing.stored


def test_store_writes_s3_index_and_event(env: Env) -> None:
    # Given an instance with an executable-looking preamble
    ds = make_dataset(modality="MR")
    data = to_part10(ds, preamble=b"MZ\x90\x00 not a real program")
    # When it is stored
    outcome = env.service.store_all([memoryview(data)], study=None)
    # Then it is acknowledged, in S3 with the preamble zeroed, indexed once, and announced
    assert [s.sop_instance_uid for s in outcome.stored] == [ds.SOPInstanceUID]
    assert outcome.status == 200
    assert stored_bytes(env, ds.SOPInstanceUID) == bytes(128) + data[128:]
    assert counts(ds.StudyInstanceUID) == (1, 1, {"MR"})
    (event,) = env.events()
    assert event["detail-type"] == "InstanceStored"
    assert event["detail"]["sopInstanceUID"] == ds.SOPInstanceUID
    assert event["detail"]["modality"] == "MR"
    assert event["detail"]["size"] == len(data)


def test_aggregates_over_a_multi_series_study(env: Env) -> None:
    # Given a study with a CT series of 3 instances and an SR series of 1
    study, ct, sr = new_uid(), new_uid(), new_uid()
    payloads = [make_instance(study=study, series=ct, modality="CT") for _ in range(3)]
    payloads.append(make_instance(study=study, series=sr, modality="SR"))
    # When all are stored in one request
    outcome = env.service.store_all([memoryview(p) for p in payloads], study=study)
    # Then the study counts 4 instances in 2 series with both modalities
    assert len(outcome.stored) == 4
    assert counts(study) == (4, 2, {"CT", "SR"})
    assert series_count(study, ct) == 3
    assert series_count(study, sr) == 1


def test_identical_restore_is_idempotent(env: Env) -> None:
    # Given a stored instance
    ds = make_dataset()
    data = to_part10(ds)
    env.service.store_all([memoryview(data)], study=None)
    env.events()
    # When the very same bytes are stored again
    outcome = env.service.store_all([memoryview(data)], study=None)
    # Then it succeeds, counts do not move, and nothing new is announced: nothing was written
    assert outcome.status == 200 and not outcome.failures
    assert counts(ds.StudyInstanceUID) == (1, 1, {"CT"})
    assert env.events() == []


def test_different_object_with_same_uid_is_refused_and_original_kept(env: Env) -> None:
    # Given a stored instance
    original = make_dataset(PatientName="Original^Name")
    env.service.store_all([memoryview(to_part10(original))], study=None)
    # When a different object with the same SOP Instance UID arrives
    imposter = make_dataset(
        study=original.StudyInstanceUID,
        series=original.SeriesInstanceUID,
        sop=original.SOPInstanceUID,
        PatientName="Other^Name",
    )
    outcome = env.service.store_all([memoryview(to_part10(imposter))], study=None)
    # Then it fails with 0x0111 and the original bytes stay what the index points at
    assert outcome.status == 409
    (failure,) = outcome.failures
    assert failure.reason is FailureReason.DUPLICATE_SOP_INSTANCE
    assert "kept" in failure.message
    assert stored_bytes(env, original.SOPInstanceUID) == to_part10(original)
    assert counts(original.StudyInstanceUID)[0] == 1


def test_overwrite_policy_replaces_and_keeps_counts(env: Env) -> None:
    # Given the overwrite policy and a stored instance
    service = env.with_policy(DuplicatePolicy.OVERWRITE)
    original = make_dataset(ImageComments="original")
    service.store_all([memoryview(to_part10(original))], study=None)
    old_key = indexed_object(original.SOPInstanceUID).key
    # When a corrected object with the same UIDs arrives
    corrected = make_dataset(
        study=original.StudyInstanceUID,
        series=original.SeriesInstanceUID,
        sop=original.SOPInstanceUID,
        ImageComments="corrected",
    )
    outcome = service.store_all([memoryview(to_part10(corrected))], study=None)
    # Then the index points at the new bytes, counts are unchanged, and the old object is
    # noncurrent: recoverable until the lifecycle rule expires it
    assert outcome.status == 200
    assert stored_bytes(env, original.SOPInstanceUID) == to_part10(corrected)
    assert counts(original.StudyInstanceUID)[0] == 1
    listing = env.s3.list_object_versions(Bucket=env.settings.bucket_name, Prefix=old_key)
    assert [v["IsLatest"] for v in listing["Versions"]] == [False]
    assert [m["IsLatest"] for m in listing["DeleteMarkers"]] == [True]


def test_overwrite_policy_never_moves_an_instance_to_another_study(env: Env) -> None:
    service = env.with_policy(DuplicatePolicy.OVERWRITE)
    original = make_dataset()
    service.store_all([memoryview(to_part10(original))], study=None)
    moved = make_dataset(sop=original.SOPInstanceUID)
    outcome = service.store_all([memoryview(to_part10(moved))], study=None)
    (failure,) = outcome.failures
    assert failure.reason is FailureReason.DUPLICATE_SOP_INSTANCE
    assert "another study" in failure.message


def test_crash_between_s3_and_index_loses_nothing_and_counts_once(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the index transaction fails once, after the object reached S3
    ds = make_dataset()
    data = to_part10(ds)
    real = IndexWriter._transact_first_of_series
    calls = {"n": 0}

    def crash_once(self: IndexWriter, *args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("simulated crash before the index commit")
        real(self, *args, **kwargs)

    monkeypatch.setattr(IndexWriter, "_transact_first_of_series", crash_once)
    # When the client stores, gets a failure, and retries
    first = env.service.store_all([memoryview(data)], study=None)
    assert first.failures[0].reason is FailureReason.PROCESSING_FAILURE
    assert "retry" in first.failures[0].message
    assert env.service.index.find(ds.SOPInstanceUID) is None
    second = env.service.store_all([memoryview(data)], study=None)
    # Then the retry stores it exactly once
    assert second.status == 200
    assert counts(ds.StudyInstanceUID) == (1, 1, {"CT"})
    assert stored_bytes(env, ds.SOPInstanceUID) == data


def test_crash_after_commit_is_repaired_by_the_retry(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the first request fails right after the index committed (its answer is lost)
    ds = make_dataset()
    data = to_part10(ds)
    real_add = IndexWriter.add

    def commit_then_fail(self: IndexWriter, *args: Any, **kwargs: Any) -> None:
        real_add(self, *args, **kwargs)
        raise ConnectionError("simulated failure after commit")

    monkeypatch.setattr(IndexWriter, "add", commit_then_fail)
    env.service.store_all([memoryview(data)], study=None)
    monkeypatch.undo()
    # When the client retries the same bytes
    outcome = env.service.store_all([memoryview(data)], study=None)
    # Then it succeeds without double counting, and the commit's event goes out once
    assert outcome.status == 200
    assert counts(ds.StudyInstanceUID) == (1, 1, {"CT"})
    assert [e["detail"]["sopInstanceUID"] for e in env.events()] == [ds.SOPInstanceUID]


def test_stale_existence_read_is_retried_not_double_counted(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a series created by a concurrent request after our existence check
    study, series = new_uid(), new_uid()
    env.service.store_all([memoryview(make_instance(study=study, series=series))], study=None)
    real_context = writer._context
    stale = {"left": 1}  # the first read is stale: the study and series are "not there yet"

    def stale_context(instance: Any, items: Any, deletions: int, **flags: bool) -> Any:
        context = real_context(instance, items, deletions, **flags)
        if stale["left"] > 0:
            stale["left"] -= 1
            return replace(context, study_exists=False, series_exists=False)
        return context

    monkeypatch.setattr(writer, "_context", stale_context)
    # When the second instance of that series is stored
    outcome = env.service.store_all([memoryview(make_instance(study=study, series=series))], study=None)
    # Then the cancelled transaction is retried and the aggregates are exact
    assert stale["left"] == 0
    assert outcome.status == 200
    assert counts(study) == (2, 1, {"CT"})
    assert series_count(study, series) == 2


def test_losing_a_duplicate_race_discards_the_orphan_version(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a stored instance, and a lookup that does not see it yet (a concurrent request)
    original = make_dataset()
    env.service.store_all([memoryview(to_part10(original))], study=None)
    imposter = make_dataset(
        study=original.StudyInstanceUID,
        series=original.SeriesInstanceUID,
        sop=original.SOPInstanceUID,
        PatientName="Other^Name",
    )
    real_prior = IndexWriter.prior
    seen = {"n": 0}

    def prior_late(self: IndexWriter, instance: Any) -> Prior:
        seen["n"] += 1
        prior = real_prior(self, instance)
        return prior if seen["n"] > 1 else replace(prior, existing=None)

    monkeypatch.setattr(IndexWriter, "prior", prior_late)
    # When the different object is stored
    outcome = env.service.store_all([memoryview(to_part10(imposter))], study=None)
    # Then it is refused, the original is what reads back, and no orphan version remains
    assert outcome.failures[0].reason is FailureReason.DUPLICATE_SOP_INSTANCE
    assert stored_bytes(env, original.SOPInstanceUID) == to_part10(original)
    key = indexed_object(original.SOPInstanceUID).key
    versions = env.s3.list_object_versions(Bucket=env.settings.bucket_name, Prefix=key)["Versions"]
    assert len(versions) == 1


def test_concurrent_stores_of_one_new_study_count_exactly(env: Env) -> None:
    # Given eight instances of one new study, in a CT and a PT series
    study, ct, pt = new_uid(), new_uid(), new_uid()
    payloads = [make_instance(study=study, series=s, modality=m) for s, m in [(ct, "CT"), (pt, "PT")] * 4]
    errors: list[BaseException] = []

    def store(data: bytes) -> None:
        try:
            outcome = env.service.store_all([memoryview(data)], study=study)
            assert outcome.status == 200, outcome.failures
        except BaseException as exc:
            errors.append(exc)

    # When they are stored from eight threads at once
    threads = [threading.Thread(target=store, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Then every store succeeded and the aggregates count each instance once
    assert not errors
    assert counts(study) == (8, 2, {"CT", "PT"})
    assert series_count(study, ct) == series_count(study, pt) == 4


def test_bad_instances_fail_alone(env: Env) -> None:
    # Given a request with a valid instance, a non-DICOM part and a study mismatch
    study = new_uid()
    good = make_dataset(study=study)
    other_study = make_dataset()
    payloads = [to_part10(good), b"definitely not DICOM", to_part10(other_study)]
    # When it is stored to /studies/{study}
    outcome = env.service.store_all([memoryview(p) for p in payloads], study=study)
    response = store_response(outcome, base_url=BASE_URL, study=study)
    # Then the good one is stored, the others fail with their own reasons: 202
    assert outcome.status == 202
    assert response["00081190"]["Value"] == [f"{BASE_URL}/studies/{study}"]
    (referenced,) = response["00081199"]["Value"]
    assert referenced["00081155"]["Value"] == [good.SOPInstanceUID]
    assert referenced["00081190"]["Value"] == [
        f"{BASE_URL}/studies/{study}/series/{good.SeriesInstanceUID}/instances/{good.SOPInstanceUID}"
    ]
    (failed,) = response["00081198"]["Value"]
    assert failed["00081155"]["Value"] == [other_study.SOPInstanceUID]
    assert failed["00081197"]["Value"] == [FailureReason.STUDY_UID_MISMATCH]
    (other,) = response["0008119A"]["Value"]
    assert other["00081197"]["Value"] == [FailureReason.CANNOT_UNDERSTAND]
    assert counts(study)[0] == 1
