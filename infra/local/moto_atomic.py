"""Make moto's DynamoDB serialise operations, as DynamoDB does.

moto applies a TransactWriteItems (and a conditional PutItem or UpdateItem) as a
sequence of Python steps with no lock, so two threads can both pass the same
``attribute_not_exists`` check. Real DynamoDB never allows that. The local runtime and
the concurrency tests wrap the backend's operations in one lock so that moto behaves
like the service our aggregates rely on.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

from moto.dynamodb.models import DynamoDBBackend

_OPERATIONS = (
    "put_item",
    "update_item",
    "delete_item",
    "get_item",
    "query",
    "scan",
    "batch_get_item",
    "transact_get_items",
    "transact_write_items",
)
_LOCK = threading.RLock()
_MARK = "_serialised_by_dicomweb"


def _serialised(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _LOCK:
            return method(*args, **kwargs)

    setattr(wrapper, _MARK, True)
    return wrapper


def serialise_dynamodb() -> None:
    """Idempotently wrap moto's DynamoDB operations in one process-wide lock."""
    for name in _OPERATIONS:
        method = getattr(DynamoDBBackend, name)
        if not getattr(method, _MARK, False):
            setattr(DynamoDBBackend, name, _serialised(method))
