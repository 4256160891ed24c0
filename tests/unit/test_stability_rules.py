"""Stability's decision rules on an in-memory index (``tests/index_memory.py``) with a clock the
test sets: the edges that the moto tests (tests/integration/test_stability.py) cannot reach
without waiting: the event-time resolution, the remaining delay's rounding, every order in
which the last messages of a study's series arrive, and a failed StudyStable."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dicomweb_core.events import SERIES_STABLE, STUDY_STABLE
from dicomweb_core.hooks.stability import StabilityService
from dicomweb_core.index.access import Index
from dicomweb_core.index.models import SeriesItem, StudyItem
from tests.index_memory import MemoryItems

AGE = timedelta(seconds=30)
T0 = datetime(2026, 12, 5, 9, 0, 0, tzinfo=UTC)
STUDY = "1.2.826.0.1.3680043.8.498.1"
SERIES = [f"1.2.826.0.1.3680043.8.498.1.{n}" for n in (1, 2, 3)]


class Recorder:
    def __init__(self, failing: set[str] | None = None) -> None:
        self.published: list[tuple[str, dict[str, Any]]] = []
        self.failing = failing or set()

    def publish(self, detail_type: str, details: Any) -> None:
        if detail_type in self.failing:
            raise RuntimeError("EventBridge is unavailable")
        self.published.extend((detail_type, d) for d in details)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def stored_study(series_changed_at: list[datetime]) -> Index:
    index = Index(MemoryItems())
    last = max(series_changed_at)
    index.items.save(
        StudyItem(
            *StudyItem.key(STUDY),
            study_uid=STUDY,
            dicom_json="{}",
            sort_key=STUDY,
            modalities={"CT"},
            series_count=len(series_changed_at),
            instance_count=len(series_changed_at),
            updated_at=last,
        )
    )
    for uid, changed in zip(SERIES, series_changed_at, strict=False):
        index.items.save(
            SeriesItem(
                *SeriesItem.key(STUDY, uid),
                study_uid=STUDY,
                series_uid=uid,
                modality="CT",
                dicom_json=json.dumps({}),
                instance_count=1,
                updated_at=changed,
            )
        )
    return index


def message(series: str, event_time: datetime) -> dict[str, Any]:
    return {
        "time": event_time.strftime("%Y-%m-%dT%H:%M:%SZ"),  # EventBridge: whole seconds
        "detail": {"studyInstanceUID": STUDY, "seriesInstanceUID": series, "modality": "CT"},
    }


def service(index: Index, clock: Clock, events: Recorder) -> StabilityService:
    return StabilityService(stable_age=AGE, events=events, clock=clock, index=index)  # type: ignore[arg-type]


def test_an_instance_stored_within_the_events_second_does_not_supersede_it() -> None:
    # Given a series changed 0.9 s after the whole second its event was stamped with
    index = stored_study([T0 + timedelta(milliseconds=900)])
    events = Recorder()
    stability = service(index, Clock(T0 + AGE + timedelta(seconds=1)), events)
    # Then that event still announces it; one stamped a second and more earlier defers
    assert stability.observe(message(SERIES[0], T0 - timedelta(seconds=1))).outcome == "superseded"
    assert stability.observe(message(SERIES[0], T0)).outcome == "stable"
    assert [t for t, _ in events.published] == [SERIES_STABLE, STUDY_STABLE]


@pytest.mark.parametrize(("quiet_s", "retry_after"), [(0.0, 30), (29.2, 1), (10.5, 20)])
def test_an_early_message_comes_back_after_the_remaining_quiet_time_rounded_up(
    quiet_s: float, retry_after: int
) -> None:
    index = stored_study([T0])
    observed = service(index, Clock(T0 + timedelta(seconds=quiet_s)), Recorder()).observe(
        message(SERIES[0], T0)
    )
    assert (observed.outcome, observed.retry_after) == ("not-yet", retry_after)


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_the_study_is_announced_once_whatever_order_its_series_messages_come_in(
    order: tuple[int, ...],
) -> None:
    # Given three quiet series, each message delivered twice (SQS is at least once)
    index = stored_study([T0, T0 + timedelta(seconds=2), T0 + timedelta(seconds=5)])
    events = Recorder()
    stability = service(index, Clock(T0 + AGE + timedelta(minutes=1)), events)
    for n in order:
        for _ in range(2):
            stability.observe(message(SERIES[n], T0 + timedelta(seconds=5)))
    # Then every series once, and the study once, after the last series
    kinds = [t for t, _ in events.published]
    assert kinds.count(SERIES_STABLE) == 3 and kinds.count(STUDY_STABLE) == 1
    assert kinds[-1] == STUDY_STABLE
    assert index.study(STUDY).stable_version == index.study(STUDY).version


def test_a_failed_study_announcement_is_withdrawn_so_a_redelivery_makes_it() -> None:
    index = stored_study([T0])
    clock = Clock(T0 + AGE + timedelta(seconds=1))
    with pytest.raises(RuntimeError):
        service(index, clock, Recorder(failing={STUDY_STABLE})).observe(message(SERIES[0], T0))
    # Then both records are withdrawn (the series' too, or its redelivery would stop there)
    assert index.study(STUDY).stable_version is None
    assert index.series(STUDY, SERIES[0]).stable_version is None
    # and the redelivered message (Lambda retries it) announces the series again and the study
    events = Recorder()
    assert service(index, clock, events).observe(message(SERIES[0], T0)).outcome == "stable"
    assert [t for t, _ in events.published] == [SERIES_STABLE, STUDY_STABLE]
