"""Domain events on the EventBridge bus (DESIGN: hooks never run inside a request)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from functools import cached_property
from typing import TYPE_CHECKING, Any

import boto3

if TYPE_CHECKING:
    from mypy_boto3_events import EventBridgeClient

    from dicomweb_core.config import Settings

EVENT_SOURCE = "dicomweb"
INSTANCE_STORED = "InstanceStored"
SERIES_STABLE = "SeriesStable"
STUDY_STABLE = "StudyStable"
INFERENCE_COMPLETED = "InferenceCompleted"
STUDY_DELETED = "StudyDeleted"
_BATCH = 10  # PutEvents accepts at most 10 entries per call


class EventPublishError(RuntimeError):
    """EventBridge refused some entries."""


class EventPublisher:
    def __init__(self, bus_name: str, *, source: str = EVENT_SOURCE, client: Any = None) -> None:
        self.bus_name = bus_name
        self.source = source
        self._client = client

    @classmethod
    def of(cls, settings: Settings) -> EventPublisher:
        """The publisher of a function: its bus, with its source (``dicomweb``, or
        ``dicomweb.deid`` in the research store, so its events never loop back)."""
        return cls(settings.event_bus_name, source=settings.event_source)

    @cached_property
    def client(self) -> EventBridgeClient:
        return self._client or boto3.client("events")

    def publish(self, detail_type: str, details: Iterable[Mapping[str, Any]]) -> None:
        entries = [
            {
                "Source": self.source,
                "DetailType": detail_type,
                "Detail": json.dumps(detail, separators=(",", ":")),
                "EventBusName": self.bus_name,
            }
            for detail in details
        ]
        for start in range(0, len(entries), _BATCH):
            response = self.client.put_events(Entries=entries[start : start + _BATCH])  # type: ignore[arg-type]
            if response.get("FailedEntryCount"):
                codes = {e.get("ErrorCode") for e in response["Entries"] if e.get("ErrorCode")}
                raise EventPublishError(
                    f"EventBridge refused {response['FailedEntryCount']} entries: {codes}"
                )
