"""A py-spy profile of the local runtime while one operation repeats, summed by component.

py-spy (requirements/dev.txt) samples the runtime's process and its workers from outside,
without pausing them (``--nonblocking``), only the thread that holds each interpreter's
lock (``--gil``): each sample is a moment of Python work. A sample's component is read
from its stack:

- in the runtime's process (the gateway, moto's server, the pollers, one lock for all):
  the **gateway** (infra/local/gateway.py's threads), **moto** (its werkzeug server's
  threads), split into its backend (storing items, evaluating expressions and queries),
  parsing requests and building answers (the services' ``responses`` modules, JSON and
  XML), and the HTTP server and dispatch around them; the **pollers** (change feed,
  queues); anything else;
- in the workers: the **AWS SDK** (botocore, urllib3 and the HTTP client, up to the socket),
  **our code** (the core library, the handlers, Powertools), **pydicom**, the **worker
  pipe** (pickling events and answers), the **call counter**; anything else.

Shares are in percent of one core over the time profiled: the time a thread held its
interpreter's lock, which on a busy machine includes moments it was preempted holding it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

RATE_HZ = 200

RUNTIME = "runtime"
WORKERS = "workers"
HANDLERS = "handlers"  # the workers' samples by kind of handler: API requests, or hooks

# (component, path fragments): the first component with a fragment in a frame's file wins,
# frames read from the innermost outwards.
_MOTO_PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("moto: backend", ("moto/dynamodb/models", "moto/dynamodb/parsing", "moto/dynamodb/comparisons")),
    ("moto: backend", ("moto/s3/models", "moto/sqs/models", "moto/events/models", "moto/core/base_backend")),
    ("moto: requests and answers", ("/responses.py", "json/", "xmltodict", "moto/core/serialize")),
)
_WORKER_PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("call counter", ("infra/accounting/",)),
    ("AWS SDK", ("botocore/", "boto3/", "urllib3/", "http/client.py", "ssl.py", "socket.py", "s3transfer/")),
    ("pydicom", ("pydicom/",)),
    ("worker pipe", ("multiprocessing/connection.py", "infra/local/workers.py")),
    ("our code", ("dicomweb_core/", "functions/", "aws_lambda_powertools/")),
)
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def component(frames: list[str], *, worker: bool) -> str:
    """The component of one sample's stack (outermost frame first)."""
    files = [match.group("file") if (match := _FRAME.match(f)) else "" for f in frames]
    if worker:
        for file in reversed(files):
            for name, fragments in _WORKER_PARTS:
                if any(fragment in file for fragment in fragments):
                    return name
        return "other"
    if any("infra/local/gateway.py" in f for f in files):
        return "gateway"
    if any("werkzeug/" in f or "moto/server.py" in f for f in files):
        for file in reversed(files):
            for name, fragments in _MOTO_PARTS:
                if any(fragment in file for fragment in fragments):
                    return name
        return "moto: HTTP server and dispatch"
    if any(name in f for f in files for name in ("infra/local/streams.py", "infra/local/queues.py")):
        return "pollers"
    return "other"


def _handler_kind(frames: list[str]) -> str:
    if any("dicomweb_core/entry/api.py" in frame for frame in frames):
        return "API"
    if any("dicomweb_core/entry/hooks.py" in frame for frame in frames):
        return "hooks"
    return "other"


def summarise(raw: str, *, seconds: float, rate_hz: float = RATE_HZ) -> dict[str, dict[str, float]]:
    """py-spy's raw (collapsed) output as percent of one core per component, for the runtime's
    process (the first process of each stack) and for its workers (a process below it), and
    the workers' by kind of handler: "API" (an HTTP request's), "hooks" (a queue's or a
    stream's records), "other" (between invocations)."""
    samples: dict[str, Counter[str]] = {RUNTIME: Counter(), WORKERS: Counter(), HANDLERS: Counter()}
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        processes = sum(1 for frame in frames if frame.startswith("process "))
        code = [frame for frame in frames if not frame.startswith(("process ", "thread "))]
        worker = processes > 1
        samples[WORKERS if worker else RUNTIME][component(code, worker=worker)] += int(count)
        if worker:
            samples[HANDLERS][_handler_kind(code)] += int(count)
    scale = 100.0 / (seconds * rate_hz) if seconds > 0 else 0.0
    return {side: {name: n * scale for name, n in found.most_common()} for side, found in samples.items()}


def py_spy() -> str | None:
    """The py-spy executable beside this interpreter's, or on the PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


@contextmanager
def profiled(pid: int, output: Path, *, rate_hz: int = RATE_HZ) -> Iterator[Callable[[], float]]:
    """py-spy records ``pid`` and its children while the block runs; the block gets a
    function that says how many seconds were recorded (0 when py-spy could not run)."""
    executable = py_spy()
    if executable is None:
        yield lambda: 0.0
        return
    command = [
        executable,
        "record",
        "--pid",
        str(pid),
        "--rate",
        str(rate_hz),
        "--format",
        "raw",
        "--output",
        str(output),
        "--nonblocking",
        "--gil",
        "--subprocesses",
    ]
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as process:
        time.sleep(1.0)  # py-spy attaches to each process
        started = time.monotonic()
        recorded = [0.0]
        try:
            yield lambda: recorded[0]
        finally:
            recorded[0] = time.monotonic() - started
            if process.poll() is None:
                os.kill(process.pid, signal.SIGINT)  # py-spy writes its output on an interrupt
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.returncode not in (0, -signal.SIGINT) or not output.exists():
                recorded[0] = 0.0
