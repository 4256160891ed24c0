"""Lambda's DynamoDB stream event source mapping, locally: read a table's stream, invoke.

As in the cloud (template.yaml's `DynamoDB` events): records are read from moto's stream
(DescribeStream, GetShardIterator, GetRecords) in commit order, in batches of up to
BatchSize, and handed to the function in Lambda's DynamoDB stream event shape. A batch is
done when the function answers without failures; with ReportBatchItemFailures, a reported
record moves the checkpoint to just before it and only the records from it on are retried;
an error (exception, timeout) retries the whole batch, split in two first when
BisectBatchOnFunctionError is on. After MaximumRetryAttempts retries without progress the
batch is given up: a failure record naming its shard and sequence range goes to the
OnFailure queue, as Lambda sends it, and reading goes on after it.

The checkpoint (the last sequence number done, per function, stream and shard) is kept in
memory and written to $LOCAL_DIR with the snapshot (:meth:`StreamPositions.save`, called
right after the moto state is saved), so a restart resumes exactly where the restored
state was, without replaying old records or skipping new ones. moto keeps a stream's
records forever; the records every consumer has passed are trimmed from moto's shard, as
DynamoDB trims records after 24 hours, so the state and its snapshot do not grow with them.

moto also needs one correction to stream like the service: see
:func:`withdraw_cancelled_stream_records`.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from moto.dynamodb.models import DynamoDBBackend, dynamodb_backends
from moto.dynamodbstreams.models import dynamodbstreams_backends

from infra.local import moto_atomic
from infra.local.workers import FunctionError, InvocationTimeout
from infra.samtemplate import StreamSource, Template

POSITIONS_FILE = "stream-positions.json"
RETRY_AFTER_S = 1.0
_MARK = "_streams_withdrawn_by_dicomweb"


# ---------------------------------------------------------------- checkpoints
class StreamPositions:
    """The last sequence number each consumer finished, per stream shard; saved with the snapshot."""

    def __init__(self, path: Path | None = None, *, resume: bool = True) -> None:
        """``path``: where :meth:`save` writes (None: nowhere); ``resume``: start from what it
        holds (only when the moto state it was saved with was restored)."""
        self.path = path
        self._lock = threading.Lock()
        self._positions: dict[str, str] = {}
        self._consumers: dict[str, set[str]] = {}  # stream -> the functions that read it
        if resume and path is not None and path.exists():
            self._positions = {str(k): str(v) for k, v in json.loads(path.read_text()).items()}

    @staticmethod
    def key(function: str, stream_arn: str, shard: str) -> str:
        return f"{function}|{stream_arn}|{shard}"

    def register(self, function: str, stream_arn: str) -> None:
        """``function`` reads ``stream_arn``: no record is trimmed before it has passed it."""
        with self._lock:
            self._consumers.setdefault(stream_arn, set()).add(function)

    def get(self, function: str, stream_arn: str, shard: str) -> str | None:
        with self._lock:
            return self._positions.get(self.key(function, stream_arn, shard))

    def advance(self, function: str, stream_arn: str, shard: str, sequence_number: str) -> None:
        with self._lock:
            self._positions[self.key(function, stream_arn, shard)] = sequence_number

    def low_water(self, stream_arn: str, shard: str) -> int | None:
        """The sequence number every consumer of the shard has passed (None: one has not begun)."""
        with self._lock:
            consumers = self._consumers.get(stream_arn, set())
            done = [self._positions.get(self.key(c, stream_arn, shard)) for c in consumers]
        if not done or any(d is None for d in done):
            return None
        return min(int(d) for d in done if d is not None)

    def save(self) -> None:
        """Write the positions (after the moto snapshot: never ahead of the state it restores)."""
        if self.path is None:
            return
        with self._lock:
            document = json.dumps(self._positions, indent=1, sort_keys=True)
        temporary = self.path.with_suffix(".tmp")
        with open(temporary, "w", encoding="utf-8") as fh:
            fh.write(document + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        temporary.replace(self.path)


# ---------------------------------------------------------------- the poller
@dataclass
class _Delivery:
    """Records read from one shard and not yet done: the batch being tried, then the halves
    a bisection left waiting, in stream order."""

    shard: str
    batches: list[list[dict[str, Any]]]
    attempts: int = 0  # retries of the current batch since the checkpoint last moved
    function_error: bool = False


@dataclass
class StreamPoller:
    source: StreamSource
    streams: Any  # a dynamodbstreams client
    stream_arn: str
    pool: Any  # .invoke(event) -> result: a FunctionPool, or the handler in-process (tests)
    positions: StreamPositions
    region: str
    sqs: Any = None
    on_failure_url: str | None = None
    stopping: threading.Event = field(default_factory=threading.Event)
    activity: Any = None
    retry_after_s: float = RETRY_AFTER_S
    _pending: dict[str, _Delivery] = field(default_factory=dict)
    # MaximumBatchingWindowInSeconds: when a shard first showed a batch smaller than BatchSize
    _waiting_since: dict[str, float] = field(default_factory=dict)
    _draining: bool = False

    def __post_init__(self) -> None:
        if self.source.starting_position != "TRIM_HORIZON":
            raise ValueError(
                f"{self.source.function}: the local runtime reads streams from TRIM_HORIZON only "
                f"(StartingPosition {self.source.starting_position})"
            )
        self.positions.register(self.source.function, self.stream_arn)

    @property
    def name(self) -> str:
        return f"stream-{self.source.function}-{self.source.table}"

    def run(self) -> None:
        idle_s = min(max(self.source.batching_window_s, 0.1), 1.0)
        while not self.stopping.is_set():
            try:
                if self.activity is not None:
                    with self.activity.running():
                        state = self.step()
                else:
                    state = self.step()
            except Exception as exc:  # keep polling, as the managed poller does
                if not self.stopping.is_set():
                    print(f"[{self.source.function}] stream poller: {exc!r}", flush=True)
                state = "retry"
            if state == "retry":
                self.stopping.wait(self.retry_after_s)
            elif state == "idle":
                self.stopping.wait(idle_s)

    def step(self) -> str:
        """One invocation at most: "delivered", "retry" (a batch failed) or "idle"."""
        shards = self.streams.describe_stream(StreamArn=self.stream_arn)["StreamDescription"]["Shards"]
        for shard in (s["ShardId"] for s in shards):
            delivery = self._pending.get(shard) or self._read(shard)
            if delivery is None:
                continue
            self._pending[shard] = delivery
            retry = self._attempt(delivery)
            if not delivery.batches:
                del self._pending[shard]
            return "retry" if retry else "delivered"
        return "idle"

    def drain(self) -> None:
        """Deliver until the stream has nothing new, without waiting for batches to fill
        (tests: retries wait ``retry_after_s``)."""
        self._draining = True
        try:
            while (state := self.step()) != "idle":
                if state == "retry" and self.retry_after_s:
                    time.sleep(self.retry_after_s)
        finally:
            self._draining = False

    # ------------------------------------------------------------ reading
    def _read(self, shard: str) -> _Delivery | None:
        position = self.positions.get(self.source.function, self.stream_arn, shard)
        where: dict[str, Any] = (
            {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": position}
            if position is not None
            else {"ShardIteratorType": "TRIM_HORIZON"}
        )
        iterator = self.streams.get_shard_iterator(StreamArn=self.stream_arn, ShardId=shard, **where)[
            "ShardIterator"
        ]
        page = self.streams.get_records(ShardIterator=iterator, Limit=self.source.batch_size)
        _forget_iterators(self.stream_arn, iterator, page.get("NextShardIterator"))
        records = page.get("Records", [])
        if not records or not self._batch_ready(shard, len(records)):
            return None
        return _Delivery(shard, [records])

    def _batch_ready(self, shard: str, count: int) -> bool:
        """As Lambda's batching window: a batch goes when it is full, or when the window has
        passed since its first record was seen (at once while draining)."""
        if count >= self.source.batch_size or self._draining or self.source.batching_window_s <= 0:
            self._waiting_since.pop(shard, None)
            return True
        since = self._waiting_since.setdefault(shard, time.monotonic())
        if time.monotonic() - since < self.source.batching_window_s:
            return False
        del self._waiting_since[shard]
        return True

    # ------------------------------------------------------------ delivering
    def _attempt(self, delivery: _Delivery) -> bool:
        """Invoke the function on the current batch; True when it must be retried."""
        batch = delivery.batches[0]
        failed_at, function_error = self._invoke(batch)
        if failed_at is None:
            self._advance(delivery.shard, batch[-1])
            delivery.batches.pop(0)
            delivery.attempts, delivery.function_error = 0, False
            return False
        delivery.function_error = function_error
        if failed_at > 0:  # done up to the reported record; retry from it (a new checkpoint)
            self._advance(delivery.shard, batch[failed_at - 1])
            delivery.batches[0] = batch[failed_at:]
            delivery.attempts = 1
            return True
        delivery.attempts += 1
        if function_error and self.source.bisect_on_error and len(batch) > 1:
            half = len(batch) // 2
            delivery.batches[0:1] = [batch[:half], batch[half:]]
            return True
        retries = self.source.maximum_retry_attempts
        if 0 <= retries < delivery.attempts:
            self._give_up(delivery, batch)
            self._advance(delivery.shard, batch[-1])
            delivery.batches.pop(0)
            delivery.attempts, delivery.function_error = 0, False
            return False
        return True

    def _invoke(self, batch: list[dict[str, Any]]) -> tuple[int | None, bool]:
        """(index of the first record to retry, or None when all are done; was it an error)."""
        event = {"Records": [self._record(r) for r in batch]}
        try:
            result = self.pool.invoke(event)
        except (FunctionError, InvocationTimeout) as exc:
            print(f"[{self.source.function}] stream batch failed: {exc}", flush=True)
            return 0, True
        if not self.source.reports_failures or not isinstance(result, Mapping):
            return None, False
        failures = result.get("batchItemFailures") or []
        if not failures:
            return None, False
        positions = {str(r["dynamodb"]["SequenceNumber"]): i for i, r in enumerate(batch)}
        reported = [positions.get(str(f.get("itemIdentifier") or "")) for f in failures]
        if any(index is None for index in reported):
            return 0, False  # an identifier that names no record: the whole batch failed
        return min(i for i in reported if i is not None), False

    def _advance(self, shard: str, record: Mapping[str, Any]) -> None:
        self.positions.advance(
            self.source.function, self.stream_arn, shard, record["dynamodb"]["SequenceNumber"]
        )
        low = self.positions.low_water(self.stream_arn, shard)
        if low is not None:
            _trim_shard(self.stream_arn, low)

    def _give_up(self, delivery: _Delivery, batch: list[dict[str, Any]]) -> None:
        """Lambda's record of a discarded batch, to the OnFailure destination."""
        first, last = batch[0]["dynamodb"], batch[-1]["dynamodb"]
        account = self.stream_arn.split(":")[4]
        failure = {
            "requestContext": {
                "requestId": str(uuid.uuid4()),
                "functionArn": f"arn:aws:lambda:{self.region}:{account}:function:{self.source.function}",
                "condition": "RetryAttemptsExhausted",
                "approximateInvokeCount": delivery.attempts,
            },
            "responseContext": {
                "statusCode": 200,
                "executedVersion": "$LATEST",
                **({"functionError": "Unhandled"} if delivery.function_error else {}),
            },
            "version": "1.0",
            "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "DDBStreamBatchInfo": {
                "shardId": delivery.shard,
                "startSequenceNumber": first["SequenceNumber"],
                "endSequenceNumber": last["SequenceNumber"],
                "approximateArrivalOfFirstRecord": _iso(first.get("ApproximateCreationDateTime")),
                "approximateArrivalOfLastRecord": _iso(last.get("ApproximateCreationDateTime")),
                "batchSize": len(batch),
                "streamArn": self.stream_arn,
            },
        }
        print(
            f"[{self.source.function}] gave up on {len(batch)} stream records after "
            f"{delivery.attempts} attempts ({first['SequenceNumber']}..{last['SequenceNumber']})",
            flush=True,
        )
        if self.sqs is not None and self.on_failure_url:
            self.sqs.send_message(QueueUrl=self.on_failure_url, MessageBody=json.dumps(failure))

    def _record(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """A GetRecords record in the shape Lambda delivers it (epoch seconds, base64 binaries)."""
        change = dict(record["dynamodb"])
        created = change.get("ApproximateCreationDateTime")
        if isinstance(created, datetime):
            change["ApproximateCreationDateTime"] = float(int(created.timestamp()))
        return {**_json_safe(record), "dynamodb": _json_safe(change), "eventSourceARN": self.stream_arn}


def _iso(value: Any) -> str | None:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC).isoformat().replace("+00:00", "Z")
    return None


