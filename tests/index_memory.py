"""An in-memory :class:`~dicomweb_core.index.access.ItemStore`, for tests that want an index
without AWS. ``tests/integration/test_index_access.py`` holds it to DynamoDB's behaviour (moto):
every behaviour the services rely on is checked against both."""

from __future__ import annotations

from typing import TypeVar

from dicomweb_core.index.models import IndexItem, SeriesItem, StudyItem

Item = TypeVar("Item", bound=IndexItem)


def _copy(item: IndexItem) -> IndexItem:
    """The item as DynamoDB would give it back: serialised and read again."""
    return IndexItem.from_raw_data(item.serialize())


class MemoryItems:
    """Items by (pk, sk) in a dict; every read and write copies, as a table's would."""

    def __init__(self) -> None:
        self.items: dict[tuple[str, str], IndexItem] = {}

    def get(self, model: type[Item], key: tuple[str, str], *, consistent: bool = True) -> Item | None:
        found = self.items.get(key)
        return _copy(found) if isinstance(found, model) else None  # type: ignore[return-value]

    def query(self, pk: str, sk_prefix: str, *, consistent: bool = True) -> list[IndexItem]:
        return [
            _copy(item)
            for (item_pk, sk), item in sorted(self.items.items())
            if item_pk == pk and sk.startswith(sk_prefix)
        ]

    def save(self, item: IndexItem) -> None:
        self.items[(item.pk, item.sk)] = _copy(item)

    def mark_version(self, item: SeriesItem | StudyItem, attribute: str, *, once: bool) -> bool:
        stored = self.items.get((item.pk, item.sk))
        if stored is None or stored.updated_at != item.updated_at:
            return False
        if once and getattr(stored, attribute) == item.version:
            return False
        setattr(stored, attribute, item.version)
        setattr(item, attribute, item.version)
        return True

    def unmark_version(self, item: SeriesItem | StudyItem, attribute: str) -> bool:
        stored = self.items.get((item.pk, item.sk))
        if stored is None or getattr(stored, attribute) != item.version:
            return False
        setattr(stored, attribute, None)
        setattr(item, attribute, None)
        return True
