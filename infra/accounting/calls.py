"""Count the AWS calls code makes, per service and operation, with a botocore event hook.

Every botocore client (boto3's and pynamodb's) emits events around each API call; the
:class:`CallCounter` listens to three of them on every session created while it is
installed (it adds itself to ``botocore.handlers.BUILTIN_HANDLERS``, the list each new
session registers):

- ``before-parameter-build``: the call's parameters, kept in the call's context;
- ``request-created``: one HTTP attempt (botocore's retries are attempts of one call);
- ``after-call``: the answer; the call is counted here, with what the answer says
  (items returned, bytes, ``ConsumedCapacity`` where the service reports it).

It also times each call: the wall time from ``before-parameter-build`` to ``after-call``
(or ``after-call-error``), summed per service and operation, and how much of it the
request spent on the wire (``before-send`` to ``before-parse``: sent, served, answer
read). Reading a streamed body (an S3 object) after the call counts as time in that call
and on the wire. Calls made in parallel (a thread pool) overlap: :attr:`Tally.aws_ms` is
the wall time during which at least one call of the operation was open, and
:attr:`Tally.hook_ms` the time the counter itself took for its bookkeeping, which an
operation's own time should leave out.

Calls are attributed to the innermost open :meth:`CallCounter.operation` block (in any
thread), or to ``"(none)"``. For DynamoDB the counter also keeps what each call wrote and
read (keys, put items, updated attribute names), so the capacity it consumed can be
computed from the items as they are stored (:mod:`infra.accounting.dynamodb`), which an
emulator's ``ConsumedCapacity`` does not give reliably.
"""

from __future__ import annotations

import base64
import math
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from botocore import handlers

from infra.accounting.itemsize import item_size

NO_OPERATION = "(none)"
EVENTS_CHUNK_BYTES = 64 * 1024  # EventBridge bills each 64 KB of an entry as one event
_CONTEXT_KEY = "accounting_params"
_STARTED_KEY = "accounting_started"  # (label, perf_counter) when the call began


