"""DynamoDB write and read units, and storage, computed from the items as they are stored.

The :class:`~infra.accounting.calls.CallCounter` records what each call wrote (put items,
updated keys and attribute names) and read (keys, items returned). Sizes come from the items
themselves: a put's item as sent, and for an update, a delete or a read by key the item as a
table scan finds it before and after the operation (:class:`Snapshot`). The rules are in
:mod:`infra.accounting.itemsize`; the ones applied here:

- base table: each write is sized on the larger of the item before and after, 1 unit per
  KB, twice that inside a transaction (a ``ConditionCheck`` is charged like a write of the
  item it checks); a failed conditional write still consumes its units;
- each global secondary index (GSI.html, "Write capacity units"): no cost when the item is
  in the index neither before nor after; one write of the entry when it enters, leaves, or
  has a projected attribute changed; two (delete + put) when its index key changes. An
  index write is not doubled by a transaction (the index is updated after the commit);
- storage: each item plus 100 bytes, each index entry (table key + index key + projected
  attributes) plus 100 bytes.

An item written several times within one operation is sized as the operation left it (an
aggregate that grows is counted at its final size, an upper bound).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from infra.accounting.itemsize import (
    Item,
    batch_read_units,
    item_size,
    query_read_units,
    read_units,
    stored_bytes,
    write_units,
)


@dataclass(frozen=True)
class IndexSchema:
    name: str
    key: tuple[str, ...]
    projection: str  # ALL | KEYS_ONLY | INCLUDE
    non_key: frozenset[str] = frozenset()


@dataclass(frozen=True)
class TableSchema:
    name: str
    key: tuple[str, ...]
    indexes: tuple[IndexSchema, ...] = ()

    @classmethod
    def from_description(cls, table: Mapping[str, Any]) -> TableSchema:
        """From ``DescribeTable``'s ``Table`` (local secondary indexes are not counted)."""

        def key(schema: Iterable[Mapping[str, str]]) -> tuple[str, ...]:
            return tuple(k["AttributeName"] for k in sorted(schema, key=lambda k: k["KeyType"]))

        indexes = tuple(
            IndexSchema(
                name=gsi["IndexName"],
                key=key(gsi["KeySchema"]),
                projection=gsi["Projection"]["ProjectionType"],
                non_key=frozenset(gsi["Projection"].get("NonKeyAttributes", ())),
            )
            for gsi in table.get("GlobalSecondaryIndexes", [])
        )
        return cls(name=table["TableName"], key=key(table["KeySchema"]), indexes=indexes)

    def key_of(self, item: Item) -> str:
        """A canonical text for an item's primary key."""
        return json.dumps({k: item[k] for k in self.key}, sort_keys=True)

    def entry_size(self, item: Item, index: IndexSchema) -> int | None:
        """The index entry's size, or None when the item lacks the index key (sparse)."""
        if any(k not in item for k in index.key):
            return None
        if index.projection == "ALL":
            return item_size(item)
        names = set(self.key) | set(index.key)
        if index.projection == "INCLUDE":
            names |= index.non_key
        return item_size(item, names)


class Snapshot:
    """Every item of some tables at one moment, by canonical key."""

    def __init__(self, items: Mapping[str, Iterable[Item]], schemas: Mapping[str, TableSchema]) -> None:
        self.items = {
            table: {schemas[table].key_of(item): item for item in table_items}
            for table, table_items in items.items()
        }

    def get(self, table: str, key: str) -> Item | None:
        return self.items.get(table, {}).get(key)


@dataclass
class Units:
    """Capacity (request) units by where they were consumed: ``table`` or ``table/index``."""

    write: Counter[str] = field(default_factory=Counter)
    read: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    cancelled: int = 0  # failed transactional writes (their capacity is left out)

    @property
    def write_total(self) -> float:
        return float(sum(self.write.values()))

    @property
    def read_total(self) -> float:
        return float(sum(self.read.values()))


