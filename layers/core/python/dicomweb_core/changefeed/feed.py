"""A batch of stream records → ``InstanceStored`` events on the bus, with partial failures.

Lambda's DynamoDB event source mapping hands the function a batch of one shard's records, in
commit order. The feed reads every record up to the first one it cannot read, publishes the
events of the instance writes among them in order, at most ten per PutEvents call (the API's
limit), and answers with the first record whose event did not get onto the bus (a refused
call, or an entry EventBridge refused: ``FailedEntryCount``), or the unreadable record. With
``ReportBatchItemFailures`` Lambda then retries from that record: the records before it are
done, nothing after it is skipped. Entries of a refused call that EventBridge did accept are
sent again on the retry, which is the at-least-once half of the contract (docs/write-safety.md).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import boto3

from dicomweb_core.changefeed.detail import instance_stored
from dicomweb_core.changefeed.records import committed_write
from dicomweb_core.config import ConfigurationError
from dicomweb_core.events import INSTANCE_STORED
from dicomweb_core.index.access import Index
from dicomweb_core.index.stream import StreamRecord, UnreadableRecord
from dicomweb_core.observability import logger

if TYPE_CHECKING:
    from mypy_boto3_events import EventBridgeClient

TABLES_VARIABLE = "CHANGE_FEED_TABLES"
PUT_EVENTS_LIMIT = 10  # entries per PutEvents call


@dataclass(frozen=True, slots=True)
class FeedTarget:
    """What a table's instance writes are announced as: the bus ``source`` its store
    publishes with (``dicomweb``; ``dicomweb.deid`` for the research store, so its events never
    reach the hooks of the primary store), and the bucket its items name objects in."""

    source: str
    bucket: str


def targets_from_environ(environ: Mapping[str, str]) -> dict[str, FeedTarget]:
    """``CHANGE_FEED_TABLES``: a JSON object, table name → ``{"source": ..., "bucket": ...}``."""
    raw = environ.get(TABLES_VARIABLE)
    if not raw:
        raise ConfigurationError(f"missing environment variable: {TABLES_VARIABLE}")
    try:
        tables = json.loads(raw)
        targets = {
            str(table): FeedTarget(source=str(spec["source"]), bucket=str(spec["bucket"]))
            for table, spec in tables.items()
        }
    except (ValueError, AttributeError, KeyError, TypeError):
        raise ConfigurationError(
            f'{TABLES_VARIABLE} must be a JSON object: {{"<table>": {{"source": "...", "bucket": "..."}}}}'
        ) from None
    if not targets or not all(t.source and t.bucket for t in targets.values()):
        raise ConfigurationError(f"{TABLES_VARIABLE} names no table, or a table without source and bucket")
    return targets


@dataclass(frozen=True, slots=True)
class FeedResult:
    published: int  # InstanceStored events EventBridge accepted
    failed: str | None  # the sequence number to retry from, or None when the batch is done

    def response(self) -> dict[str, list[dict[str, str]]]:
        """Lambda's partial batch response for a stream: the record to retry from."""
        return {"batchItemFailures": [{"itemIdentifier": self.failed}] if self.failed else []}


class SeriesModalities:
    """Modality (0008,0060) of a series, from its series item in the record's table, for
    instance items that do not carry it. Strongly consistent: the series item was written
    in or before the transaction that committed the instance. A series deleted since has
    none ('')."""

    def __init__(self) -> None:
        self._indexes: dict[str, Index] = {}

    def __call__(self, table: str, study: str, series: str) -> str:
        if table not in self._indexes:
            self._indexes[table] = Index.for_table(table)
        found = self._indexes[table].find_series(study, series)
        return (found.modality or "") if found is not None else ""


@dataclass(frozen=True, slots=True)
class _Pending:
    sequence_number: str
    entry: dict[str, Any]


class ChangeFeed:
    def __init__(
        self,
        *,
        bus_name: str,
        targets: Mapping[str, FeedTarget],
        client: Any = None,
        modalities: SeriesModalities | None = None,
    ) -> None:
        self.bus_name = bus_name
        self.targets = dict(targets)
        self._client = client
        self.modalities = modalities or SeriesModalities()

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> ChangeFeed:
        bus = environ.get("EVENT_BUS_NAME")
        if not bus:
            raise ConfigurationError("missing environment variable: EVENT_BUS_NAME")
        return cls(bus_name=bus, targets=targets_from_environ(environ))

    @cached_property
    def client(self) -> EventBridgeClient:
        return self._client or boto3.client("events")

    def handle(self, records: Sequence[Mapping[str, Any]]) -> FeedResult:
        """Publish the batch's ``InstanceStored`` events; the first record not done, if any."""
        pending: list[_Pending] = []
        unreadable: str | None = None
        modalities: dict[tuple[str, str, str], str] = {}  # read once per series per batch
        for raw in records:
            record = StreamRecord.parse(raw)  # without a sequence number, fail the whole batch
            try:
                entry = self._entry(record, modalities)
            except Exception:
                logger.exception(
                    "unreadable stream record", extra={"sequence_number": record.sequence_number}
                )
                unreadable = record.sequence_number
                break
            if entry is not None:
                pending.append(_Pending(record.sequence_number, entry))
        published, failed = self._put(pending)
        return FeedResult(published, failed or unreadable)

    def _entry(
        self, record: StreamRecord, modalities: dict[tuple[str, str, str], str]
    ) -> dict[str, Any] | None:
        write = committed_write(record)
        if write is None:
            return None
        target = self.targets.get(record.table)
        if target is None:
            raise UnreadableRecord(f"table {record.table} is not in {TABLES_VARIABLE}")
        item, modality = write.item, write.modality
        if modality is None:
            series = (record.table, item.study_uid, item.series_uid)
            if series not in modalities:
                modalities[series] = self.modalities(*series)
            modality = modalities[series]
        detail = instance_stored(item, bucket=target.bucket, modality=modality)
        entry: dict[str, Any] = {
            "Source": target.source,
            "DetailType": INSTANCE_STORED,
            "Detail": json.dumps(detail, separators=(",", ":")),
            "EventBusName": self.bus_name,
        }
        if item.updated_at is not None:
            entry["Time"] = item.updated_at  # when the write committed, as stability compares it
        return entry

    def _put(self, pending: Sequence[_Pending]) -> tuple[int, str | None]:
        """Publish in order, ten entries per call; stop at the first entry not accepted."""
        published = 0
        for start in range(0, len(pending), PUT_EVENTS_LIMIT):
            chunk = pending[start : start + PUT_EVENTS_LIMIT]
            try:
                response = self.client.put_events(Entries=[p.entry for p in chunk])  # type: ignore[misc]
            except Exception:
                logger.exception("PutEvents failed", extra={"entries": len(chunk)})
                return published, chunk[0].sequence_number
            if not response.get("FailedEntryCount"):
                published += len(chunk)
                continue
            results = list(response.get("Entries", []))
            refused = [n for n in range(len(chunk)) if n >= len(results) or results[n].get("ErrorCode")]
            published += len(chunk) - len(refused)
            first = refused[0] if refused else 0  # a count without a refused entry: the whole call again
            logger.error(
                "EventBridge refused InstanceStored entries",
                extra={
                    "refused": response["FailedEntryCount"],
                    "sequence_number": chunk[first].sequence_number,
                },
            )
            return published, chunk[first].sequence_number
        return published, None
