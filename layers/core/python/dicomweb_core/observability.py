"""Powertools Logger (JSON, correlation id), Metrics (EMF) and Tracer shared by handlers.

Tracing never records what a function returns or raises. Powertools' Tracer puts a
decorated function's response and exception into the X-Ray subsegment's metadata by
default; here those are QIDO result sets and DICOM JSON metadata (names, patient IDs,
birth dates), retrieved bytes, and errors that may quote request values. X-Ray is not
a store for PHI (it has its own retention and its own readers), so both captures are off
twice over: template.yaml sets ``POWERTOOLS_TRACER_CAPTURE_RESPONSE`` and
``POWERTOOLS_TRACER_CAPTURE_ERROR`` to ``false`` for every function, and :class:`PhiSafeTracer`
turns them off in the decorators themselves, so a function deployed without that
environment, or a new handler, cannot turn them back on. Timings, cold starts and the
AWS SDK calls are still traced.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, overload

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit

AnyCallable = TypeVar("AnyCallable", bound=Callable[..., Any])

_REFUSED = "responses and errors carry PHI and are never captured into traces"


def _refuse(capture_response: bool | None, capture_error: bool | None) -> None:
    if capture_response or capture_error:
        raise ValueError(_REFUSED)


class PhiSafeTracer(Tracer):
    """A Tracer whose decorators never put a response or an exception into trace metadata.

    ``capture_response`` and ``capture_error`` are always passed to Powertools as
    ``False``, which takes precedence over the ``POWERTOOLS_TRACER_CAPTURE_*`` environment;
    asking for ``True`` is refused."""

    def capture_lambda_handler(
        self,
        lambda_handler: Callable[..., Any] | None = None,
        capture_response: bool | None = None,
        capture_error: bool | None = None,
    ) -> Callable[..., Any]:
        _refuse(capture_response, capture_error)
        return super().capture_lambda_handler(lambda_handler, capture_response=False, capture_error=False)

    @overload
    def capture_method(self, method: AnyCallable) -> AnyCallable: ...

    @overload
    def capture_method(
        self,
        method: None = None,
        capture_response: bool | None = None,
        capture_error: bool | None = None,
    ) -> Callable[[AnyCallable], AnyCallable]: ...

    def capture_method(
        self,
        method: Any = None,
        capture_response: bool | None = None,
        capture_error: bool | None = None,
    ) -> Any:
        _refuse(capture_response, capture_error)
        return super().capture_method(method, capture_response=False, capture_error=False)


logger = Logger()
metrics = Metrics()
tracer = PhiSafeTracer()

__all__ = ["MetricUnit", "PhiSafeTracer", "logger", "metrics", "tracer"]
