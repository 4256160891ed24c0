"""Make moto's DynamoDB behave like the service where our write path depends on it.

1. Serialised operations. moto applies a TransactWriteItems (and a conditional PutItem or
   UpdateItem) as a sequence of Python steps with no lock, so two threads can both pass
   the same ``attribute_not_exists`` check. Real DynamoDB never allows that. One lock
   around the backend's operations restores the isolation our aggregates rely on.
2. Rollback in proportion to the transaction. moto checkpoints every table a
   transaction touches with a deep copy of the whole table, so each STOW costs time
   proportional to everything stored so far. Here the checkpoint is of the items the
   transaction names (at most 100), restored if moto cancels the transaction.
3. Index lookups by key. moto answers a Query on a GSI by sorting and filtering every
   item of the table. Here a GSI Query reads only the items with that partition key,
   from a per-index map rebuilt after writes, and a Query on the table reads only its
   partition; reads after a bulk load are then as cheap as DynamoDB's, which the QIDO
   benchmark needs to measure anything but moto.

Used by the local runtime and by the tests; never deployed.
"""

from __future__ import annotations

import copy
import functools
import threading
import types
from collections.abc import Callable
from typing import Any

from moto.dynamodb import models as dynamodb_models
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.dynamo_type import DynamoType
from moto.dynamodb.models.table import Table

_WRITES = ("put_item", "update_item", "delete_item", "batch_write_item")
_OPERATIONS = (
    *_WRITES,
    "get_item",
    "query",
    "scan",
    "batch_get_item",
    "transact_get_items",
)
_LOCK = threading.RLock()
_MARK = "_patched_by_dicomweb"
_in_transaction = threading.local()


class _Generation:
    """Bumped by every write; GSI maps built for an older generation are stale."""

    value = 0


def _serialised(method: Callable[..., Any], *, writes: bool = False) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _LOCK:
            if writes:
                _Generation.value += 1
            return method(*args, **kwargs)

    setattr(wrapper, _MARK, True)
    return wrapper


def _deepcopy(obj: Any, memo: Any = None) -> Any:
    """moto's module-level ``copy.deepcopy``, minus the whole-table checkpoint."""
    if isinstance(obj, Table) and getattr(_in_transaction, "active", False):
        return obj  # the wrapper below keeps an item-level checkpoint instead
    return copy.deepcopy(obj, memo)


def _touched_keys(
    backend: DynamoDBBackend, transact_items: list[dict[str, Any]]
) -> list[tuple[Table, Any, Any]]:
    touched = []
    for entry in transact_items:
        ((kind, op),) = entry.items()
        table = backend.tables.get(op.get("TableName", ""))
        if table is None:
            continue
        key = op["Item"] if kind == "Put" else op.get("Key", {})
        if table.hash_key_attr not in key:
            continue
        hash_value = DynamoType(key[table.hash_key_attr])
        range_value = DynamoType(key[table.range_key_attr]) if table.range_key_attr in key else None
        touched.append((table, hash_value, range_value))
    return touched


def _checkpoint(touched: list[tuple[Table, Any, Any]]) -> list[tuple[Table, Any, Any, Any]]:
    saved = []
    for table, hash_value, range_value in touched:
        if range_value is None:
            item = table.items.get(hash_value)
        else:
            item = table.items.get(hash_value, {}).get(range_value)
        saved.append((table, hash_value, range_value, copy.deepcopy(item)))
    return saved


def _restore(saved: list[tuple[Table, Any, Any, Any]]) -> None:
    _Generation.value += 1
    for table, hash_value, range_value, item in saved:
        if range_value is None:
            if item is None:
                table.items.pop(hash_value, None)
            else:
                table.items[hash_value] = item
            continue
        bucket = table.items[hash_value]
        if item is None:
            bucket.pop(range_value, None)
            if not bucket:
                table.items.pop(hash_value, None)
        else:
            bucket[range_value] = item


def _transact_write_items(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def wrapper(self: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> Any:
        with _LOCK:
            _Generation.value += 1
            saved = _checkpoint(_touched_keys(self, transact_items))
            _in_transaction.active = True
            try:
                return original(self, transact_items)
            except Exception:
                _restore(saved)
                raise
            finally:
                _in_transaction.active = False

    setattr(wrapper, _MARK, True)
    return wrapper


_gsi_maps: dict[tuple[int, str, str], tuple[int, dict[Any, list[Any]]]] = {}


def _gsi_map(table: Table, index_name: str, attribute: str) -> dict[Any, list[Any]]:
    """Items of ``table`` by their value of a GSI's partition key attribute (cached per generation)."""
    cache_key = (id(table), index_name, attribute)
    cached = _gsi_maps.get(cache_key)
    if cached is not None and cached[0] == _Generation.value:
        return cached[1]
    buckets: dict[Any, list[Any]] = {}
    for bucket in table.items.values():
        members: Any = bucket.values() if table.range_key_attr else [bucket]
        for item in members:
            value = item.attrs.get(attribute)
            if value is not None:
                buckets.setdefault(value, []).append(item)
    _gsi_maps[cache_key] = (_Generation.value, buckets)
    return buckets


def _indexed_query(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def wrapper(self: Table, *args: Any, **kwargs: Any) -> Any:
        index_name = kwargs.get("index_name", args[7] if len(args) > 7 else None)
        conditions = kwargs.get("hash_key_conditions") or []
        if index_name and len(conditions) == 1:
            attribute, value = conditions[0]
            members = _gsi_map(self, index_name, attribute).get(value, [])
        elif not index_name and args and args[0] is not None and self.range_key_attr:
            members = list(self.items.get(args[0], {}).values())  # the partition itself
        else:
            return original(self, *args, **kwargs)
        candidates = sorted(members, key=lambda x: (x.hash_key, x.range_key) if x.range_key else x.hash_key)
        self.all_items = lambda: candidates  # type: ignore[method-assign]
        try:
            return original(self, *args, **kwargs)
        finally:
            del self.all_items

    setattr(wrapper, _MARK, True)
    return wrapper


def serialise_dynamodb() -> None:
    """Idempotently install the three fixes into moto's DynamoDB backend."""
    for name in _OPERATIONS:
        method = getattr(DynamoDBBackend, name)
        if not getattr(method, _MARK, False):
            setattr(DynamoDBBackend, name, _serialised(method, writes=name in _WRITES))
    if not getattr(Table.query, _MARK, False):
        Table.query = _indexed_query(Table.query)  # type: ignore[method-assign]
    if not getattr(DynamoDBBackend.transact_write_items, _MARK, False):
        DynamoDBBackend.transact_write_items = _transact_write_items(DynamoDBBackend.transact_write_items)  # type: ignore[method-assign]
        # moto's module calls copy.deepcopy(table); give that module a copy that skips tables.
        setattr(dynamodb_models, "copy", types.SimpleNamespace(deepcopy=_deepcopy, copy=copy.copy))  # noqa: B010
