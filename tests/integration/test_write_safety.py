"""Fault injection and races on every write path (docs/write-safety.md).

Each test disturbs one request at every AWS call it makes, in turn: the process dies
before the call, the call takes effect but its answer is lost, the call is refused, or
another request (a racing writer) runs to completion there. After each run the client does
what a client does (retries once what was not acknowledged) and :func:`check` asserts the
invariants over the whole store:

- every acknowledged instance reads back byte-exact at the version the index names, that
  version is current, and its metadata document belongs to exactly those bytes;
- what was refused left nothing current;
- study and series counts are exact;
- nothing of a deleted study survives, except recoverable versions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from pydicom.dataset import Dataset
from pynamodb.exceptions import TransactWriteError

from dicomweb_core.config import DuplicatePolicy, Settings
from dicomweb_core.delete.service import DeleteService
from dicomweb_core.dicom.failures import FailureReason
from dicomweb_core.errors import Gone
from dicomweb_core.events import EventPublisher
from dicomweb_core.hooks.series_metadata import SeriesMetadataBuilder
from dicomweb_core.index import writer
from dicomweb_core.index.access import Index
from dicomweb_core.index.models import IndexItem, InstanceItem, SeriesItem, SopItem, study_pk
from dicomweb_core.index.writer import CLAIM_GRACE, IndexWriter
from dicomweb_core.qido.attributes import Level
from dicomweb_core.qido.query import parse_query
from dicomweb_core.qido.search import search
from dicomweb_core.storage import ObjectReader, S3InstanceStore
from dicomweb_core.stow.service import StoreOutcome
from dicomweb_core.wado.prebuilt import assemble, cached
from infra.datasets.generate import make_dataset, new_uid, to_part10
from tests.faults import FAULTS, Crash, Faults
from tests.moto_stack import provisioned, stow_service
from tests.write_invariants import check


@dataclass
class Env:
    settings: Settings
    s3: Any

    @property
    def bucket(self) -> str:
        return self.settings.bucket_name

    def stow(self, ds: Dataset, *, policy: DuplicatePolicy = DuplicatePolicy.REJECT) -> StoreOutcome | None:
        """One STOW request in a fresh function (None: the process died, no answer)."""
        service = stow_service(replace(self.settings, duplicate_policy=policy))
        try:
            return service.store_all([memoryview(to_part10(ds))], study=None)
        except Crash:
            return None

    def stow_request(self, *datasets: Dataset) -> StoreOutcome | None:
        """One STOW request of several instances (None: the process died, no answer)."""
        service = stow_service(self.settings)
        try:
            return service.store_all([memoryview(to_part10(ds)) for ds in datasets], study=None)
        except Crash:
            return None

    def delete(self, study: str) -> str:
        """One DELETE request: ``deleted``, ``gone`` (410), ``error`` (a 5xx) or ``died``."""
        service = DeleteService(bucket=self.bucket, events=EventPublisher(self.settings.event_bus_name))
        try:
            service.delete_study(study)
        except Gone:
            return "gone"
        except Crash:
            return "died"
        except Exception:
            return "error"
        return "deleted"

    def calls(self, faults: Faults, request: Callable[[], Any]) -> list[str]:
        """The AWS calls ``request`` makes, undisturbed."""
        with faults.armed():
            request()
        return list(faults.calls)


@pytest.fixture
def env(aws: None) -> Iterator[Env]:
    _, settings = provisioned()
    yield Env(settings, boto3.client("s3"))


def stored(outcome: StoreOutcome | None) -> bool:
    return outcome is not None and outcome.status == 200


def sibling(ds: Dataset, **attributes: Any) -> Dataset:
    """Another instance of the same study and series."""
    return make_dataset(study=ds.StudyInstanceUID, series=ds.SeriesInstanceUID, **attributes)


def same_uids(ds: Dataset, **attributes: Any) -> Dataset:
    """Other content under the same UIDs."""
    return sibling(ds, sop=ds.SOPInstanceUID, **attributes)


# ---------------------------------------------------------------- lost answers and crashes


def test_a_lost_commit_response_keeps_the_instance_it_indexed(env: Env, faults: Faults) -> None:
    # Given the index transaction commits but its answer is lost after botocore's retries
    ds = make_dataset()
    shape = env.calls(faults, lambda: env.stow(make_dataset()))
    commit = shape.index("TransactWriteItems")
    # When the instance is stored
    with faults.armed("lose_response", at=commit):
        outcome = env.stow(ds)
    # Then it is acknowledged, and what the index points at is there (not discarded)
    assert stored(outcome)
    check(env.s3, env.bucket, acknowledged={ds.SOPInstanceUID: [to_part10(ds)]})
    # And the same bytes sent again are acknowledged and still readable
    assert stored(env.stow(ds))
    check(env.s3, env.bucket, acknowledged={ds.SOPInstanceUID: [to_part10(ds)]})


def test_a_retried_commit_carries_the_same_request_token(env: Env, faults: Faults) -> None:
    # Given the first commit's answer is lost
    shape = env.calls(faults, lambda: env.stow(make_dataset()))
    commit = shape.index("TransactWriteItems")
    # When the store retries it
    with faults.armed("lose_response", at=commit):
        env.stow(make_dataset())
    tokens = [
        p["ClientRequestToken"]
        for c, p in zip(faults.calls, faults.parameters, strict=True)
        if c == "TransactWriteItems"
    ]
    # Then DynamoDB sees one idempotent request twice, not two requests
    assert len(tokens) == 2
    assert tokens[0] == tokens[1]


@pytest.mark.slow  # sweeps every AWS call of the request: minutes against moto
@pytest.mark.parametrize("policy", [DuplicatePolicy.REJECT, DuplicatePolicy.OVERWRITE])
def test_a_new_instance_survives_any_fault_at_any_step(
    env: Env, faults: Faults, policy: DuplicatePolicy
) -> None:
    first = make_dataset()
    assert stored(env.stow(first))
    acknowledged = {first.SOPInstanceUID: [to_part10(first)]}
    shape = env.calls(faults, lambda: env.stow(sibling(first)))
    leaks = False
    for fault in FAULTS:
        for step, operation in enumerate(shape):
            # Given a fault at one step of storing a new instance into the study
            ds = sibling(first)
            with faults.armed(fault, at=step):
                outcome = env.stow(ds, policy=policy)
            leaks |= outcome is None
            # When the client retries what was not acknowledged
            if not stored(outcome):
                assert stored(env.stow(ds, policy=policy)), (fault, step, operation)
            acknowledged[ds.SOPInstanceUID] = [to_part10(ds)]
            # Then every acknowledged instance is intact and the counts exact
            check(env.s3, env.bucket, acknowledged=acknowledged, leaks=leaks)


@pytest.mark.slow  # sweeps every AWS call of the request: minutes against moto
def test_an_overwrite_survives_any_fault_at_any_step(env: Env, faults: Faults) -> None:
    policy = DuplicatePolicy.OVERWRITE
    shape = overwrite_shape(env, faults)
    retire = shape.index("TransactWriteItems") + 1  # then the replaced objects are retired
    leaks = False
    acknowledged: dict[str, list[bytes]] = {}
    for fault in FAULTS:
        for step, operation in enumerate(shape):
            # Given a stored instance, and a fault at one step of overwriting it
            original = make_dataset(ImageComments="original")
            assert stored(env.stow(original, policy=policy))
            corrected = same_uids(original, ImageComments="corrected")
            with faults.armed(fault, at=step):
                outcome = env.stow(corrected, policy=policy)
            # (retiring what was replaced is best effort: if it fails, it stays unreferenced)
            leaks |= outcome is None or step >= retire
            # Then an answered failure left the original in place, metadata included
            if outcome is not None and not stored(outcome):
                kept = {original.SOPInstanceUID: [to_part10(original)]}
                check(env.s3, env.bucket, acknowledged=acknowledged | kept, leaks=leaks)
            # And after the client's retry the correction is what reads back
            if not stored(outcome):
                assert stored(env.stow(corrected, policy=policy)), (fault, step, operation)
            acknowledged[original.SOPInstanceUID] = [to_part10(corrected)]
            check(env.s3, env.bucket, acknowledged=acknowledged, leaks=leaks)


def overwrite_shape(env: Env, faults: Faults) -> list[str]:
    """The AWS calls of an overwrite of a stored instance."""
    original = make_dataset(ImageComments="original")
    assert stored(env.stow(original, policy=DuplicatePolicy.OVERWRITE))
    corrected = same_uids(original, ImageComments="corrected")
    return env.calls(faults, lambda: env.stow(corrected, policy=DuplicatePolicy.OVERWRITE))


@pytest.mark.slow  # sweeps every AWS call of the request: minutes against moto
def test_a_delete_finishes_after_any_fault_at_any_step(env: Env, faults: Faults) -> None:
    def study_of_two() -> Dataset:
        first = make_dataset()
        assert stored(env.stow(first)) and stored(env.stow(sibling(first)))
        return first

    sample = study_of_two()
    shape = env.calls(faults, lambda: env.delete(sample.StudyInstanceUID))
    deleted = {sample.StudyInstanceUID}
    for fault in FAULTS:
        for step, operation in enumerate(shape):
            # Given a fault at one step of deleting a study
            study = study_of_two().StudyInstanceUID
            with faults.armed(fault, at=step):
                answer = env.delete(study)
            # When the client repeats the DELETE until it is answered
            if answer not in ("deleted", "gone"):
                assert env.delete(study) in ("deleted", "gone"), (fault, step, operation)
            deleted.add(study)
            # Then nothing of the study is left but recoverable versions
            check(env.s3, env.bucket, acknowledged={}, deleted=deleted, leaks=True)


# ---------------------------------------------------------------- STOW racing DELETE


@pytest.mark.slow  # sweeps every AWS call of the request: minutes against moto
def test_a_delete_racing_a_stow_at_any_step_never_leaves_half_of_each(env: Env, faults: Faults) -> None:
    sample = _stored_study(env)
    shape = env.calls(faults, lambda: env.stow(sibling(sample)))
    for step, operation in enumerate(shape):
        for when in ("run_before", "run_after"):
            # Given a study, and a STOW into it that a DELETE of the study overtakes here
            first = _stored_study(env)
            late = sibling(first)
            answers: list[str] = []
            delete = lambda s=first.StudyInstanceUID, a=answers: a.append(env.delete(s))  # noqa: E731
            with faults.armed(when, at=step, other=delete):
                outcome = env.stow(late)
            assert answers == ["deleted"]
            # Then either the whole STOW or the whole DELETE came last
            _one_came_last(env, late, outcome, (when, step, operation))


@pytest.mark.slow  # sweeps every AWS call of the request: minutes against moto
def test_a_stow_racing_a_delete_at_any_step_never_leaves_half_of_each(env: Env, faults: Faults) -> None:
    sample = _stored_study(env)
    shape = env.calls(faults, lambda: env.delete(sample.StudyInstanceUID))
    for step, operation in enumerate(shape):
        # Given a study, and a STOW into it that runs at this step of the study's DELETE
        first = _stored_study(env)
        late = sibling(first)
        outcomes: list[StoreOutcome | None] = []
        stow = lambda d=late, o=outcomes: o.append(env.stow(d))  # noqa: E731
        with faults.armed("run_before", at=step, other=stow):
            assert env.delete(first.StudyInstanceUID) == "deleted"
        # Then either the whole STOW or the whole DELETE came last
        _one_came_last(env, late, outcomes[0], (step, operation))


@pytest.mark.slow  # sweeps every AWS call of the request: minutes against moto
def test_a_delete_racing_a_request_of_several_instances_never_leaves_half_of_each(
    env: Env, faults: Faults
) -> None:
    sample = _stored_study(env)
    shape = env.calls(faults, lambda: env.stow_request(*(sibling(sample) for _ in range(3))))
    # The request reads its study's DELETE fence once, after its last commit
    assert shape.count("GetItem") == 1 and shape[-1] == "GetItem"
    for step, operation in enumerate(shape):
        # Given a study, and a request of three more instances that a DELETE overtakes here
        first = _stored_study(env)
        batch = [sibling(first) for _ in range(3)]
        answers: list[str] = []
        delete = lambda s=first.StudyInstanceUID, a=answers: a.append(env.delete(s))  # noqa: E731
        with faults.armed("run_before", at=step, other=delete):
            outcome = env.stow_request(*batch)
        assert answers == ["deleted"] and outcome is not None
        label = (step, operation)
        # Then each instance is acknowledged and in the study, or refused as deleted and
        # gone: the instances the DELETE overtook went with the study or were refused, and
        # those stored after it are the whole study created anew
        acknowledged = {s.sop_instance_uid for s in outcome.stored}
        for failure in outcome.failures:
            assert failure.reason is FailureReason.PROCESSING_FAILURE and "deleted" in failure.message, label
        assert len(acknowledged) + len(outcome.failures) == 3, label
        study = first.StudyInstanceUID
        assert _sops_in(study) == acknowledged, label
        if acknowledged:
            contents = {
                ds.SOPInstanceUID: [to_part10(ds)] for ds in batch if ds.SOPInstanceUID in acknowledged
            }
            check(env.s3, env.bucket, acknowledged=contents)
        else:
            check(env.s3, env.bucket, acknowledged={}, deleted={study})
        _empty(env)


def _one_came_last(env: Env, late: Dataset, outcome: StoreOutcome | None, label: Any) -> None:
    """Never half of each: the study holds exactly the STOW's instance, with its objects
    current (the STOW came last); or nothing of the study survives (the DELETE came last,
    and a STOW it overtook was refused with a reason that says so)."""
    study = late.StudyInstanceUID
    if _sops_in(study):
        assert stored(outcome), label
        assert _sops_in(study) == {late.SOPInstanceUID}, label
        check(env.s3, env.bucket, acknowledged={late.SOPInstanceUID: [to_part10(late)]})
    else:
        if not stored(outcome):
            assert outcome is not None
            (failure,) = outcome.failures
            assert failure.reason is FailureReason.PROCESSING_FAILURE, label
            assert "deleted" in failure.message, label
        check(env.s3, env.bucket, acknowledged={}, deleted={study})
    _empty(env)


def _stored_study(env: Env) -> Dataset:
    first = make_dataset()
    assert stored(env.stow(first))
    return first


def _sops_in(study: str) -> set[str]:
    return {
        i.sop_uid
        for i in IndexItem.query(study_pk(study), consistent_read=True)
        if isinstance(i, InstanceItem)
    }


def _empty(env: Env) -> None:
    """Delete what a race left, so that the next case starts from an empty store."""
    for item in SopItem.scan():
        if isinstance(item, SopItem):
            env.delete(item.study_uid)


# ---------------------------------------------------------------- SOP claims


def test_a_claim_left_by_a_dead_write_holds_the_uid_for_its_grace_then_is_taken_over(
    env: Env, faults: Faults, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a write into a series that died between its SOP claim and its commit
    first = _stored_study(env)
    shape = env.calls(faults, lambda: env.stow(sibling(first)))
    claim = shape.index("PutItem")
    ds = sibling(first)
    with faults.armed("crash_before", at=claim + 1):
        assert env.stow(ds) is None
    # When another instance with that SOP Instance UID is sent into another series at once
    elsewhere = make_dataset(study=first.StudyInstanceUID, sop=ds.SOPInstanceUID, PatientName="Other")
    outcome = env.stow(elsewhere)
    # Then it is refused as being stored there, and nothing of it is kept
    assert outcome is not None and [f.reason for f in outcome.failures] == [
        FailureReason.DUPLICATE_SOP_INSTANCE
    ]
    assert "being stored in another study or series" in outcome.failures[0].message
    assert IndexWriter().find(ds.SOPInstanceUID) is None
    # When it is sent again once the claim is older than any write can run
    later = datetime.now(UTC) + CLAIM_GRACE + timedelta(minutes=1)
    monkeypatch.setattr(writer, "_now", lambda: later)
    # Then it takes the claim over and is stored, once, in its own series
    assert stored(env.stow(elsewhere))
    found = IndexWriter().find(ds.SOPInstanceUID)
    assert found is not None and found.series_uid == elsewhere.SeriesInstanceUID
    acknowledged = {first.SOPInstanceUID: [to_part10(first)], ds.SOPInstanceUID: [to_part10(elsewhere)]}
    check(env.s3, env.bucket, acknowledged=acknowledged, leaks=True)
    # And the dead write's retry into its own series is now a duplicate, refused
    retried = env.stow(ds)
    assert retried is not None and [f.reason for f in retried.failures] == [
        FailureReason.DUPLICATE_SOP_INSTANCE
    ]
    check(env.s3, env.bucket, acknowledged=acknowledged, leaks=True)


def test_a_store_into_an_existing_series_writes_no_transaction(env: Env, faults: Faults) -> None:
    # Given a stored series
    first = _stored_study(env)
    # When another instance of it is stored
    shape = env.calls(faults, lambda: env.stow(sibling(first)))
    # Then it reads once, puts its objects, claims its UID and commits with two PutItems
    # (no transaction, which DynamoDB bills twice), and reads the DELETE fence once
    assert shape == ["BatchGetItem", "PutObject", "PutObject", "PutItem", "PutItem", "GetItem"]
    # And a request of several reads what the index holds for all of them at once, writes
    # them (several at once, so in any order) and reads the fence once for all of them
    several = env.calls(faults, lambda: env.stow_request(sibling(first), sibling(first), sibling(first)))
    assert (several[0], several[-1]) == ("BatchGetItem", "GetItem")
    assert sorted(several[1:-1]) == ["PutItem"] * 6 + ["PutObject"] * 6
    # And in a request that creates a study, only its first instance commits in a
    # transaction (the study and series items with it): the others know they exist
    new = make_dataset()
    request = [new, sibling(new), sibling(new)]
    creating = env.calls(faults, lambda: env.stow_request(*request))
    assert creating.count("BatchGetItem") == 1 and creating.count("TransactWriteItems") == 1
    assert creating[-1] == "GetItem" and creating.count("GetItem") == 1
    check(env.s3, env.bucket, acknowledged={ds.SOPInstanceUID: [to_part10(ds)] for ds in request})
    # And a request bringing two new series of an existing study, interleaved: each series is
    # created once (its first instance goes alone), the rest written several at once
    a, b = (make_dataset(study=first.StudyInstanceUID, series=new_uid()) for _ in range(2))
    mixed = [a, b, sibling(a), sibling(b), sibling(a), sibling(b)]
    creating = env.calls(faults, lambda: env.stow_request(*mixed))
    assert creating.count("TransactWriteItems") == 2 and creating.count("PutItem") == 6 + 4
    check(env.s3, env.bucket, acknowledged={ds.SOPInstanceUID: [to_part10(ds)] for ds in mixed}, leaks=True)


# ---------------------------------------------------------------- duplicates and overwrites


def test_a_losing_duplicate_leaves_the_kept_instance_and_its_metadata_alone(env: Env, faults: Faults) -> None:
    # Given two different objects with one SOP Instance UID, the second's lookup done before
    # the first was stored (a concurrent request)
    kept = make_dataset(PatientName="Right^Patient")
    imposter = same_uids(kept, PatientName="Wrong^Patient")
    answers: list[StoreOutcome | None] = []
    with faults.armed("run_after", at=0, other=lambda: answers.append(env.stow(kept))):
        outcome = env.stow(imposter)
    # Then the second is refused as a duplicate, and the first reads back whole
    assert stored(answers[0])
    assert outcome is not None
    assert [f.reason for f in outcome.failures] == [FailureReason.DUPLICATE_SOP_INSTANCE]
    check(env.s3, env.bucket, acknowledged={kept.SOPInstanceUID: [to_part10(kept)]})


def test_a_failed_overwrite_keeps_the_original_current(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a stored instance, and an index that keeps refusing the overwrite's transaction
    original = make_dataset(ImageComments="original")
    assert stored(env.stow(original, policy=DuplicatePolicy.OVERWRITE))
    corrected = same_uids(original, ImageComments="corrected")

    def throttled(*args: Any, **kwargs: Any) -> None:
        error = {"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}
        raise TransactWriteError(
            "Failed to write transaction items", ClientError(error, "TransactWriteItems")
        )

    monkeypatch.setattr(IndexWriter, "_transact_replace", throttled)
    outcome = env.stow(corrected, policy=DuplicatePolicy.OVERWRITE)
    # Then the overwrite is refused, and the original, its metadata and its currency remain
    assert outcome is not None
    assert [f.reason for f in outcome.failures] == [FailureReason.PROCESSING_FAILURE]
    check(env.s3, env.bucket, acknowledged={original.SOPInstanceUID: [to_part10(original)]})


@pytest.mark.slow  # sweeps every AWS call of the request: minutes against moto
@pytest.mark.parametrize("when", ["run_before", "run_after"])
def test_of_two_racing_overwrites_exactly_the_winner_is_current(env: Env, faults: Faults, when: str) -> None:
    policy = DuplicatePolicy.OVERWRITE
    shape = overwrite_shape(env, faults)
    for step, operation in enumerate(shape):
        # Given a stored instance, and overwrite B running at one step of overwrite A
        original = make_dataset(ImageComments="original")
        assert stored(env.stow(original, policy=policy))
        a = same_uids(original, ImageComments="A")
        b = same_uids(original, ImageComments="B")
        answers: list[StoreOutcome | None] = []
        overwrite_b = lambda d=b, o=answers: o.append(env.stow(d, policy=policy))  # noqa: E731
        with faults.armed(when, at=step, other=overwrite_b):
            outcome_a = env.stow(a, policy=policy)
        (outcome_b,) = answers
        # Then at least one is acknowledged, a refused one left nothing, and what the index
        # names is an acknowledged content, current, with its own metadata
        winners = [to_part10(d) for d, o in ((a, outcome_a), (b, outcome_b)) if stored(o)]
        assert winners, (when, step, operation)
        check(env.s3, env.bucket, acknowledged={original.SOPInstanceUID: winners})


def test_an_overwrite_that_changes_patient_or_study_attributes_is_refused(env: Env) -> None:
    # Given an instance stored under the wrong patient
    policy = DuplicatePolicy.OVERWRITE
    original = make_dataset(PatientName="Old^Name", PatientID="WRONG-ID")
    assert stored(env.stow(original, policy=policy))
    # When a corrected object changes the patient
    corrected = same_uids(original, PatientName="Corrected^Name", PatientID="RIGHT-ID")
    outcome = env.stow(corrected, policy=policy)
    # Then it is refused with a reason that says what to do, and the study stays consistent
    assert outcome is not None
    (failure,) = outcome.failures
    assert failure.reason is FailureReason.DUPLICATE_SOP_INSTANCE
    assert "delete the study and store it again" in failure.message
    check(env.s3, env.bucket, acknowledged={original.SOPInstanceUID: [to_part10(original)]})
    assert len(search(parse_query(Level.STUDY, "PatientID=WRONG-ID")).matches) == 1
    assert not search(parse_query(Level.STUDY, "PatientID=RIGHT-ID")).matches
    # And an overwrite of the instance's own content still goes through
    own_content = same_uids(original, PatientName="Old^Name", PatientID="WRONG-ID", ImageComments="x")
    assert stored(env.stow(own_content, policy=policy))


def test_racing_overwrites_from_threads_leave_one_acknowledged_current_version(env: Env) -> None:
    import threading

    policy = DuplicatePolicy.OVERWRITE
    original = make_dataset(ImageComments="original")
    assert stored(env.stow(original, policy=policy))
    variants = [same_uids(original, ImageComments=f"variant {n}") for n in range(6)]
    outcomes: dict[int, StoreOutcome | None] = {}

    def overwrite(n: int) -> None:
        outcomes[n] = env.stow(variants[n], policy=policy)

    # When six overwrites of one instance run at once
    threads = [threading.Thread(target=overwrite, args=(n,)) for n in range(len(variants))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Then the index names one acknowledged variant, current, and refused ones left nothing
    winners = [to_part10(variants[n]) for n, o in outcomes.items() if stored(o)]
    assert winners
    check(env.s3, env.bucket, acknowledged={original.SOPInstanceUID: winners})


# ---------------------------------------------------------------- the hooks' writes


@pytest.mark.slow  # sweeps every AWS call of the request: minutes against moto
def test_the_series_metadata_hook_survives_any_fault_at_any_step(env: Env, faults: Faults) -> None:
    reader = ObjectReader(env.bucket)
    builder = SeriesMetadataBuilder(reader, S3InstanceStore(env.bucket))

    def stable_series() -> tuple[str, str, str]:
        first = make_dataset()
        assert stored(env.stow(first)) and stored(env.stow(sibling(first)))
        study, series = first.StudyInstanceUID, first.SeriesInstanceUID
        return study, series, SeriesItem.get(*SeriesItem.key(study, series), consistent_read=True).version

    sample = stable_series()
    shape = env.calls(faults, lambda: builder.build(*sample))
    for fault in FAULTS:
        for step, operation in enumerate(shape):
            study, series, version = stable_series()
            # Given a fault at one step of building a stable series' metadata document
            try:
                with faults.armed(fault, at=step):
                    builder.build(study, series, version)
            except (Crash, Exception):
                pass
            # When SeriesStable is delivered again, Then the document is there exactly once
            # recorded, and it is what the instances' own documents say
            assert builder.build(study, series, version) in ("built", "exists"), (fault, step, operation)
            item = SeriesItem.get(*SeriesItem.key(study, series), consistent_read=True)
            assert item.metadata_version == version
            assert cached(reader, item) == assemble(reader, Index(), study, series)
