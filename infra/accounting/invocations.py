"""Backend calls per Lambda invocation in the local runtime (opt-in: ``COUNT_BACKEND_CALLS``).

With ``COUNT_BACKEND_CALLS`` set, each worker process (infra/local/workers.py) installs a
:class:`~infra.accounting.calls.CallCounter` before it imports its handler, and appends one
JSON line per invocation to ``<dir>/<function>-<pid>.jsonl``: what triggered it (the API
route and the gateway's request id, or the queue and its message count), when, how long
the handler ran, and the calls it made and the time they took (the first invocation also
carries the calls of the cold start, made while the handler's module was imported).
``COUNT_BACKEND_CALLS`` names the directory; ``1`` means ``$LOCAL_DIR/backend-calls``.

A file per worker rather than an extra field in the worker's answer: the pipe protocol, the
gateway and the queue pollers stay as they are, a worker never interleaves with another,
and the record is on disk before the answer leaves the worker, so whoever sees the
response can read its calls. ``python -m infra.accounting [dir]`` prints them per route.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.accounting.calls import CallCounter, Tally

ENVIRONMENT_VARIABLE = "COUNT_BACKEND_CALLS"
DEFAULT_DIRECTORY = "backend-calls"  # under $LOCAL_DIR


def calls_directory(setting: str) -> Path:
    """The directory a ``COUNT_BACKEND_CALLS`` value names."""
    if setting.lower() in ("1", "true", "on", "yes"):
        return Path(os.environ.get("LOCAL_DIR", ".local")) / DEFAULT_DIRECTORY
    return Path(setting)


def request_id_of(event: Any) -> str | None:
    """The gateway's id of the request an API event carries, None for other events."""
    context = event.get("requestContext") if isinstance(event, Mapping) else None
    request_id = context.get("requestId") if isinstance(context, Mapping) else None
    return str(request_id) if request_id else None


def trigger_of(event: Mapping[str, Any]) -> tuple[str, int]:
    """What an invocation answers: ``("POST /studies", 0)`` or ``("sqs:<queue>", messages)``."""
    records = event.get("Records")
    if isinstance(records, list) and records:
        source = str(records[0].get("eventSourceARN", records[0].get("eventSource", "?")))
        return f"sqs:{source.rsplit(':', 1)[-1]}", len(records)
    if "routeKey" in event:
        return str(event["routeKey"]), 0
    return str(event.get("detail-type", "direct")), 0


@dataclass
class Invocation:
    function: str
    trigger: str
    messages: int
    started: float  # seconds since the epoch
    duration_ms: float
    ok: bool
    tally: Tally
    request_id: str | None = None  # the API event's requestContext.requestId

    @property
    def own_ms(self) -> float:
        """The handler's time outside AWS calls and outside the counter's bookkeeping."""
        return max(0.0, self.duration_ms - self.tally.aws_ms - self.tally.hook_ms)

    def to_json(self) -> dict[str, Any]:
        return {
            "function": self.function,
            "trigger": self.trigger,
            "messages": self.messages,
            "started": self.started,
            "duration_ms": self.duration_ms,
            "ok": self.ok,
            "request_id": self.request_id,
            **self.tally.to_json(),
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> Invocation:
        return cls(
            function=document["function"],
            trigger=document["trigger"],
            messages=int(document.get("messages", 0)),
            started=float(document["started"]),
            duration_ms=float(document["duration_ms"]),
            ok=bool(document.get("ok", True)),
            tally=Tally.from_json(document),
            request_id=document.get("request_id"),
        )


class InvocationRecorder:
    """Counts one worker's calls and writes a record per invocation."""

    def __init__(self, function: str, directory: Path) -> None:
        self.function = function
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{function}-{os.getpid()}.jsonl"
        self.counter = CallCounter()
        self.counter.install()

    def wrap(self, handler: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        """The handler, recording each invocation's calls and duration."""

        def counted(event: Any, context: Any) -> Any:
            trigger, messages = trigger_of(event) if isinstance(event, Mapping) else ("direct", 0)
            started, clock, ok = time.time(), time.perf_counter(), False
            try:
                with self.counter.operation(trigger):
                    result = handler(event, context)
                ok = True
                return result
            finally:
                duration = (time.perf_counter() - clock) * 1000
                tally = Tally()
                for part in self.counter.take().values():
                    tally.merge(part)
                self._write(
                    Invocation(
                        self.function, trigger, messages, started, duration, ok, tally, request_id_of(event)
                    )
                )

        return counted

    def _write(self, invocation: Invocation) -> None:
        line = (json.dumps(invocation.to_json(), separators=(",", ":")) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)


def recorder_from_environment(function: str) -> InvocationRecorder | None:
    """A recorder when ``COUNT_BACKEND_CALLS`` is set, else None (nothing is installed)."""
    setting = os.environ.get(ENVIRONMENT_VARIABLE, "")
    return InvocationRecorder(function, calls_directory(setting)) if setting else None


def load_invocations(
    directory: Path, *, since: float | None = None, until: float | None = None
) -> list[Invocation]:
    """Every recorded invocation that started in ``[since, until)``, oldest first."""
    invocations = []
    for path in sorted(directory.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                invocation = Invocation.from_json(json.loads(line))
            except (ValueError, KeyError):
                continue  # a line being written right now
            if (since is None or invocation.started >= since) and (
                until is None or invocation.started < until
            ):
                invocations.append(invocation)
    return sorted(invocations, key=lambda i: i.started)


def per_trigger(invocations: Iterable[Invocation]) -> dict[tuple[str, str], list[Invocation]]:
    groups: dict[tuple[str, str], list[Invocation]] = defaultdict(list)
    for invocation in invocations:
        groups[(invocation.function, invocation.trigger)].append(invocation)
    return dict(groups)


def summary(invocations: Iterable[Invocation]) -> str:
    """A Markdown table: per function and trigger, invocations, their mean duration and the
    part of it in AWS calls, and the mean calls per invocation."""
    rows = []
    for (function, trigger), group in sorted(per_trigger(invocations).items()):
        tally = Tally()
        for invocation in group:
            tally.merge(invocation.tally)
        calls = ", ".join(f"{name} {count / len(group):.1f}" for name, count in sorted(tally.calls.items()))
        mean_ms = sum(i.duration_ms for i in group) / len(group)
        aws_ms = tally.aws_ms / len(group)
        rows.append(
            f"| {function} | `{trigger}` | {len(group)} | {mean_ms:.0f} | {aws_ms:.0f} | {calls or '-'} |"
        )
    return "\n".join(
        [
            "| function | trigger | invocations | mean ms | of which in AWS calls | calls per invocation |",
            "|---|---|---|---|---|---|",
            *rows,
        ]
    )
