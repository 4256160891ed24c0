"""Run the real Lambda handlers in worker processes, one execution environment each.

A worker is what Lambda gives a function: its own process with the function's
environment variables, its code directory and its layers on ``sys.path`` (as
``/opt/python`` would be), a cold start on first use, one invocation at a time, and a
hard timeout after which the environment is destroyed.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

_SPAWN = multiprocessing.get_context("spawn")


class InvocationTimeout(Exception):
    """The handler ran longer than the function's timeout."""


class FunctionError(Exception):
    """The handler raised (Lambda reports an unhandled error)."""


@dataclass(frozen=True)
class FunctionConfig:
    name: str
    handler: str  # module.function
    code_dir: Path
    layer_dirs: tuple[Path, ...]  # each holds a python/ directory, as Lambda mounts /opt
    environment: Mapping[str, str]
    timeout: float
    memory_mb: int


class _Context:
    """The parts of the Lambda context object that handlers and Powertools use."""

    def __init__(self, config: FunctionConfig, deadline: float) -> None:
        self.function_name = config.name
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = config.memory_mb
        self.invoked_function_arn = f"arn:aws:lambda:local:123456789012:function:{config.name}"
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{config.name}"
        self.log_stream_name = "local"
        self._deadline = deadline

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


# Lambda gives a function's init phase 10 s. Locally a dozen pools start at once, beside
# whatever else the machine runs (CI, a loaded laptop), and importing numpy and pydicom has
# taken longer than that: an init time limit here would only make the runtime flaky.
LOCAL_INIT_TIMEOUT_S = 60.0


def _worker_main(config: FunctionConfig, connection: Connection) -> None:
    """The body of a worker process: import the handler once, then serve invocations."""
    os.environ.update(config.environment)
    # A spawned child re-imports the parent's __main__, which may have imported the
    # core already with the parent's environment: start the function from a cold state.
    for name in [n for n in sys.modules if n == "dicomweb_core" or n.startswith("dicomweb_core.")]:
        del sys.modules[name]
    for layer in config.layer_dirs:
        sys.path.insert(0, str(layer / "python"))
    sys.path.insert(0, str(config.code_dir))
    module_name, function_name = config.handler.rsplit(".", 1)
    try:
        # Opt-in (COUNT_BACKEND_CALLS, set by `make bench`): count the AWS calls of each
        # invocation; installed before the import so the handler's clients are counted too.
        recorder = _backend_call_recorder(config.name)
        module = __import__(module_name)
        handler = getattr(module, function_name)
        if recorder is not None:
            handler = recorder.wrap(handler)
        connection.send(("ready", None))
    except BaseException:
        connection.send(("init_error", traceback.format_exc()))
        return
    while True:
        try:
            event = connection.recv()
        except EOFError:
            return
        context = _Context(config, time.monotonic() + config.timeout)
        try:
            connection.send(("ok", handler(event, context)))
        except BaseException:
            connection.send(("error", traceback.format_exc()))


def _backend_call_recorder(function: str) -> Any:
    """infra.accounting's per-invocation recorder when COUNT_BACKEND_CALLS is set, else None."""
    if not os.environ.get("COUNT_BACKEND_CALLS"):
        return None
    from infra.accounting.invocations import recorder_from_environment  # noqa: PLC0415

    return recorder_from_environment(function)


class _Environment:
    """One warm execution environment (a worker process)."""

    def __init__(self, config: FunctionConfig) -> None:
        self.config = config
        self.connection, child = _SPAWN.Pipe()
        self.process = _SPAWN.Process(target=_worker_main, args=(config, child), daemon=True)
        self.process.start()
        child.close()
        self._ready = False

    def wait_ready(self, init_timeout: float) -> None:
        """Wait for the cold start (Lambda allows 10 s of init) to finish."""
        if self._ready:
            return
        if not self.connection.poll(init_timeout):
            raise InvocationTimeout(f"{self.config.name} did not initialise in {init_timeout} s")
        status, detail = self.connection.recv()
        if status != "ready":
            raise FunctionError(f"{self.config.name} failed to initialise:\n{detail}")
        self._ready = True

    def invoke(self, event: Mapping[str, Any], *, init_timeout: float) -> Any:
        self.wait_ready(init_timeout)
        self.connection.send(dict(event))
        if not self.connection.poll(self.config.timeout):
            raise InvocationTimeout(f"{self.config.name} timed out after {self.config.timeout} s")
        status, detail = self.connection.recv()
        if status != "ok":
            raise FunctionError(detail)
        return detail

    def destroy(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)
        self.connection.close()


class FunctionPool:
    """Up to ``max_concurrency`` environments of one function, reused while warm."""

    def __init__(
        self,
        config: FunctionConfig,
        *,
        max_concurrency: int = 4,
        init_timeout: float = LOCAL_INIT_TIMEOUT_S,
    ) -> None:
        self.config = config
        self.init_timeout = init_timeout
        self._idle: queue.LifoQueue[_Environment] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._all: list[_Environment] = []
        self._lock = threading.Lock()

    def invoke(self, event: Mapping[str, Any]) -> Any:
        with self._slots:
            environment = self._acquire()
            try:
                result = environment.invoke(event, init_timeout=self.init_timeout)
            except (InvocationTimeout, FunctionError, EOFError, OSError) as exc:
                # A timed-out or crashed environment is discarded, as Lambda does.
                self._discard(environment)
                if isinstance(exc, EOFError | OSError):
                    raise FunctionError(f"{self.config.name} environment crashed: {exc!r}") from exc
                raise
            self._idle.put(environment)
            return result

    def warm_up(self) -> None:
        """Start one environment and wait for its init, so the first request is not cold."""
        with self._slots:
            environment = self._acquire()
            try:
                environment.wait_ready(self.init_timeout)
            except Exception:
                self._discard(environment)
                raise
            self._idle.put(environment)

    def close(self) -> None:
        with self._lock:
            for environment in self._all:
                environment.destroy()
            self._all.clear()

    def _acquire(self) -> _Environment:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            environment = _Environment(self.config)
            with self._lock:
                self._all.append(environment)
            return environment

    def _discard(self, environment: _Environment) -> None:
        environment.destroy()
        with self._lock:
            if environment in self._all:
                self._all.remove(environment)


def function_pools(configs: Sequence[FunctionConfig], **options: Any) -> dict[str, FunctionPool]:
    return {config.name: FunctionPool(config, **options) for config in configs}
