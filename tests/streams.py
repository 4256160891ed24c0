"""The index tables' streams in tests: what Lambda's DynamoDB event source mappings deliver.

In the cloud (and in `make serve`) ``InstanceStored`` reaches the bus from the table's stream,
through ChangeFeedFunction, a moment after the commit. :func:`deliver_stream` does that step
in-process: it reads moto's streams with the local runtime's own poller (the event source
mappings of template.yaml, their batch size, partial failures, retries and checkpoints) and
runs the change feed's handler code with the environment the template gives the function.
Each call delivers what was committed since the previous one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import boto3

from dicomweb_core.changefeed.feed import ChangeFeed
from dicomweb_core.index.aggregates import Aggregates, touched_in
from infra.local.provision import Stack
from infra.local.streams import StreamPoller, StreamPositions
from infra.local.workers import FunctionError
from infra.samtemplate import StreamSource, load_template

FUNCTION = "ChangeFeedFunction"
AGGREGATES = "AggregatesFunction"
REGION = "us-east-1"  # tests.moto_stack's
# Checkpoints of every stack's streams; a stream ARN names its table's creation, so stacks of
# different tests never share one.
_POSITIONS = StreamPositions()


class InProcess:
    """The change feed's handler, invoked in this process; records each event it is given."""

    def __init__(self, feed: ChangeFeed) -> None:
        self.feed = feed
        self.events: list[dict[str, Any]] = []

    def invoke(self, event: Mapping[str, Any]) -> Any:
        self.events.append(dict(event))
        try:
            return self.feed.handle(event["Records"]).response()
        except Exception as error:  # an unhandled error of the function, as the worker reports it
            raise FunctionError(repr(error)) from error


def template_feed(stack: Stack, **options: Any) -> ChangeFeed:
    """The change feed with ChangeFeedFunction's environment from template.yaml."""
    environment = stack.function_environment(load_template().functions()[FUNCTION])
    feed = ChangeFeed.from_environ(environment)
    for name, value in options.items():
        setattr(feed, name, value)
    return feed


def deliver_stream(
    stack: Stack, *, feed: ChangeFeed | None = None, tables: tuple[str, ...] = ()
) -> InProcess:
    """Deliver every record committed since the last delivery (of ``tables``' streams, by
    logical id; all of the template's by default), as the event source mappings would: the
    aggregates are recounted, then the change feed publishes."""
    settle(stack, tables=tables)
    invoker = InProcess(feed or template_feed(stack))
    _drain(stack, FUNCTION, invoker, tables)
    return invoker


class AggregatesInProcess:
    """AggregatesFunction's handler code, invoked in this process."""

    def __init__(self, aggregates: Aggregates | None = None) -> None:
        self.aggregates = aggregates or Aggregates()

    def invoke(self, event: Mapping[str, Any]) -> Any:
        try:
            self.aggregates.recount(touched_in(event["Records"]))
        except Exception as error:
            raise FunctionError(repr(error)) from error
        return {"batchItemFailures": []}


def settle(
    stack: Stack | None = None, *, tables: tuple[str, ...] = (), aggregates: Aggregates | None = None
) -> None:
    """Recount the studies and series that writes since the last call touched, as
    AggregatesFunction does a moment after each commit (index.aggregates). Without ``stack``:
    every table with a stream in this process's moto account."""
    if stack is not None:
        _drain(stack, AGGREGATES, AggregatesInProcess(aggregates), tables)
        return
    (source, *_) = [s for s in load_template().stream_sources() if s.function == AGGREGATES]
    dynamodb = boto3.client("dynamodb", region_name=REGION)
    for table in dynamodb.list_tables()["TableNames"]:
        stream_arn = dynamodb.describe_table(TableName=table)["Table"].get("LatestStreamArn")
        if stream_arn:
            _drain_one(source, stream_arn, AggregatesInProcess(aggregates))


def _drain(stack: Stack, function: str, invoker: Any, tables: tuple[str, ...]) -> None:
    for source in load_template().stream_sources():
        if source.function != function or (tables and source.table not in tables):
            continue
        _drain_one(
            source,
            stack.attributes[source.table]["StreamArn"],
            invoker,
            sqs=stack.client("sqs"),
            on_failure_url=stack.physical_ids[source.on_failure] if source.on_failure else None,
        )


def _drain_one(
    source: StreamSource, stream_arn: str, invoker: Any, *, sqs: Any = None, on_failure_url: str | None = None
) -> None:
    """Deliver what ``source``'s function has not yet read of one stream, with the local
    runtime's poller. Every reader of the stream counts first: none misses a trimmed record."""
    for reader in {s.function for s in load_template().stream_sources()}:
        _POSITIONS.register(reader, stream_arn)
    StreamPoller(
        source,
        streams=boto3.client("dynamodbstreams", region_name=REGION),
        stream_arn=stream_arn,
        pool=invoker,
        positions=_POSITIONS,
        region=REGION,
        sqs=sqs,
        on_failure_url=on_failure_url,
        retry_after_s=0,
    ).drain()
