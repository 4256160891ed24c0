"""Study and series aggregates, kept off the write path (docs/index-design.md).

A stored instance writes only its own two items (the SOP claim and the instance item). What a
study or series result carries about its children is counted here, from the index table's
stream (``AggregatesFunction``), a moment after the commit:

- ``NumberOfSeriesRelatedInstances`` (PS3.18 §10.6.3.3.2), the series' content version
  (``updated_at``: the newest of its instances' writes);
- ``NumberOfStudyRelatedSeries``/``Instances`` and ``ModalitiesInStudy`` (its search key in
  gsi8, and the combination in the registry the planner enumerates), and the study's content
  version (the newest of its series').

Every value is *recounted* from the items as they are, with strongly consistent reads, never
moved by an increment. A replayed, repeated or reordered record therefore changes nothing, and
the recount that follows the last write of a series sets the exact values. Lambda hands one
shard's batches to one invocation at a time, and all of a study's items share a partition key,
so two recounts of one study never run at once. Items are updated only when a value
changed, and never created: a study or series that is gone (a DELETE) stays gone.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import suppress
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import boto3

from dicomweb_core.index import keys
from dicomweb_core.index.items import MODALITY_COMBOS
from dicomweb_core.index.models import (
    IndexItem,
    InstanceItem,
    RegistryItem,
    SeriesItem,
    StudyItem,
    study_pk,
)
from dicomweb_core.index.stream import StreamRecord

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

_INSTANCE_KIND = IndexItem.kind.get_discriminator(InstanceItem)
_STUDY_PREFIX = "STUDY#"
_SERIES_PREFIX = "SERIES#"
_INSTANCE_PREFIX = "INSTANCE#"


@dataclass(frozen=True, slots=True)
class SeriesRef:
    table: str
    study: str
    series: str


def touched_in(records: Iterable[Mapping[str, Any]]) -> Iterator[SeriesRef]:
    """The series whose instance items a batch of stream records inserted, changed or removed."""
    for raw in records:
        record = StreamRecord.parse(raw)
        for image in (record.new_image, record.old_image):
            if image is None or image.get("kind", {}).get("S") != _INSTANCE_KIND:
                continue
            pk, sk = image.get("pk", {}).get("S", ""), image.get("sk", {}).get("S", "")
            if pk.startswith(_STUDY_PREFIX) and sk.startswith(_INSTANCE_PREFIX):
                series = sk[len(_INSTANCE_PREFIX) :].split("#", 1)[0]
                yield SeriesRef(record.table, pk[len(_STUDY_PREFIX) :], series)


@dataclass(frozen=True, slots=True)
class Recount:
    """What one recount found and changed."""

    series_updated: int = 0
    studies_updated: int = 0


class Aggregates:
    """Recounts studies and series in any index table (the primary or the research store's)."""

    def __init__(self, client: Any = None) -> None:
        self._client = client
        self._registered: set[tuple[str, str]] = set()

    @cached_property
    def client(self) -> DynamoDBClient:
        return self._client or boto3.client("dynamodb")

    def recount(self, touched: Iterable[SeriesRef]) -> Recount:
        """Recount each touched series, then each of their studies."""
        by_study: dict[tuple[str, str], set[str]] = {}
        for ref in touched:
            by_study.setdefault((ref.table, ref.study), set()).add(ref.series)
        series_updated = studies_updated = 0
        for (table, study), series_uids in by_study.items():
            series_items = self._query(table, study_pk(study), _SERIES_PREFIX)
            children = {_child_uid(item): item for item in series_items}
            for series_uid in sorted(series_uids):
                item = children.get(series_uid)
                if item is not None and self._recount_series(table, study, series_uid, item):
                    series_updated += 1
            if self._recount_study(table, study, list(children.values())):
                studies_updated += 1
        return Recount(series_updated, studies_updated)

    # ---------------------------------------------------------------- series
    def _recount_series(self, table: str, study: str, series: str, item: dict[str, Any]) -> bool:
        count, newest = 0, None
        for instance in self._query(table, study_pk(study), f"{_INSTANCE_PREFIX}{series}#", ["updated_at"]):
            count += 1
            newest = _later(newest, _text(instance, "updated_at"))
        if count == _number(item, "instance_count") and newest == _text(item, "updated_at"):
            return False
        values: dict[str, Any] = {":count": {"N": str(count)}}
        assignments = ["instance_count = :count"]
        if newest is not None:
            values[":updated"] = {"S": newest}
            assignments.append("updated_at = :updated")
        self._update(table, SeriesItem.key(study, series), assignments, values)
        item["instance_count"] = {"N": str(count)}  # the study's recount reads the new values
        if newest is not None:
            item["updated_at"] = {"S": newest}
        return True

    # ----------------------------------------------------------------- study
    def _recount_study(self, table: str, study: str, series_items: list[dict[str, Any]]) -> bool:
        key = StudyItem.key(study)
        wanted = ("sort_key", "instance_count", "series_count", "modality_combo", "updated_at", "deleting")
        found = self.client.get_item(
            TableName=table,
            Key=_key(key),
            ConsistentRead=True,
            ProjectionExpression=", ".join(f"#a{n}" for n in range(len(wanted))),
            ExpressionAttributeNames={f"#a{n}": name for n, name in enumerate(wanted)},
        ).get("Item")
        if found is None or "deleting" in found:
            return False  # deleted, or being deleted: DELETE removes it
        populated = [s for s in series_items if _number(s, "instance_count") > 0]
        instances = sum(_number(s, "instance_count") for s in populated)
        modalities = sorted({_text(s, "modality") or "" for s in populated} - {""})
        combo = "\\".join(modalities) or None
        newest = None
        for series in populated:
            newest = _later(newest, _text(series, "updated_at"))
        unchanged = (
            instances == _number(found, "instance_count")
            and len(populated) == _number(found, "series_count")
            and combo == _text(found, "modality_combo")
            and (newest is None or newest == _text(found, "updated_at"))
        )
        if unchanged:
            return False
        assignments = ["instance_count = :instances", "series_count = :series"]
        values: dict[str, Any] = {
            ":instances": {"N": str(instances)},
            ":series": {"N": str(len(populated))},
        }
        removals: list[str] = []
        if newest is not None:
            assignments.append("updated_at = :updated")
            values[":updated"] = {"S": newest}
        if combo:
            self._register(table, combo)
            index = keys.modality_combo_attributes(combo, study, _text(found, "sort_key") or "")
            assignments += [
                "modality_combo = :combo",
                "modalities = :modalities",
                "g8pk = :g8pk",
                "g8sk = :g8sk",
            ]
            values |= {
                ":combo": {"S": combo},
                ":modalities": {"SS": modalities},
                ":g8pk": {"S": index["g8pk"]},
                ":g8sk": {"S": index["g8sk"]},
            }
        else:
            removals = ["modality_combo", "modalities", "g8pk", "g8sk"]
        self._update(table, key, assignments, values, removals)
        return True

    def _register(self, table: str, combo: str) -> None:
        """The planner enumerates the registry's combinations (idempotent ADD, once per container)."""
        if (table, combo) in self._registered:
            return
        self.client.update_item(
            TableName=table,
            Key=_key(RegistryItem.key(MODALITY_COMBOS)),
            UpdateExpression="ADD #values :combo",
            ExpressionAttributeNames={"#values": "values"},
            ExpressionAttributeValues={":combo": {"SS": [combo]}},
        )
        self._registered.add((table, combo))

    # --------------------------------------------------------------- helpers
    def _query(
        self, table: str, pk: str, prefix: str, projection: list[str] | None = None
    ) -> Iterator[dict[str, Any]]:
        names = {"#pk": "pk", "#sk": "sk"}
        request: dict[str, Any] = {
            "TableName": table,
            "KeyConditionExpression": "#pk = :pk AND begins_with(#sk, :prefix)",
            "ExpressionAttributeValues": {":pk": {"S": pk}, ":prefix": {"S": prefix}},
            "ConsistentRead": True,
        }
        if projection is not None:
            aliases = {f"#p{n}": name for n, name in enumerate(projection)}
            names |= aliases
            request["ProjectionExpression"] = ", ".join(["#sk", *aliases])
        request["ExpressionAttributeNames"] = names
        for page in self.client.get_paginator("query").paginate(**request):
            yield from page.get("Items", [])

    def _update(
        self,
        table: str,
        key: tuple[str, str],
        assignments: list[str],
        values: dict[str, Any],
        removals: list[str] | None = None,
    ) -> None:
        expression = "SET " + ", ".join(assignments)
        if removals:
            expression += " REMOVE " + ", ".join(removals)
        with suppress(self.client.exceptions.ConditionalCheckFailedException):
            self.client.update_item(
                TableName=table,
                Key=_key(key),
                UpdateExpression=expression,
                ConditionExpression="attribute_exists(pk)",  # never bring back a deleted item
                ExpressionAttributeValues=values,
            )


def _key(key: tuple[str, str]) -> dict[str, Any]:
    return {"pk": {"S": key[0]}, "sk": {"S": key[1]}}


def _child_uid(item: Mapping[str, Any]) -> str:
    return str(item["sk"]["S"])[len(_SERIES_PREFIX) :]


def _text(item: Mapping[str, Any], name: str) -> str | None:
    value = item.get(name, {}).get("S")
    return str(value) if value is not None else None


def _number(item: Mapping[str, Any], name: str) -> int:
    value = item.get(name, {}).get("N")
    return int(float(value)) if value is not None else 0


def _later(a: str | None, b: str | None) -> str | None:
    """The later of two UTC timestamps as pynamodb stores them (same format: text order is time order)."""
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)
