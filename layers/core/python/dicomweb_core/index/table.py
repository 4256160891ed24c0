"""Which DynamoDB table the index is read from and written to: one store's, chosen per use.

pynamodb names a model's table in the model class (``Meta.table_name``), so a process that
serves two stores (WADO-RS and QIDO-RS serve the primary store and, under ``/deid``, the
research store) would otherwise rebind every model class to the table of each request.
Here the models' table name is read from a context variable instead:
:meth:`IndexTable.bound` sets it for the calls made inside a block (in this thread or task
only), and outside any block the process default applies: the function's ``TABLE_NAME``, or
what :func:`use_by_default` set (tests and scripts).

Each table keeps one pynamodb connection for the life of the process
(:func:`connection_for`), so switching between stores costs nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import wraps
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

DEFAULT_TABLE_NAME = "dicomweb-index"


class _Default:
    name = os.environ.get("TABLE_NAME", DEFAULT_TABLE_NAME)


_bound_name: ContextVar[str | None] = ContextVar("index_table_name", default=None)
_connections: dict[str, Any] = {}


def current_table_name() -> str:
    """The table the index models use here and now."""
    return _bound_name.get() or _Default.name


def use_by_default(table_name: str) -> None:
    """Make ``table_name`` the table used outside any :meth:`IndexTable.bound` block."""
    _Default.name = table_name
    _connections.clear()


def connection_for(table_name: str, make: Callable[[], Any]) -> Any:
    """The process's connection to ``table_name``, made by ``make`` the first time."""
    connection = _connections.get(table_name)
    if connection is None:
        connection = _connections[table_name] = make()
    return connection


class TableNameFromContext(type):
    """Metaclass of the models' ``Meta``: its ``table_name`` is :func:`current_table_name`."""

    @property
    def table_name(cls) -> str:
        return current_table_name()


@dataclass(frozen=True, slots=True)
class IndexTable:
    """One store's index table; ``name=None`` is the process default (``TABLE_NAME``)."""

    name: str | None = None

    @property
    def resolved_name(self) -> str:
        return self.name or _Default.name

    @contextmanager
    def bound(self) -> Iterator[None]:
        """Inside the block, every index model reads and writes this table."""
        if self.name is None:
            yield
            return
        token = _bound_name.set(self.name)
        try:
            yield
        finally:
            _bound_name.reset(token)


class OnTable(Protocol):
    """An object whose index calls go to its own :class:`IndexTable`."""

    table: IndexTable


P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S", bound=OnTable)


def on_own_table(method: Callable[Concatenate[S, P], R]) -> Callable[Concatenate[S, P], R]:
    """Run a method with its object's table bound. What the method returns must not read
    the index lazily after it returns (a generator would read the default table)."""

    @wraps(method)
    def bound_method(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        with self.table.bound():
            return method(self, *args, **kwargs)

    return bound_method
