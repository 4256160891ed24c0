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

from dicomweb_core.changefeed.feed import ChangeFeed
from infra.local.provision import Stack
from infra.local.streams import StreamPoller, StreamPositions
from infra.local.workers import FunctionError
from infra.samtemplate import load_template

FUNCTION = "ChangeFeedFunction"
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
    logical id; all of the template's by default), as the event source mappings would."""
    invoker = InProcess(feed or template_feed(stack))
    for source in load_template().stream_sources():
        if tables and source.table not in tables:
            continue
        StreamPoller(
            source,
            streams=stack.client("dynamodbstreams"),
            stream_arn=stack.attributes[source.table]["StreamArn"],
            pool=invoker,
            positions=_POSITIONS,
            region=stack.region,
            sqs=stack.client("sqs"),
            on_failure_url=stack.physical_ids[source.on_failure] if source.on_failure else None,
            retry_after_s=0,
        ).drain()
    return invoker
