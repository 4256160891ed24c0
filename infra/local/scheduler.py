"""EventBridge Scheduler, locally: the template's scheduled functions, run on their schedule.

Each schedule that targets a function (an ``AWS::Scheduler::Schedule``, or a SAM
``ScheduleV2`` event: :meth:`infra.samtemplate.Template.schedule_sources`) runs the real
handler in its worker pool with the schedule's ``Input`` as the event, as the cloud does:

- ``rate(N unit)`` expressions only (``minute``, ``hour``, ``day``; singular for 1, plural
  otherwise, as EventBridge Scheduler requires). A ``cron()`` or ``at()`` schedule is not
  run locally, and the runtime says so when it starts;
- the first run comes shortly after the runtime starts (``SCHEDULE_START_DELAY_SECONDS``,
  default 60 s, so it does not compete with the first requests), then one every period.
  ``SCHEDULE_PERIOD_SECONDS`` replaces every schedule's period (tests, demos), and
  ``SCHEDULES=off`` stops them from running on their own;
- on demand, at any time: :func:`request_run` (``python -m infra.local.reconcile``) drops a
  request file in ``$LOCAL_DIR/schedules/``; the scheduler runs it within a second in the
  runtime's own worker pool and writes the function's answer beside it.

Runs happen one at a time, in the scheduler's thread: a run that is due while another is
under way starts when that one ends (the cloud would start it at once; the functions
scheduled here tolerate both).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from infra.local.workers import FunctionError
from infra.samtemplate import ScheduleSource

TICK_S = 0.5
DEFAULT_START_DELAY_S = 60.0
REQUESTS_DIR = "schedules"
_UNITS = {"minute": 60, "hour": 3600, "day": 86400}
_RATE = re.compile(r"rate\(\s*(?P<value>\d+)\s+(?P<unit>[a-z]+)\s*\)")


class ScheduleError(ValueError):
    """A schedule expression the local scheduler does not run; the message says why."""


def rate_seconds(expression: str) -> float:
    """The period of ``rate(N unit)`` in seconds, validated as EventBridge Scheduler does."""
    text = expression.strip()
    if text.startswith(("cron(", "at(")):
        kind = text.split("(", 1)[0]
        raise ScheduleError(
            f"{text}: {kind}() schedules are not run by the local runtime; use rate(N minutes|hours|days), "
            "or run the function on demand"
        )
    found = _RATE.fullmatch(text)
    if found is None:
        raise ScheduleError(f"{text!r} is not a schedule expression: write rate(1 day), rate(6 hours), ...")
    value, unit = int(found["value"]), found["unit"]
    singular = unit.removesuffix("s")
    if singular not in _UNITS:
        raise ScheduleError(f"{text}: the unit must be minute(s), hour(s) or day(s)")
    if value < 1:
        raise ScheduleError(f"{text}: the value must be a positive whole number")
    if (value == 1) != (unit == singular):
        expected = singular if value == 1 else f"{singular}s"
        raise ScheduleError(f"{text}: write rate({value} {expected}) (singular for 1, plural otherwise)")
    return float(value * _UNITS[singular])


@dataclass(frozen=True)
class SchedulerOptions:
    """The environment's say over the schedules (read once, at start)."""

    enabled: bool = True  # SCHEDULES=off: no run on their own (on demand still works)
    start_delay: float = DEFAULT_START_DELAY_S  # SCHEDULE_START_DELAY_SECONDS
    period: float | None = None  # SCHEDULE_PERIOD_SECONDS: replaces every schedule's period

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> SchedulerOptions:
        period = environ.get("SCHEDULE_PERIOD_SECONDS")
        return cls(
            enabled=environ.get("SCHEDULES", "on").strip().lower() != "off",
            start_delay=float(environ.get("SCHEDULE_START_DELAY_SECONDS") or DEFAULT_START_DELAY_S),
            period=float(period) if period else None,
        )


class _Pool(Protocol):
    def invoke(self, event: Mapping[str, Any]) -> Any: ...


class _Activity(Protocol):
    def running(self) -> AbstractContextManager[None]: ...


@dataclass
class _Schedule:
    source: ScheduleSource
    period: float | None  # None: not run on its own (cron, disabled, SCHEDULES=off)
    next_run: float = 0.0
    runs: int = 0
    last_result: Any = None
    last_error: str | None = None

    @property
    def event(self) -> dict[str, Any]:
        document = json.loads(self.source.input) if self.source.input else {}
        return document if isinstance(document, dict) else {"input": document}


