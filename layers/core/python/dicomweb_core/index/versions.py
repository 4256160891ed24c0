"""Work keyed on a study's or series' content version (``StudyItem.version``,
``SeriesItem.version``): the hooks read the item as of the version an event names, and
record on it what they did for that version, only while nothing has changed since.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pynamodb.exceptions import UpdateError

from dicomweb_core.index.models import SeriesItem, StudyItem

Versioned = TypeVar("Versioned", SeriesItem, StudyItem)


def at_version(model: type[Versioned], key: tuple[str, str], version: str) -> Versioned | None:
    """The item if it still exists at ``version``; None when it is gone or has changed since."""
    try:
        item = model.get(*key, consistent_read=True)
    except model.DoesNotExist:
        return None
    return item if item.version == version else None


def record_version(item: SeriesItem | StudyItem, attribute: Any, *, unless: Any = None) -> bool:
    """Set ``attribute`` to the item's version if the item has not changed since it was read
    (and ``unless``, an extra condition, holds); False when a condition failed."""
    updated = type(item).updated_at
    condition = updated == item.updated_at if item.updated_at is not None else updated.does_not_exist()
    if unless is not None:
        condition = condition & unless
    try:
        item.update(actions=[attribute.set(item.version)], condition=condition)
    except UpdateError as exc:
        if getattr(exc, "cause_response_code", "") == "ConditionalCheckFailedException":
            return False
        raise
    return True