@dataclass
class Tally:
    """What one operation did against AWS."""

    calls: Counter[str] = field(default_factory=Counter)  # "dynamodb.PutItem" -> calls
    attempts: Counter[str] = field(default_factory=Counter)  # HTTP attempts, retries included
    errors: Counter[str] = field(default_factory=Counter)  # "dynamodb.TransactWriteItems.Code"
    units: Counter[str] = field(default_factory=Counter)  # "events.entries", "s3.put_bytes", ...
    reported: dict[str, float] = field(default_factory=dict)  # ConsumedCapacity per table, as answered
    writes: list[dict[str, Any]] = field(default_factory=list)  # DynamoDB write actions
    reads: list[dict[str, Any]] = field(default_factory=list)  # DynamoDB read actions
    call_ms: dict[str, float] = field(default_factory=dict)  # wall ms inside calls, per "dynamodb.Query"
    wire_ms: dict[str, float] = field(default_factory=dict)  # of which sent, served and read back
    aws_ms: float = 0.0  # wall ms during which at least one call was open (parallel calls once)
    hook_ms: float = 0.0  # ms the counter's own bookkeeping took

    def merge(self, other: Tally) -> None:
        for name in ("calls", "attempts", "errors", "units"):
            getattr(self, name).update(getattr(other, name))
        for table, units in other.reported.items():
            self.reported[table] = self.reported.get(table, 0.0) + units
        self.writes.extend(other.writes)
        self.reads.extend(other.reads)
        for mine, theirs in ((self.call_ms, other.call_ms), (self.wire_ms, other.wire_ms)):
            for name, ms in theirs.items():
                mine[name] = mine.get(name, 0.0) + ms
        self.aws_ms += other.aws_ms
        self.hook_ms += other.hook_ms

    def to_json(self) -> dict[str, Any]:
        return {
            "calls": dict(self.calls),
            "attempts": dict(self.attempts),
            "errors": dict(self.errors),
            "units": dict(self.units),
            "reported": dict(self.reported),
            "writes": self.writes,
            "reads": self.reads,
            "call_ms": {name: round(ms, 3) for name, ms in self.call_ms.items()},
            "wire_ms": {name: round(ms, 3) for name, ms in self.wire_ms.items()},
            "aws_ms": round(self.aws_ms, 3),
            "hook_ms": round(self.hook_ms, 3),
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> Tally:
        return cls(
            calls=Counter(document.get("calls", {})),
            attempts=Counter(document.get("attempts", {})),
            errors=Counter(document.get("errors", {})),
            units=Counter(document.get("units", {})),
            reported={k: float(v) for k, v in document.get("reported", {}).items()},
            writes=list(document.get("writes", [])),
            reads=list(document.get("reads", [])),
            call_ms={k: float(v) for k, v in document.get("call_ms", {}).items()},
            wire_ms={k: float(v) for k, v in document.get("wire_ms", {}).items()},
            aws_ms=float(document.get("aws_ms", 0.0)),
            hook_ms=float(document.get("hook_ms", 0.0)),
        )

    def by_service(self) -> Counter[str]:
        """Calls per service ("dynamodb", "s3", ...)."""
        services: Counter[str] = Counter()
        for name, count in self.calls.items():
            services[name.split(".", 1)[0]] += count
        return services


class CallCounter:
    """Counts and times calls per operation label; see the module docstring.

    ``clock`` (seconds, monotonic) is ``time.perf_counter``; tests pass their own."""

    def __init__(self, *, clock: Callable[[], float] = time.perf_counter) -> None:
        self.tallies: dict[str, Tally] = {}
        self._labels: list[str] = []
        self._lock = threading.Lock()
        self._active = False
        self._clock = clock
        self._open: dict[str, int] = {}  # label -> calls open now
        self._busy_since: dict[str, float] = {}  # label -> when its first open call began
        self._thread = threading.local()  # the wire time of the call this thread is making
        self._specs = [
            ("before-parameter-build", self._on_parameters),
            ("request-created", self._on_attempt),
            ("before-send", self._on_send),
            ("before-parse", self._on_received),
            ("after-call", self._on_answer),
            ("after-call-error", self._on_failure),
        ]

    # ------------------------------------------------------------ install
    def install(self) -> None:
        """Count the calls of every botocore session created from now on."""
        self._active = True
        for spec in self._specs:
            if spec not in handlers.BUILTIN_HANDLERS:
                handlers.BUILTIN_HANDLERS.append(spec)

    def uninstall(self) -> None:
        """Stop counting (sessions created meanwhile keep a handler that does nothing)."""
        self._active = False
        for spec in self._specs:
            if spec in handlers.BUILTIN_HANDLERS:
                handlers.BUILTIN_HANDLERS.remove(spec)

    @contextmanager
    def installed(self) -> Iterator[CallCounter]:
        self.install()
        try:
            yield self
        finally:
            self.uninstall()

    def attach(self, client: Any) -> None:
        """Count the calls of a client (or boto3/botocore session) that exists already."""
        events = client.meta.events if hasattr(client, "meta") else client.events
        for event, handler in self._specs:
            events.register(event, handler)

    # ------------------------------------------------------------ operations
    @contextmanager
    def operation(self, label: str) -> Iterator[Tally]:
        """Attribute the calls made inside the block (in any thread) to ``label``."""
        with self._lock:
            self._labels.append(label)
            tally = self.tallies.setdefault(label, Tally())
        try:
            yield tally
        finally:
            with self._lock:
                self._labels.remove(label)

    def take(self) -> dict[str, Tally]:
        """The tallies so far, leaving the counter empty.

        A call still open (one that failed before it was sent never reaches ``after-call``)
        is closed now, so that it cannot hold the next operation's wall time open."""
        with self._lock:
            now = self._clock()
            for label, since in self._busy_since.items():
                tally = self.tallies.setdefault(label, Tally())
                tally.aws_ms += (now - since) * 1000
            self._busy_since.clear()
            self._open.clear()
            taken, self.tallies = self.tallies, {}
        return taken

    def _label(self) -> str:
        return self._labels[-1] if self._labels else NO_OPERATION

    def _tally(self) -> Tally:
        return self.tallies.setdefault(self._label(), Tally())

    # ------------------------------------------------------------ timing
    def begin(self) -> tuple[str, float]:
        """A call (or a read of its streamed body) starts now: its label and start time."""
        with self._lock:
            label, now = self._label(), self._clock()
            if not self._open.get(label):
                self._busy_since[label] = now
            self._open[label] = self._open.get(label, 0) + 1
        return label, now

    def end(self, started: tuple[str, float], name: str, *, wire_ms: float = 0.0) -> None:
        """The call ``name`` begun at ``started`` (from :meth:`begin`) ends now."""
        label, began = started
        with self._lock:
            now = self._clock()
            tally = self.tallies.setdefault(label, Tally())
            tally.call_ms[name] = tally.call_ms.get(name, 0.0) + (now - began) * 1000
            if wire_ms:
                tally.wire_ms[name] = tally.wire_ms.get(name, 0.0) + wire_ms
            self._open[label] = self._open.get(label, 0) - 1
            if self._open[label] <= 0:  # the last open call (or one begun before a take())
                self._open.pop(label)
                since = self._busy_since.pop(label, None)
                if since is not None:
                    tally.aws_ms += (now - since) * 1000

    # ------------------------------------------------------------ events
    def _on_parameters(self, params: Mapping[str, Any], context: dict[str, Any], **_: Any) -> None:
        if self._active and isinstance(context, dict):
            context[_CONTEXT_KEY] = params
            if not context.get("is_presign_request"):  # a presigned URL is signed, never sent
                context[_STARTED_KEY] = self.begin()
                self._thread.wire_ms = 0.0
                self._thread.sent = None

    def _on_send(self, **_: Any) -> None:
        if self._active:
            self._thread.sent = self._clock()

    def _on_received(self, **_: Any) -> None:
        sent = getattr(self._thread, "sent", None)
        if self._active and sent is not None:
            self._thread.wire_ms = getattr(self._thread, "wire_ms", 0.0) + (self._clock() - sent) * 1000
            self._thread.sent = None

    def _finish(self, context: Any, name: str) -> bool:
        """Close the call's timing; False when it was not timed (begun before install)."""
        started = context.pop(_STARTED_KEY, None) if isinstance(context, dict) else None
        if started is None:
            return False
        wire_ms, self._thread.wire_ms = getattr(self._thread, "wire_ms", 0.0), 0.0
        self.end(started, name, wire_ms=wire_ms)
        return True

    def _on_failure(self, context: Any, event_name: str, **_: Any) -> None:
        """``after-call-error``: the request could not be made (connection refused, timeout)."""
        service, operation = event_name.split(".", 2)[1:]
        self._finish(context, f"{_SERVICE_NAMES.get(service, service)}.{operation}")

    def _on_attempt(self, request: Any, operation_name: str, event_name: str, **_: Any) -> None:
        if not self._active:
            return
        service = event_name.split(".")[1]
        with self._lock:
            self._tally().attempts[f"{_SERVICE_NAMES.get(service, service)}.{operation_name}"] += 1

    def _on_answer(
        self, http_response: Any, parsed: Mapping[str, Any], model: Any, context: Mapping[str, Any], **_: Any
    ) -> None:
        if not self._active:
            return
        service = model.service_model.service_name
        name = f"{service}.{model.name}"
        timed = self._finish(context, name)
        bookkeeping = self._clock()
        params = context.get(_CONTEXT_KEY, {}) if isinstance(context, Mapping) else {}
        ok = http_response is not None and http_response.status_code < 300
        if timed and ok and model.has_streaming_output:
            self._time_body_reads(parsed, model, name)
        with self._lock:
            tally = self._tally()
            tally.calls[name] += 1
            if not ok:
                tally.errors[f"{name}.{parsed.get('Error', {}).get('Code', 'Unknown')}"] += 1
            _count_units(tally, service, model.name, params, parsed)
            if service == "dynamodb":
                _record_dynamodb(tally, model.name, params, parsed, ok=ok)
            tally.hook_ms += (self._clock() - bookkeeping) * 1000

    def _time_body_reads(self, parsed: Mapping[str, Any], model: Any, name: str) -> None:
        """Time each read of a streamed answer body (S3 GetObject) as part of the call."""
        payload = model.output_shape.serialization.get("payload") if model.output_shape else None
        body = parsed.get(payload) if payload else None
        if body is None or not hasattr(body, "read"):
            return
        read = body.read

        def timed_read(*args: Any, **kwargs: Any) -> Any:
            started = self.begin()
            try:
                return read(*args, **kwargs)
            finally:
                elapsed = (self._clock() - started[1]) * 1000
                self.end(started, name, wire_ms=elapsed)

        body.read = timed_read  # the instance's read: iter_chunks() and friends go through it


# The hyphenated service ids of request-created events, as the service names of after-call.
_SERVICE_NAMES = {"eventbridge": "events", "cloudwatch-logs": "logs", "dynamodb-streams": "dynamodbstreams"}


def _count_units(
    tally: Tally, service: str, operation: str, params: Mapping[str, Any], parsed: Mapping[str, Any]
) -> None:
    """The billing units beside the call itself: entries, messages, bytes."""
    if service == "events" and operation == "PutEvents":
        entries = params.get("Entries", [])
        tally.units["events.entries"] += len(entries)
        tally.units["events.billed"] += sum(
            max(1, math.ceil(_event_size(e) / EVENTS_CHUNK_BYTES)) for e in entries
        )
    elif service == "sqs" and operation == "SendMessage":
        tally.units["sqs.sent"] += 1
    elif service == "sqs" and operation == "SendMessageBatch":
        tally.units["sqs.sent"] += len(params.get("Entries", []))
    elif service == "s3" and operation in ("PutObject", "UploadPart"):
        tally.units["s3.put_bytes"] += _body_size(params.get("Body", b""))
    elif service == "s3" and operation == "GetObject":
        tally.units["s3.get_bytes"] += int(parsed.get("ContentLength", 0) or 0)
    elif service == "logs" and operation == "PutLogEvents":
        tally.units["logs.bytes"] += sum(
            len(e.get("message", "").encode()) for e in params.get("logEvents", [])
        )
    capacity = parsed.get("ConsumedCapacity")
    for entry in capacity if isinstance(capacity, list) else [capacity] if capacity else []:
        table = str(entry.get("TableName", "?"))
        tally.reported[table] = tally.reported.get(table, 0.0) + float(entry.get("CapacityUnits", 0) or 0)


def _body_size(body: Any) -> int:
    """Bytes of a request body: bytes, text, or a seekable file (botocore wraps bytes in one)."""
    if isinstance(body, bytes | bytearray | memoryview):
        return len(body)
    if isinstance(body, str):
        return len(body.encode())
    if hasattr(body, "getbuffer"):
        return len(body.getbuffer())
    if hasattr(body, "seek") and hasattr(body, "tell"):
        position = body.tell()
        size = int(body.seek(0, 2))
        body.seek(position)
        return size
    return 0


def _event_size(entry: Mapping[str, Any]) -> int:
    """An event entry's size as EventBridge bills it (detail, type, source, resources, time)."""
    text = sum(len(str(entry.get(k, "")).encode()) for k in ("Detail", "DetailType", "Source"))
    return text + sum(len(r.encode()) for r in entry.get("Resources", [])) + (14 if "Time" in entry else 0)


# ---------------------------------------------------------------- DynamoDB actions
def _record_dynamodb(
    tally: Tally, operation: str, params: Mapping[str, Any], parsed: Mapping[str, Any], *, ok: bool
) -> None:
    if operation == "TransactWriteItems":
        for action in params.get("TransactItems", []):
            ((kind, body),) = action.items()
            tally.writes.append(_write(kind, body, transactional=True, ok=ok))
    elif operation in ("PutItem", "UpdateItem", "DeleteItem"):
        tally.writes.append(_write(operation.removesuffix("Item"), params, transactional=False, ok=ok))
    elif operation == "BatchWriteItem":
        for table, requests in params.get("RequestItems", {}).items():
            for request in requests:
                ((kind, body),) = request.items()
                kind = "Put" if kind == "PutRequest" else "Delete"
                tally.writes.append(_write(kind, {"TableName": table, **body}, transactional=False, ok=ok))
    elif operation in ("GetItem", "BatchGetItem", "TransactGetItems", "Query", "Scan") and ok:
        tally.reads.extend(_reads(operation, params, parsed))


def _write(kind: str, body: Mapping[str, Any], *, transactional: bool, ok: bool) -> dict[str, Any]:
    op = "check" if kind == "ConditionCheck" else kind.lower()
    record: dict[str, Any] = {"op": op, "table": body["TableName"], "tx": transactional, "ok": ok}
    if kind == "Put":
        record["item"] = _jsonable(body["Item"])
    else:
        record["key"] = _jsonable(body["Key"])
    if kind == "Update":
        record["touched"] = sorted(_updated_names(body))
    return record


def _reads(operation: str, params: Mapping[str, Any], parsed: Mapping[str, Any]) -> list[dict[str, Any]]:
    if operation == "GetItem":
        found = [parsed["Item"]] if "Item" in parsed else []
        return [_read("get", params, keys=[params["Key"]], found=found)]
    if operation == "BatchGetItem":
        return [
            _read(
                "batch_get", {"TableName": table, **spec}, keys=spec["Keys"], found=parsed["Responses"][table]
            )
            for table, spec in params.get("RequestItems", {}).items()
        ]
    if operation == "TransactGetItems":
        gets = [g["Get"] for g in params.get("TransactItems", [])]
        answers = parsed.get("Responses", [])
        return [
            {
                **_read("transact_get", g, keys=[g["Key"]], found=[a["Item"]] if "Item" in a else []),
                "tx": True,
            }
            for g, a in zip(gets, answers, strict=False)
        ]
    record = _read(operation.lower(), params, keys=[], found=parsed.get("Items", []))
    record["index"] = params.get("IndexName")
    record["scanned"] = int(parsed.get("ScannedCount", parsed.get("Count", 0)))
    return [record]


def _read(
    op: str, params: Mapping[str, Any], *, keys: list[Any], found: list[Mapping[str, Any]]
) -> dict[str, Any]:
    projected = bool(params.get("ProjectionExpression") or params.get("AttributesToGet"))
    return {
        "op": op,
        "table": params["TableName"],
        "consistent": bool(params.get("ConsistentRead", False)),
        "keys": [_jsonable(k) for k in keys],
        "sizes": [item_size(item) for item in found],  # as returned (a projection returns less)
        "projected": projected,
        "tx": False,
    }


_CLAUSE = re.compile(r"\b(SET|REMOVE|ADD|DELETE)\b", re.IGNORECASE)


def _updated_names(body: Mapping[str, Any]) -> set[str]:
    """The top-level attributes an UpdateItem (or transactional Update) assigns or removes."""
    if "AttributeUpdates" in body:
        return set(body["AttributeUpdates"])
    names = body.get("ExpressionAttributeNames", {})
    expression = body.get("UpdateExpression", "")
    parts = _CLAUSE.split(expression)
    touched = set()
    for keyword, clause in zip(parts[1::2], parts[2::2], strict=False):
        for action in _top_level_split(clause):
            target = action.split("=", 1)[0] if keyword.upper() == "SET" else action.split()[0]
            head = re.split(r"[.\[]", target.strip(), maxsplit=1)[0]
            touched.add(names.get(head, head))
    return touched


def _top_level_split(clause: str) -> list[str]:
    """Split on commas outside parentheses (``list_append(#a, :b)`` is one operand)."""
    actions: list[str] = []
    current: list[str] = []
    depth = 0
    for char in clause:
        depth += (char == "(") - (char == ")")
        if char == "," and depth == 0:
            actions.append("".join(current))
            current = []
        else:
            current.append(char)
    actions.append("".join(current))
    return [a for a in actions if a.strip()]


def _jsonable(value: Any) -> Any:
    """Typed DynamoDB values as JSON: binary as base64 text, sets as lists."""
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    return value
