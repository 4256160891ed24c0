"""Fault injection for the write paths: every AWS call a request makes is a step at which
the network or the process can fail, or another request can run.

All of botocore's clients (boto3's and pynamodb's) funnel through
``BaseClient._make_api_call``; :class:`Faults` wraps it and counts the calls while armed.
A plan names one call by its position and says what happens there:

- ``crash_before``: the process dies before the call is sent (nothing after it runs:
  every later call fails too, so no cleanup code can run either);
- ``lose_response``: the call reaches the service and takes effect, but its answer is lost
  after botocore's own retries (a ``ReadTimeoutError``); the request goes on;
- ``fail``: the service refuses the call without acting on it (throttling after
  botocore's retries); the request goes on;
- ``run_before`` / ``run_after``: another request runs to completion at that point (a
  racing writer, deterministically interleaved).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from botocore.client import BaseClient
from botocore.exceptions import ClientError, ReadTimeoutError


class Crash(BaseException):
    """The Lambda process died here: not an Exception, so no ``except Exception`` runs."""


@dataclass
class Faults:
    """Counts the AWS calls of the armed block and injects the planned fault."""

    calls: list[str] = field(default_factory=list)
    parameters: list[dict[str, Any]] = field(default_factory=list)
    _plan: tuple[str, int, Callable[[], Any] | None] | None = None
    _armed: bool = False
    _dead: bool = False

    @contextmanager
    def armed(
        self, action: str | None = None, at: int = -1, other: Callable[[], Any] | None = None
    ) -> Iterator[None]:
        """Count (and, with ``action``, disturb the ``at``-th, 0-based) calls in the block."""
        self.calls, self.parameters, self._dead, self._armed = [], [], False, True
        self._plan = (action, at, other) if action else None
        try:
            yield
        finally:
            self._armed, self._plan = False, None

    def wrap(self, real: Callable[..., Any]) -> Callable[..., Any]:
        faults = self

        def make_api_call(client: BaseClient, operation: str, params: dict[str, Any]) -> Any:
            if not faults._armed:
                return real(client, operation, params)
            if faults._dead:
                raise Crash(f"{operation} after the process died")
            position = len(faults.calls)
            faults.calls.append(operation)
            faults.parameters.append(params)
            action, at, other = faults._plan or (None, -1, None)
            if position != at:
                return real(client, operation, params)
            if action == "crash_before":
                faults._dead = True
                raise Crash(f"died before {operation}")
            if action == "fail":
                error = {"Code": "ThrottlingException", "Message": "Rate exceeded (injected)"}
                raise ClientError({"Error": error}, operation)
            if action == "run_before":
                faults._run(other)
                return real(client, operation, params)
            result = real(client, operation, params)
            if action == "lose_response":
                raise ReadTimeoutError(endpoint_url=f"{operation} (the answer was lost)")
            if action == "run_after":
                faults._run(other)
            return result

        return make_api_call

    def _run(self, other: Callable[[], Any] | None) -> None:
        """The racing request runs unobserved (its own calls are neither counted nor disturbed)."""
        assert other is not None
        self._armed = False
        try:
            other()
        finally:
            self._armed = True


def install(monkeypatch: pytest.MonkeyPatch) -> Faults:
    """A :class:`Faults` wrapped around every botocore client for one test."""
    injector = Faults()
    monkeypatch.setattr(BaseClient, "_make_api_call", injector.wrap(BaseClient._make_api_call))
    return injector


# Crashes last: they may leave unreferenced objects, which the orphan check then allows.
FAULTS = ("fail", "lose_response", "crash_before")
