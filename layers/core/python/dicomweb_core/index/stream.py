"""Records of an index table's DynamoDB stream, as Lambda's event source mapping delivers them
(the change feed and the aggregates read the same streams)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

INSERT = "INSERT"
MODIFY = "MODIFY"
REMOVE = "REMOVE"


class UnreadableRecord(ValueError):
    """A stream record without the fields every DynamoDB stream record carries."""


@dataclass(frozen=True, slots=True)
class StreamRecord:
    """One record of a DynamoDB stream (the ``Records`` of Lambda's event)."""

    sequence_number: str
    event_name: str  # INSERT | MODIFY | REMOVE
    table: str  # the table whose stream it came from
    new_image: Mapping[str, Any] | None  # attribute values in DynamoDB's typed JSON
    old_image: Mapping[str, Any] | None

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> StreamRecord:
        try:
            change = raw["dynamodb"]
            return cls(
                sequence_number=str(change["SequenceNumber"]),
                event_name=str(raw["eventName"]),
                table=table_of(str(raw["eventSourceARN"])),
                new_image=change.get("NewImage"),
                old_image=change.get("OldImage"),
            )
        except (KeyError, TypeError) as error:
            raise UnreadableRecord(f"not a DynamoDB stream record: missing {error}") from None


def table_of(stream_arn: str) -> str:
    """The table name in a stream ARN: ``arn:aws:dynamodb:<region>:<account>:table/<name>/stream/<label>``."""
    resource = stream_arn.split(":", 5)[-1]
    parts = resource.split("/")
    if len(parts) < 2 or parts[0] != "table" or not parts[1]:
        raise UnreadableRecord(f"not a DynamoDB stream ARN: {stream_arn[:200]!r}")
    return parts[1]
