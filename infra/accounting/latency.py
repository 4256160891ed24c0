"""What an operation measured locally would take on the cloud path: assumed AWS latencies.

The local runtime answers every AWS call from moto on loopback, and the gateway and the
workers share two cores with it. :func:`cloud_estimate` keeps what does not depend on
where the stack runs (the client's own work, the handlers' own code, the number and
kind of AWS calls an operation makes) and prices the rest at typical in-region figures:

- **DynamoDB**: AWS states single-digit millisecond service-side latency ("Understanding
  Amazon DynamoDB latency", AWS Database Blog; the ``SuccessfulRequestLatency`` metric).
  A call from Lambda in the same region adds the SDK's work and a network round trip:
  we take 5 ms for one-item calls, 8 ms for calls that read or write many items (Query,
  BatchGetItem, BatchWriteItem) and 12 ms for transactions (two-phase, twice the units).
- **S3**: "median latencies are often in the tens of milliseconds" for requests under
  512 KB (AWS whitepaper "Best Practices Design Patterns: Optimizing Amazon S3
  Performance", Timeouts and Retries for Latency-Sensitive Applications): 20 ms to the
  first byte of a GET or the answer to a HEAD, 30 ms for a PUT, plus the bytes at 90 MB/s,
  a single connection's typical throughput between EC2 or Lambda and S3 in one region.
- **API Gateway HTTP API and a warm Lambda invocation**: AWS publishes no figure; the
  difference between the API's ``Latency`` and ``IntegrationLatency`` metrics plus
  Lambda's invoke path is commonly a few milliseconds each: we take 10 ms per request,
  plus the request and answer bodies at 50 MB/s (through both hops, base64 in the event).
- **Object links** (a large retrieval's body, served through the API's own host from the
  bucket): S3's first byte and throughput, as above.
- **Lambda CPU**: "at 1,769 MB, a function has the equivalent of one vCPU", less in
  proportion below it (Lambda Developer Guide, "Configuring Lambda function memory"); the
  handlers' own code measured here on one local core is scaled by 1,769 / MemorySize for
  smaller functions (an upper bound: short bursts are not always throttled).
- SQS and EventBridge calls, and any other: 10 ms and 20 ms, 10 ms.

Calls that ran in parallel locally are assumed to overlap in the same proportion in the
cloud (the ratio of their wall time to their summed time). No cold start, no client
network: the estimate is for a client in the same region as the stack, against warm
functions; a client across the internet adds its round trips and transfer time to both
figures alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from infra.accounting.breakdown import Breakdown

ONE_VCPU_MB = 1769  # Lambda's memory size with one full vCPU


@dataclass(frozen=True)
class CloudLatencies:
    """The assumed figures (see the module docstring for where they come from)."""

    request_ms: float = 10.0  # API Gateway HTTP API + warm Lambda invoke, per request
    payload_mb_s: float = 50.0  # request and answer bodies through API Gateway and Lambda
    object_first_byte_ms: float = 20.0  # an object link's body from S3
    object_mb_s: float = 90.0
    s3_mb_s: float = 90.0  # bytes of S3 GETs and PUTs made by the handlers
    default_call_ms: float = 10.0
    call_ms: Mapping[str, float] = field(
        default_factory=lambda: {
            "dynamodb.GetItem": 5.0,
            "dynamodb.PutItem": 5.0,
            "dynamodb.UpdateItem": 5.0,
            "dynamodb.DeleteItem": 5.0,
            "dynamodb.Query": 8.0,
            "dynamodb.Scan": 8.0,
            "dynamodb.BatchGetItem": 8.0,
            "dynamodb.BatchWriteItem": 8.0,
            "dynamodb.TransactWriteItems": 12.0,
            "dynamodb.TransactGetItems": 12.0,
            "s3.GetObject": 20.0,
            "s3.HeadObject": 20.0,
            "s3.PutObject": 30.0,
            "s3.CopyObject": 30.0,
            "s3.UploadPartCopy": 30.0,
            "sqs.SendMessage": 10.0,
            "sqs.SendMessageBatch": 10.0,
            "events.PutEvents": 20.0,
        }
    )

    def latency_of(self, call: str) -> float:
        return self.call_ms.get(call, self.default_call_ms)


@dataclass(frozen=True)
class CloudEstimate:
    """Milliseconds per client operation on the cloud path, by part."""

    client_side_ms: float  # the client's own work, as measured locally
    api_ms: float  # API Gateway + Lambda invocations, and the bodies through them
    own_ms: float  # the handlers' own code at their Lambda CPU share
    aws_ms: float  # the same AWS calls at in-region latencies
    objects_ms: float  # object links served from S3

    @property
    def total_ms(self) -> float:
        return self.client_side_ms + self.api_ms + self.own_ms + self.aws_ms + self.objects_ms


def cloud_estimate(
    measured: Breakdown,
    memory_mb: Mapping[str, int],
    latencies: CloudLatencies | None = None,
) -> CloudEstimate:
    """The cloud path's time per client operation for what ``measured`` did locally.

    ``memory_mb``: each function's MemorySize (template.yaml), for its CPU share."""
    assumed = latencies or CloudLatencies()
    invoked = measured.requests - measured.proxied
    body_mb = (measured.request_bytes + measured.response_bytes - measured.proxied_bytes) / 1e6
    api_ms = invoked * assumed.request_ms + body_mb / assumed.payload_mb_s * 1000
    # The handlers' own code, per function, at its CPU share (the counter's bookkeeping aside).
    handler_total = sum(measured.handler_ms.values())
    own_ms = 0.0
    for function, ms in measured.handler_ms.items():
        share = ms / handler_total if handler_total else 0.0
        scale = max(1.0, ONE_VCPU_MB / memory_mb.get(function, ONE_VCPU_MB))
        own_ms += measured.own_ms * share * scale
    summed = sum(measured.call_ms.values())
    overlap = measured.aws_ms / summed if summed else 1.0
    s3_mb = (measured.units.get("s3.get_bytes", 0.0) + measured.units.get("s3.put_bytes", 0.0)) / 1e6
    calls_ms = sum(count * assumed.latency_of(name) for name, count in measured.calls.items())
    aws_ms = (calls_ms + s3_mb / assumed.s3_mb_s * 1000) * min(1.0, overlap)
    objects_ms = (
        measured.proxied * assumed.object_first_byte_ms
        + measured.proxied_bytes / 1e6 / assumed.object_mb_s * 1000
    )
    return CloudEstimate(measured.client_side_ms, api_ms, own_ms, aws_ms, objects_ms)
