"""Make moto's DynamoDB behave like the service where our write path depends on it.

1. Serialised operations. moto applies a TransactWriteItems (and a conditional PutItem or
   UpdateItem) as a sequence of Python steps with no lock, so two threads can both pass
   the same ``attribute_not_exists`` check. Real DynamoDB never allows that. One lock
   around the backend's operations restores the isolation our aggregates rely on.
2. Rollback in proportion to the transaction. moto checkpoints every table a
   transaction touches with a deep copy of the whole table, so each STOW costs time
   proportional to everything stored so far. Here the checkpoint is of the items the
   transaction names (at most 100), restored if moto cancels the transaction.

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

_OPERATIONS = (
    "put_item",
    "update_item",
    "delete_item",
    "get_item",
    "query",
    "scan",
    "batch_get_item",
    "transact_get_items",
)
_LOCK = threading.RLock()
_MARK = "_patched_by_dicomweb"
_in_transaction = threading.local()


def _serialised(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _LOCK:
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


def serialise_dynamodb() -> None:
    """Idempotently install both fixes into moto's DynamoDB backend."""
    for name in _OPERATIONS:
        method = getattr(DynamoDBBackend, name)
        if not getattr(method, _MARK, False):
            setattr(DynamoDBBackend, name, _serialised(method))
    if not getattr(DynamoDBBackend.transact_write_items, _MARK, False):
        DynamoDBBackend.transact_write_items = _transact_write_items(DynamoDBBackend.transact_write_items)  # type: ignore[method-assign]
        # moto's module calls copy.deepcopy(table); give that module a copy that skips tables.
        setattr(dynamodb_models, "copy", types.SimpleNamespace(deepcopy=_deepcopy, copy=copy.copy))  # noqa: B010