@dataclass
class Scheduler:
    """Runs the schedules of one local stack (see the module docstring)."""

    sources: list[ScheduleSource]
    resolve: Callable[[Any], Any]  # the stack's intrinsic-function resolver (Refs to parameters)
    pools: Mapping[str, _Pool]
    stopping: threading.Event
    request_dir: Path
    activity: _Activity | None = None
    on_run: Callable[[], None] = lambda: None
    options: SchedulerOptions = field(default_factory=SchedulerOptions)
    clock: Callable[[], float] = time.monotonic
    log: Callable[[str], None] = lambda line: print(line, flush=True)
    schedules: dict[str, _Schedule] = field(init=False)

    def __post_init__(self) -> None:
        start = self.clock() + self.options.start_delay
        self.schedules = {}
        for source in self.sources:
            period = self._period(source)
            self.schedules[source.name] = _Schedule(source, period, next_run=start)

    def _period(self, source: ScheduleSource) -> float | None:
        expression = str(self.resolve(source.expression))
        try:
            period = rate_seconds(expression)
        except ScheduleError as refused:
            self.log(f"[scheduler] {source.name} ({source.function}): {refused}")
            return None
        if not source.enabled or not self.options.enabled:
            return None
        return self.options.period or period

    def run(self) -> None:
        """The scheduler's thread: due schedules and on-demand requests, every tick."""
        self.request_dir.mkdir(parents=True, exist_ok=True)
        while not self.stopping.wait(TICK_S):
            try:
                self.tick()
            except Exception as exc:  # keep scheduling, as the managed service does
                if not self.stopping.is_set():
                    self.log(f"[scheduler] {exc!r}")

    def tick(self) -> None:
        for request in sorted(self.request_dir.glob("*.request")):
            self._serve(request)
        now = self.clock()
        for schedule in self.schedules.values():
            if schedule.period is not None and now >= schedule.next_run:
                self.invoke(schedule, schedule.event)
                schedule.next_run = self.clock() + schedule.period

    def run_now(self, function: str, event: Mapping[str, Any] | None = None) -> Any:
        """Run a scheduled function at once (its schedule's input, or ``event``); its answer."""
        schedule = self._schedule_of(function)
        if not self.invoke(schedule, dict(event) if event is not None else schedule.event):
            raise FunctionError(schedule.last_error or f"{function} failed")
        return schedule.last_result

    def invoke(self, schedule: _Schedule, event: Mapping[str, Any]) -> bool:
        pool = self.pools[schedule.source.function]
        guard = self.activity.running() if self.activity is not None else nullcontext()
        try:
            with guard:
                schedule.last_result, schedule.last_error = pool.invoke(event), None
        except Exception as exc:  # FunctionError, InvocationTimeout, a pool closed under it
            schedule.last_result, schedule.last_error = None, str(exc)
            self.log(f"[scheduler] {schedule.source.name} ({schedule.source.function}) failed: {exc}")
            return False
        finally:
            schedule.runs += 1
            self.on_run()
        return True

    def _schedule_of(self, function: str) -> _Schedule:
        for schedule in self.schedules.values():
            if function in (schedule.source.function, schedule.source.name):
                return schedule
        scheduled = sorted({s.source.function for s in self.schedules.values()})
        raise LookupError(f"{function} has no schedule in template.yaml; scheduled functions: {scheduled}")

    def _serve(self, request: Path) -> None:
        """One on-demand request: ``{"function": ..., "event": ...}`` → ``<id>.result.json``."""
        try:
            document = json.loads(request.read_text(encoding="utf-8"))
            function, event = str(document["function"]), document.get("event")
            schedule = self._schedule_of(function)
        except (OSError, ValueError, KeyError, LookupError) as exc:
            answer: dict[str, Any] = {"ok": False, "error": str(exc)}
        else:
            ok = self.invoke(schedule, event if isinstance(event, dict) else schedule.event)
            answer = {"ok": ok, "function": schedule.source.function, "result": schedule.last_result}
            if not ok:
                answer["error"] = schedule.last_error
        request.unlink(missing_ok=True)
        _write_atomically(request.with_suffix(".result.json"), json.dumps(answer, default=str))


def request_run(
    local_dir: Path,
    function: str,
    *,
    event: Mapping[str, Any] | None = None,
    timeout: float = 960.0,
    poll: float = 0.2,
) -> dict[str, Any]:
    """Ask the running local runtime to run a scheduled function now; its answer
    (``{"ok": ..., "result": ...}``). Raises TimeoutError when no answer comes."""
    directory = local_dir / REQUESTS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    request = directory / f"{uuid.uuid4().hex}.request"
    document: dict[str, Any] = {"function": function}
    if event is not None:
        document["event"] = dict(event)
    _write_atomically(request, json.dumps(document))
    result = request.with_suffix(".result.json")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result.exists():
            answer: dict[str, Any] = json.loads(result.read_text(encoding="utf-8"))
            result.unlink(missing_ok=True)
            return answer
        time.sleep(poll)
    request.unlink(missing_ok=True)
    raise TimeoutError(f"no answer from the local runtime in {local_dir} within {timeout:.0f} s")


def runtime_running(local_dir: Path) -> bool:
    """Is a local runtime serving ``local_dir`` (its runtime.json names a live process)?"""
    try:
        pid = int(json.loads((local_dir / "runtime.json").read_text(encoding="utf-8"))["pid"])
        os.kill(pid, 0)
    except (OSError, ValueError, KeyError):
        return False
    return True


def _write_atomically(path: Path, text: str) -> None:
    """Write then rename, so the reader never sees half a file."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)