def _json_safe(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, datetime):
        return float(int(value.timestamp()))
    if isinstance(value, Mapping):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_json_safe(v) for v in value]
    return value


def stream_pollers(
    template: Template,
    stack: Any,
    pools: Mapping[str, Any],
    *,
    positions: StreamPositions,
    stopping: threading.Event,
    activity: Any,
    region: str,
) -> list[StreamPoller]:
    """One poller per `DynamoDB` event of template.yaml, on the provisioned stack."""
    streams, sqs = stack.client("dynamodbstreams"), stack.client("sqs")
    pollers = []
    for source in template.stream_sources():
        pollers.append(
            StreamPoller(
                source,
                streams=streams,
                stream_arn=stack.attributes[source.table]["StreamArn"],
                pool=pools[source.function],
                positions=positions,
                region=region,
                sqs=sqs,
                on_failure_url=stack.physical_ids[source.on_failure] if source.on_failure else None,
                stopping=stopping,
                activity=activity,
            )
        )
    return pollers


# ---------------------------------------------------------------- moto, in this process
def _stream_table(stream_arn: str) -> Any:
    """moto's table behind a stream ARN, when moto runs in this process (else None)."""
    _, _, _, region, account, resource = stream_arn.split(":", 5)
    try:
        return dynamodb_backends[account][region].tables.get(resource.split("/")[1])
    except (KeyError, IndexError):
        return None


