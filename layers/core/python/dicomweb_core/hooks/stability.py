"""Series and study stability: ``SeriesStable`` / ``StudyStable`` without a polling scheduler.

DICOM has no "end of series" message, so an archive decides a series is complete when no
instance has arrived for a while (Orthanc's *StableAge*). Here every ``InstanceStored``
event goes to a queue whose delivery delay is the stable age; when a message comes out,
the series is read from the index:

- already announced at its current content version → nothing to do (duplicates, replays);
- changed after this message's event (a later instance arrived) → nothing to do: the later
  instance's own message will decide;
- quiet for less than the stable age (a message delivered early) → check again later
  (the message is sent back with the remaining delay);
- otherwise it is stable: the version is recorded on the series item with a condition that
  the series has not changed since it was read and that this version was not announced
  yet, and only the writer that wins that condition publishes ``SeriesStable``. A series
  that changes later (late arrivals) gets a new version and is announced again.

A study is stable when each of its series is announced at its current version and the
study has been quiet for the stable age; ``StudyStable`` is recorded and published the
same way, at most once per study version. A publish that fails withdraws its record (and,
for ``StudyStable``, the series' that led to it), so the message's redelivery announces
again: consumers get each announcement at least once and key their work on the version.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from dicomweb_core.dicom.uid import validate_uid
from dicomweb_core.events import SERIES_STABLE, STUDY_STABLE, EventPublisher
from dicomweb_core.index import keys
from dicomweb_core.index.access import Index
from dicomweb_core.index.models import SeriesItem, StudyItem
from dicomweb_core.observability import logger

# EventBridge stamps events with a whole-second time: an instance stored within the same
# second as the message's own counts as "not later" (both messages then race on the
# conditional write, which keeps the announcement single).
_EVENT_TIME_RESOLUTION = timedelta(seconds=1)


@dataclass(frozen=True, slots=True)
class Observation:
    """What one delayed ``InstanceStored`` message led to."""

    outcome: str  # "stable", "announced", "superseded", "not-yet", "unknown-series"
    retry_after: int = 0  # seconds, when outcome is "not-yet"
    published: tuple[str, ...] = ()


class StabilityService:
    def __init__(
        self,
        *,
        stable_age: timedelta,
        events: EventPublisher,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        index: Index | None = None,
    ) -> None:
        self.stable_age = stable_age
        self.events = events
        self.clock = clock
        self.index = index if index is not None else Index()

    def observe(self, event: Mapping[str, Any]) -> Observation:
        """Handle one ``InstanceStored`` EventBridge event that has waited the stable age."""
        detail = event["detail"]
        study = validate_uid(detail["studyInstanceUID"], name="StudyInstanceUID")
        series_uid = validate_uid(detail["seriesInstanceUID"], name="SeriesInstanceUID")
        event_time = _parse_time(event.get("time"))
        series = self.index.find_series(study, series_uid)
        if series is None:
            return Observation("unknown-series")  # deleted since; nothing to announce
        if series.stable_version == series.version:
            return Observation("announced")
        changed_at = series.updated_at or datetime.min.replace(tzinfo=UTC)
        if event_time is not None and changed_at > event_time + _EVENT_TIME_RESOLUTION:
            return Observation("superseded")
        quiet = self.clock() - changed_at
        if quiet < self.stable_age:
            remaining = self.stable_age - quiet
            return Observation("not-yet", retry_after=max(1, int(remaining.total_seconds() + 0.999)))
        if not self.index.record_version(series, "stable_version", once=True):
            return Observation("announced")  # another message announced it first
        published = [SERIES_STABLE]
        self._publish(SERIES_STABLE, _series_detail(series, detail), announced=series)
        try:
            if self._announce_study(study):
                published.append(STUDY_STABLE)
        except Exception:
            # The redelivered message must get this far again, or the study would never be
            # announced: it announces the series a second time (at least once, by version).
            self.index.withdraw_version(series, "stable_version")
            raise
        return Observation("stable", published=tuple(published))

    # ------------------------------------------------------------------ study
    def _announce_study(self, study_uid: str) -> bool:
        study = self.index.find_study(study_uid)
        if study is None:
            return False
        if study.stable_version == study.version:
            return False
        changed_at = study.updated_at or datetime.min.replace(tzinfo=UTC)
        if self.clock() - changed_at < self.stable_age:
            return False
        all_series = self.index.series_of(study_uid)
        if not all_series or any(s.stable_version != s.version for s in all_series):
            return False  # the last series to become stable announces the study
        if not self.index.record_version(study, "stable_version", once=True):
            return False
        self._publish(STUDY_STABLE, _study_detail(study, all_series), announced=study)
        return True

    # ---------------------------------------------------------------- helpers
    def _publish(
        self, detail_type: str, detail: dict[str, Any], *, announced: SeriesItem | StudyItem
    ) -> None:
        """Publish; on failure withdraw the record so the retried message announces again."""
        try:
            self.events.publish(detail_type, [detail])
        except Exception:
            try:
                self.index.withdraw_version(announced, "stable_version")
            except Exception:
                logger.exception("could not withdraw a stability record", extra={"type": detail_type})
            raise
        logger.info(detail_type, extra={k: v for k, v in detail.items() if k.endswith("UID")})


def _series_detail(series: SeriesItem, trigger: Mapping[str, Any]) -> dict[str, Any]:
    attributes = json.loads(series.dicom_json)
    return {
        "studyInstanceUID": series.study_uid,
        "seriesInstanceUID": series.series_uid,
        "seriesVersion": series.version,
        "modality": series.modality or trigger.get("modality") or "",
        "sopClassUID": trigger.get("sopClassUID") or "",
        "bodyPartExamined": keys.first_value(attributes, keys.BODY_PART_EXAMINED) or "",
        "numberOfSeriesRelatedInstances": int(series.instance_count),
    }


def _study_detail(study: StudyItem, all_series: list[SeriesItem]) -> dict[str, Any]:
    return {
        "studyInstanceUID": study.study_uid,
        "studyVersion": study.version,
        "modalitiesInStudy": sorted(study.modalities or ()),
        "numberOfStudyRelatedSeries": len(all_series),
        "numberOfStudyRelatedInstances": int(study.instance_count),
    }


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