def consumed_units(
    writes: Iterable[Mapping[str, Any]],
    reads: Iterable[Mapping[str, Any]],
    schemas: Mapping[str, TableSchema],
    *,
    before: Snapshot,
    after: Snapshot,
) -> Units:
    """The write and read units of recorded DynamoDB actions (see the module docstring)."""
    units = Units()
    for record in writes:
        schema = schemas.get(record["table"])
        if schema is None:
            continue
        if record["tx"] and not record["ok"]:
            units.cancelled += 1
            continue
        _add_write(units, record, schema, before=before, after=after)
    for record in reads:
        if record["table"] in schemas:
            table = record["table"] + (f"/{record['index']}" if record.get("index") else "")
            units.read[table] += _read_cost(record, before=before, after=after)
    return units


def _add_write(
    units: Units, record: Mapping[str, Any], schema: TableSchema, *, before: Snapshot, after: Snapshot
) -> None:
    op = record["op"]
    new: Item | None
    if op == "put":
        new = record["item"]
        key = schema.key_of(record["item"])
    else:
        key = json.dumps({k: record["key"][k] for k in schema.key}, sort_keys=True)
        new = after.get(schema.name, key)
    old = before.get(schema.name, key)
    if op == "delete":
        old, new = old or new, None
    elif op == "check":
        old = new = new or old
    sizes = [item_size(i) for i in (old, new) if i is not None]
    units.write[schema.name] += write_units(max(sizes, default=0), transactional=record["tx"])
    if op == "check" or not record["ok"]:
        return
    touched = None if op in ("put", "delete") else set(record.get("touched", ()))
    for index in schema.indexes:
        cost = _index_cost(schema, index, old, new, touched)
        if cost:
            units.write[f"{schema.name}/{index.name}"] += cost


def _index_cost(
    schema: TableSchema, index: IndexSchema, old: Item | None, new: Item | None, touched: set[str] | None
) -> int:
    """Write units one table write costs one index (GSI.html, "Write capacity units")."""
    old_size = schema.entry_size(old, index) if old is not None else None
    new_size = schema.entry_size(new, index) if new is not None else None
    if old_size is None and new_size is None:
        return 0
    if old_size is None or new_size is None:
        return write_units(old_size or new_size or 0)  # the entry enters or leaves the index
    assert old is not None and new is not None
    if any(old[k] != new[k] for k in index.key):
        return write_units(old_size) + write_units(new_size)  # delete the old entry, put the new
    if index.projection == "ALL" or touched is None:
        changed = True
    else:
        projected = set(schema.key) | set(index.key)
        if index.projection == "INCLUDE":
            projected |= index.non_key
        changed = bool(touched & projected)
    return write_units(max(old_size, new_size)) if changed else 0


def _read_cost(record: Mapping[str, Any], *, before: Snapshot, after: Snapshot) -> float:
    """Read units, sized on the stored item where the key is known (a projection does not
    make a read cheaper), else on the items as returned."""
    consistent, op = record["consistent"], record["op"]
    if op in ("query", "scan"):
        sizes = list(record["sizes"])
        unseen = max(0, record.get("scanned", len(sizes)) - len(sizes))  # read, then filtered out
        if unseen and sizes:
            sizes += [sum(sizes) // len(sizes)] * unseen
        return query_read_units(sizes, consistent=consistent)
    sizes = []
    for key in record["keys"]:
        canonical = json.dumps(key, sort_keys=True)
        stored = after.get(record["table"], canonical) or before.get(record["table"], canonical)
        sizes.append(item_size(stored) if stored is not None else 0)
    if record["tx"]:
        return sum(read_units(s, consistent=True, transactional=True) for s in sizes)
    return batch_read_units(sizes, consistent=consistent)


@dataclass
class Storage:
    """Billed bytes of a table: items, and each index's entries, overhead included."""

    items: int = 0
    base: int = 0
    indexes: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return self.base + sum(self.indexes.values())


def table_storage(items: Iterable[Item], schema: TableSchema) -> Storage:
    storage = Storage()
    for item in items:
        storage.items += 1
        storage.base += stored_bytes(item_size(item))
        for index in schema.indexes:
            size = schema.entry_size(item, index)
            if size is not None:
                storage.indexes[index.name] += stored_bytes(size)
    return storage
