"""Series/study stability against moto: InstanceStored → StabilityQueue (delayed) → SeriesStable/StudyStable.

Resources come from template.yaml with a stable age of 1 s for the queue delay, so the
template's StabilityRule and the queue's DelaySeconds are exercised as deployed. The
service's own stable age is 60 s and its clock is moved forward explicitly, so each test
decides exactly how much quiet time has passed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Any

import boto3
import pytest
from pydicom.dataset import Dataset

from dicomweb_core import config
from dicomweb_core.events import EventPublisher
from dicomweb_core.hooks.stability import StabilityService
from dicomweb_core.index.models import SeriesItem
from dicomweb_core.stow.service import StowService
from infra.datasets.generate import make_dataset, new_uid, to_part10
from infra.local.provision import Stack
from infra.samtemplate import load_template
from tests.lambda_harness import LambdaContext, load_handler, sqs_record
from tests.moto_stack import provisioned, stow_service
from tests.streams import deliver_stream

STABLE_AGE = timedelta(seconds=60)
QUEUE_DELAY_S = 1


class FailingPublisher(EventPublisher):
    def publish(self, detail_type: str, details: Any) -> None:
        raise RuntimeError("EventBridge is unavailable")


@dataclass
class StabilityEnv:
    stack: Stack
    stow: StowService
    sqs: Any
    announcements_queue: str
    offset: timedelta = timedelta(0)

    def service(self, publisher: EventPublisher | None = None) -> StabilityService:
        return StabilityService(
            stable_age=STABLE_AGE,
            events=publisher or EventPublisher(self.stack.physical_ids["EventBus"]),
            clock=lambda: datetime.now(UTC) + self.offset,
        )

    def store(self, *datasets: Dataset) -> None:
        """Store, and let the stream announce the commits (InstanceStored into StabilityQueue)."""
        outcome = self.stow.store_all([memoryview(to_part10(ds)) for ds in datasets], study=None)
        assert not outcome.failures, outcome.failures
        deliver_stream(self.stack)

    def delayed_events(self) -> list[dict[str, Any]]:
        """What StabilityQueue delivers once the delay has passed: every InstanceStored."""
        time.sleep(QUEUE_DELAY_S + 0.1)
        return _drain(self.sqs, self.stack.physical_ids["StabilityQueue"])

    def announcements(self) -> list[tuple[str, dict[str, Any]]]:
        return [(e["detail-type"], e["detail"]) for e in _drain(self.sqs, self.announcements_queue)]


def _drain(sqs: Any, queue: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    while messages := sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", []):
        for message in messages:
            found.append(json.loads(message["Body"]))
            sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
    return found


@pytest.fixture
def env(aws: None) -> Iterator[StabilityEnv]:
    stack, settings = provisioned(parameters={"StableAgeSeconds": str(QUEUE_DELAY_S)})
    sqs = boto3.client("sqs")
    events = boto3.client("events")
    # A test-only rule on the stack's bus that records every announcement.
    queue_url = sqs.create_queue(QueueName="announcements")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    bus = stack.physical_ids["EventBus"]
    events.put_rule(
        Name="announcements",
        EventBusName=bus,
        EventPattern=json.dumps({"detail-type": ["SeriesStable", "StudyStable"]}),
    )
    events.put_targets(Rule="announcements", EventBusName=bus, Targets=[{"Id": "q", "Arn": queue_arn}])
    yield StabilityEnv(stack, stow_service(settings), sqs, queue_url)


def ct_series(study: str, count: int, *, series: str | None = None, number: int = 1) -> list[Dataset]:
    series = series or new_uid()
    return [
        make_dataset(
            study=study, series=series, InstanceNumber=n + 1, SeriesNumber=number, BodyPartExamined="CHEST"
        )
        for n in range(count)
    ]


def test_template_delays_instance_stored_by_the_stable_age() -> None:
    queue = load_template().resources["StabilityQueue"]["Properties"]
    assert queue["DelaySeconds"] == {"Ref": "StableAgeSeconds"}
    rule = load_template().resources["StabilityRule"]["Properties"]
    assert rule["EventPattern"] == {"source": ["dicomweb"], "detail-type": ["InstanceStored"]}


def test_the_queue_holds_messages_for_the_stable_age(env: StabilityEnv) -> None:
    # Given instances just stored
    env.store(*ct_series(new_uid(), 2))
    queue = env.stack.physical_ids["StabilityQueue"]
    # Then their InstanceStored events wait in the queue (delayed), and come out after the delay
    attributes = env.sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["All"])["Attributes"]
    assert (
        int(attributes["ApproximateNumberOfMessagesDelayed"]) + int(attributes["ApproximateNumberOfMessages"])
        == 2
    )
    assert len(env.delayed_events()) == 2


def test_a_quiet_series_is_announced_once_with_its_study(env: StabilityEnv) -> None:
    # Given a three-instance CT series whose InstanceStored events came out of the delayed queue
    study = new_uid()
    datasets = ct_series(study, 3)
    env.store(*datasets)
    delayed = env.delayed_events()
    assert len(delayed) == 3
    # When the stable age has passed and every message is handled (as the function would)
    env.offset = STABLE_AGE + timedelta(seconds=1)
    service = env.service()
    outcomes = [service.observe(e).outcome for e in delayed]
    # Then exactly one message announced it; the others found it announced, or (when the
    # stores spread over more than a second, as on a loaded machine) deferred to the later
    # message of the series' last change
    assert outcomes.count("stable") == 1, outcomes
    assert set(outcomes) <= {"stable", "announced", "superseded"}, outcomes
    announcements = env.announcements()
    assert [kind for kind, _ in announcements] == ["SeriesStable", "StudyStable"]
    series_detail = announcements[0][1]
    assert series_detail["studyInstanceUID"] == study
    assert series_detail["seriesInstanceUID"] == datasets[0].SeriesInstanceUID
    assert series_detail["modality"] == "CT"
    assert series_detail["bodyPartExamined"] == "CHEST"
    assert series_detail["numberOfSeriesRelatedInstances"] == 3
    assert series_detail["sopClassUID"] == datasets[0].SOPClassUID
    item = SeriesItem.get(*SeriesItem.key(study, datasets[0].SeriesInstanceUID))
    assert series_detail["seriesVersion"] == item.version == item.stable_version
    assert announcements[1][1]["numberOfStudyRelatedInstances"] == 3
    # And a replayed message (at-least-once delivery) announces nothing new
    assert service.observe(delayed[0]).outcome == "announced"
    assert env.announcements() == []


def test_a_series_still_receiving_is_not_announced(env: StabilityEnv) -> None:
    # Given a series whose message is delivered after only 10 s of quiet (an early delivery)
    env.store(*ct_series(new_uid(), 2))
    delayed = env.delayed_events()
    env.offset = timedelta(seconds=10)
    # Then it is not yet stable, and the message asks to be checked in the remaining time (under 50 s)
    observation = env.service().observe(delayed[-1])
    assert observation.outcome == "not-yet"
    assert 40 <= observation.retry_after <= 50  # 60 - 10 - the seconds since the store (load-dependent)
    assert env.announcements() == []


def test_a_message_older_than_the_series_last_change_defers_to_the_later_one(env: StabilityEnv) -> None:
    # Given an InstanceStored event stamped well before the series last changed
    env.store(*ct_series(new_uid(), 1))
    (event,) = env.delayed_events()
    stale = {**event, "time": (datetime.now(UTC) - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")}
    env.offset = STABLE_AGE * 2
    # Then that message leaves the decision to the later instance's own message
    assert env.service().observe(stale).outcome == "superseded"
    assert env.announcements() == []


def test_interleaved_series_are_announced_separately_and_the_study_after_the_last(
    env: StabilityEnv,
) -> None:
    # Given two series of one study stored interleaved, the second one receiving a late instance
    study = new_uid()
    first, second = ct_series(study, 2, number=1), ct_series(study, 3, number=2)
    env.store(first[0], second[0], first[1], second[1])
    delayed = env.delayed_events()
    env.offset = STABLE_AGE + timedelta(seconds=1)
    service = env.service()
    for event in delayed:
        service.observe(event)
    assert [kind for kind, _ in env.announcements()] == ["SeriesStable", "SeriesStable", "StudyStable"]
    # When a late instance arrives in the second series
    env.offset = timedelta(0)
    env.store(second[2])
    (late,) = env.delayed_events()
    # Then before the stable age it is not announced; after, the second series is announced
    # again at its new version, and so is the study (the first series is unchanged)
    assert service.observe(late).outcome == "not-yet"
    env.offset = STABLE_AGE + timedelta(seconds=1)
    assert service.observe(late).outcome == "stable"
    announcements = env.announcements()
    assert [kind for kind, _ in announcements] == ["SeriesStable", "StudyStable"]
    assert announcements[0][1]["seriesInstanceUID"] == second[0].SeriesInstanceUID
    assert announcements[0][1]["numberOfSeriesRelatedInstances"] == 3
    assert announcements[1][1]["numberOfStudyRelatedInstances"] == 5


def test_the_study_waits_for_a_series_that_is_not_yet_stable(env: StabilityEnv) -> None:
    # Given two series where only the first one's messages are handled
    study = new_uid()
    first, second = ct_series(study, 1, number=1), ct_series(study, 1, number=2)
    env.store(first[0], second[0])
    delayed = {e["detail"]["seriesInstanceUID"]: e for e in env.delayed_events()}
    env.offset = STABLE_AGE + timedelta(seconds=1)
    service = env.service()
    service.observe(delayed[first[0].SeriesInstanceUID])
    # Then the first series is announced but not the study
    assert [kind for kind, _ in env.announcements()] == ["SeriesStable"]
    # And the second series' message announces both
    service.observe(delayed[second[0].SeriesInstanceUID])
    assert [kind for kind, _ in env.announcements()] == ["SeriesStable", "StudyStable"]


def test_a_failed_publish_withdraws_the_record_so_the_retry_announces(env: StabilityEnv) -> None:
    # Given a stable series and an event bus that refuses the announcement
    study = new_uid()
    (ds,) = ct_series(study, 1)
    env.store(ds)
    (event,) = env.delayed_events()
    env.offset = STABLE_AGE + timedelta(seconds=1)
    with pytest.raises(RuntimeError):
        env.service(FailingPublisher("bus")).observe(event)
    # Then the series is not recorded as announced
    assert SeriesItem.get(*SeriesItem.key(study, ds.SeriesInstanceUID)).stable_version is None
    # And the redelivered message announces it
    assert env.service().observe(event).outcome == "stable"
    assert [kind for kind, _ in env.announcements()] == ["SeriesStable", "StudyStable"]


def test_a_deleted_series_is_ignored(env: StabilityEnv) -> None:
    event = {
        "time": "2026-01-01T00:00:00Z",
        "detail": {"studyInstanceUID": new_uid(), "seriesInstanceUID": new_uid()},
    }
    assert env.service().observe(event).outcome == "unknown-series"


@pytest.fixture
def stability(env: StabilityEnv, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """functions/stability/app.py with the environment the template gives StabilityFunction."""
    spec = load_template().functions()["StabilityFunction"]
    for name, value in env.stack.function_environment(spec).items():
        monkeypatch.setenv(name, value)
    config.settings.cache_clear()
    yield load_handler("StabilityFunction")
    config.settings.cache_clear()


def test_handler_sends_an_early_message_back_with_the_remaining_delay(
    env: StabilityEnv, stability: ModuleType
) -> None:
    # Given a message delivered before the series has been quiet for the stable age (1 s here)
    env.store(*ct_series(new_uid(), 1))
    (event,) = env.delayed_events()
    stability.SERVICE.stable_age = timedelta(seconds=30)
    # When the handler runs
    response = stability.handler({"Records": [sqs_record("m1", event)]}, LambdaContext("StabilityFunction"))
    # Then the record succeeded and the same event is queued again, not yet visible
    assert response == {"batchItemFailures": []}
    queue = env.stack.physical_ids["StabilityQueue"]
    attributes = env.sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["All"])["Attributes"]
    assert attributes["ApproximateNumberOfMessagesDelayed"] == "1"
    assert env.announcements() == []


def test_handler_announces_a_stable_series(env: StabilityEnv, stability: ModuleType) -> None:
    env.store(*ct_series(new_uid(), 2))
    records = [sqs_record(f"m{n}", e) for n, e in enumerate(env.delayed_events())]
    time.sleep(QUEUE_DELAY_S)  # the template's stable age in this stack is 1 s
    response = stability.handler({"Records": records}, LambdaContext("StabilityFunction"))
    assert response == {"batchItemFailures": []}
    assert [kind for kind, _ in env.announcements()] == ["SeriesStable", "StudyStable"]
