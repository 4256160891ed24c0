"""Where an operation's wall time goes in the local runtime, from the records of one window.

A client operation (one DICOMweb call of the bench's client, or one STOW-RS request) is
timed by the client. Inside the window it was measured in, the gateway's records
(:mod:`infra.accounting.gateway`) and the workers' (:mod:`infra.accounting.invocations`),
joined by request id, split that time, per operation, into:

- **client side**: what the client measured minus the gateway's time for the operation's
  requests: the client library (encoding a STOW-RS body, parsing an answer), the loopback
  connection, and whatever the gateway did before it had read the request's headers;
- **gateway**: the local API gateway's own part of each request (reading the body, the
  authorizer, building the event, the payload checks, writing the answer), and object
  links answered by the gateway itself (a series body served from moto's memory);
- **worker exchange**: the invocation as the gateway waited for it, minus the handler's
  run: the event and the answer pickled through the worker's pipe, the worker's record;
- **handler, own code**: the handler's run minus its time in AWS calls (wall time with at
  least one call open) and minus the call counter's own bookkeeping;
- **AWS calls**: that wall time, with the calls behind it per service and operation, each
  with its count and summed time (more than the wall time when calls ran in parallel).

Invocations in the window that answer no request of the window (hooks fed by the change
feed and the queues) are listed apart: they are work that competed for the machine's cores.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from infra.accounting.gateway import GatewayRecord
from infra.accounting.invocations import Invocation


@dataclass
class Breakdown:
    """Mean milliseconds per client operation (``operations`` of them), and what they did."""

    operations: int
    client_ms: float  # what the client measured
    requests: float  # HTTP requests the gateway answered
    gateway_ms: float  # the gateway's own part (object links it answered included)
    exchange_ms: float
    own_ms: float  # the handlers' own code
    aws_ms: float  # wall time in AWS calls
    hook_ms: float  # the call counter's bookkeeping (left out of the handlers' own code)
    calls: dict[str, float] = field(default_factory=dict)  # "dynamodb.Query" -> calls
    call_ms: dict[str, float] = field(default_factory=dict)  # "dynamodb.Query" -> summed ms
    wire_ms: dict[str, float] = field(default_factory=dict)  # of which on the wire
    units: dict[str, float] = field(default_factory=dict)  # "s3.get_bytes" -> bytes, ...
    functions: dict[str, float] = field(default_factory=dict)  # function -> invocations
    handler_ms: dict[str, float] = field(default_factory=dict)  # function -> handler ms
    proxied: float = 0.0  # requests the gateway answered itself (object links)
    proxied_bytes: float = 0.0  # bytes of those answers
    request_bytes: float = 0.0
    response_bytes: float = 0.0
    background: dict[str, tuple[float, float]] = field(default_factory=dict)  # function -> (n, ms)

    @property
    def server_ms(self) -> float:
        """The gateway's time for the operation's requests: everything but the client side."""
        return self.gateway_ms + self.exchange_ms + self.own_ms + self.aws_ms + self.hook_ms

    @property
    def client_side_ms(self) -> float:
        return max(0.0, self.client_ms - self.server_ms)

    @property
    def aws_calls(self) -> float:
        return sum(self.calls.values())

    def by_service(self) -> dict[str, tuple[float, float]]:
        """Per service: calls and summed ms per operation."""
        services: dict[str, tuple[float, float]] = {}
        for name, count in self.calls.items():
            service = name.split(".", 1)[0]
            calls, ms = services.get(service, (0.0, 0.0))
            services[service] = (calls + count, ms + self.call_ms.get(name, 0.0))
        return services

    def summary(self) -> str:
        """One sentence: "28.9 ms per request, of which 3 DynamoDB calls took 21.0 ms ...".

        "On the wire": from sending a call's request to having read its answer (moto serving
        it, loopback); the rest of a call's time is the SDK's own work in the worker."""
        calls = ", ".join(
            f"{_number(count)} {SERVICE_NAMES.get(service, service)} call{'s' if count != 1 else ''} "
            f"took {ms:.1f} ms"
            for service, (count, ms) in sorted(self.by_service().items(), key=lambda kv: -kv[1][1])
        )
        wire = sum(self.wire_ms.values())
        summed = sum(self.call_ms.values())
        on_wire = f", {wire / summed:.0%} of the calls' time on the wire" if summed else ""
        return (
            f"{self.client_ms:.1f} ms per request, of which {calls or 'no AWS call'}"
            f" ({self.aws_ms:.1f} ms of wall time in AWS calls{on_wire});"
            f" handler's own code {self.own_ms:.1f} ms,"
            f" gateway {self.gateway_ms:.1f} ms, worker exchange {self.exchange_ms:.1f} ms,"
            f" client side {self.client_side_ms:.1f} ms"
        )


SERVICE_NAMES = {"dynamodb": "DynamoDB", "s3": "S3", "sqs": "SQS", "events": "EventBridge"}


def _number(value: float) -> str:
    return f"{value:.0f}" if abs(value - round(value)) < 0.05 else f"{value:.1f}"


def breakdown(
    client_ms: Sequence[float], gateway: Sequence[GatewayRecord], invocations: Sequence[Invocation]
) -> Breakdown:
    """The split of ``client_ms`` (one figure per client operation) over the records of the
    window those operations ran in."""
    if not client_ms:
        raise ValueError("no client operation was measured")
    n = len(client_ms)
    answered = {invocation.request_id: invocation for invocation in invocations if invocation.request_id}
    gateway_ms = exchange_ms = own_ms = aws_ms = hook_ms = 0.0
    proxied = proxied_bytes = request_bytes = response_bytes = 0.0
    calls: Counter[str] = Counter()
    call_ms: dict[str, float] = {}
    wire_ms: dict[str, float] = {}
    units: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    handler_ms: dict[str, float] = {}
    seen: set[str] = set()
    for record in gateway:
        gateway_ms += record.total_ms - record.invoke_ms
        request_bytes += record.request_bytes
        response_bytes += record.response_bytes
        if record.function is None:
            proxied += 1
            proxied_bytes += record.response_bytes
            continue
        invocation = answered.get(record.request_id or "")
        if invocation is None:  # no worker record (counting off in that worker): all exchange
            exchange_ms += record.invoke_ms
            continue
        seen.add(invocation.request_id or "")
        tally = invocation.tally
        exchange_ms += max(0.0, record.invoke_ms - invocation.duration_ms)
        own_ms += invocation.own_ms
        aws_ms += tally.aws_ms
        hook_ms += max(0.0, min(tally.hook_ms, invocation.duration_ms - tally.aws_ms))
        calls.update(tally.calls)
        units.update(tally.units)
        for mine, theirs in ((call_ms, tally.call_ms), (wire_ms, tally.wire_ms)):
            for name, ms in theirs.items():
                mine[name] = mine.get(name, 0.0) + ms
        functions[invocation.function] += 1
        handler_ms[invocation.function] = handler_ms.get(invocation.function, 0.0) + invocation.duration_ms
    background: dict[str, tuple[float, float]] = {}
    for invocation in invocations:
        if invocation.request_id in seen:
            continue
        count, ms = background.get(invocation.function, (0.0, 0.0))
        background[invocation.function] = (count + 1, ms + invocation.duration_ms)
    return Breakdown(
        operations=n,
        client_ms=sum(client_ms) / n,
        requests=len(gateway) / n,
        gateway_ms=gateway_ms / n,
        exchange_ms=exchange_ms / n,
        own_ms=own_ms / n,
        aws_ms=aws_ms / n,
        hook_ms=hook_ms / n,
        calls={name: count / n for name, count in calls.items()},
        call_ms={name: ms / n for name, ms in call_ms.items()},
        wire_ms={name: ms / n for name, ms in wire_ms.items()},
        units={name: count / n for name, count in units.items()},
        functions={name: count / n for name, count in functions.items()},
        handler_ms={name: ms / n for name, ms in handler_ms.items()},
        proxied=proxied / n,
        proxied_bytes=proxied_bytes / n,
        request_bytes=request_bytes / n,
        response_bytes=response_bytes / n,
        background={name: (count / n, ms / n) for name, (count, ms) in background.items()},
    )