def _forget_iterators(stream_arn: str, *iterators: str | None) -> None:
    """moto keeps every shard iterator it handed out; drop the ones read (it would grow forever)."""
    _, _, _, region, account, _ = stream_arn.split(":", 5)
    try:
        known = dynamodbstreams_backends[account][region].shard_iterators
    except KeyError:
        return
    for iterator in iterators:
        if iterator:
            known.pop(iterator, None)


def _trim_shard(stream_arn: str, upto: int) -> None:
    """Drop moto's records up to sequence number ``upto`` (every consumer passed them), as
    DynamoDB trims a stream: the shard's first sequence number moves, later ones stay."""
    table = _stream_table(stream_arn)
    shard = getattr(table, "stream_shard", None)
    if shard is None:
        return
    with moto_atomic._LOCK:  # writers append under it: numbering stays len(items) + start
        count = min(max(upto - shard.starting_sequence_number + 1, 0), len(shard.items))
        if count:
            del shard.items[:count]
            shard.starting_sequence_number += count


def withdraw_cancelled_stream_records() -> None:
    """Make moto stream TransactWriteItems as DynamoDB does: a cancelled transaction streams nothing.

    moto applies a transaction's steps one by one and, when a later step's condition fails,
    puts the items back (moto_atomic restores the items it touched), but the stream records
    of the steps already applied stay. DynamoDB streams a transaction only when it commits.
    Wrapped around moto_atomic's transaction, under its lock, the records a cancelled
    transaction added are removed again. Idempotent; installs moto_atomic's fixes first.
    """
    moto_atomic.serialise_dynamodb()
    current: Callable[..., Any] = DynamoDBBackend.transact_write_items
    if getattr(current, _MARK, False):
        return

    @functools.wraps(current)
    def transact_write_items(self: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> Any:
        with moto_atomic._LOCK:
            shards = [t.stream_shard for t in self.tables.values() if t.stream_shard is not None]
            lengths = [(shard, len(shard.items)) for shard in shards]
            try:
                return current(self, transact_items)
            except Exception:
                for shard, length in lengths:
                    del shard.items[length:]
                raise

    setattr(transact_write_items, _MARK, True)
    DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]
