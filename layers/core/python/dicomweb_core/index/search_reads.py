"""The index reads a QIDO-RS search is made of, each one counted (PS3.18 §10.6 on DynamoDB).

Every access is a Query on the table or one of its GSIs, or a BatchGetItem: never a Scan. The
reads go to the table bound around the search (``qido.search.search``, ``index.table``).
Items read are counted against the search's budget, so a search that would read more than
its budget before filling a page is refused as too broad (413), and the benchmark can
report read amplification.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import chain, islice
from typing import Any

from dicomweb_core.errors import PayloadTooLarge
from dicomweb_core.index import keys
from dicomweb_core.index.models import (
    IndexItem,
    PostingItem,
    RegistryItem,
    SeriesItem,
    StudyItem,
    index_sort_attribute,
    study_pk,
    uids_from_keys,
)

DEFAULT_READ_BUDGET = 20_000
_BATCH_GET = 100


@dataclass
class ReadStats:
    """Items read from DynamoDB (Query results and BatchGetItem items) by one search."""

    items: int = 0
    queries: int = 0
    budget: int = DEFAULT_READ_BUDGET

    def count(self, n: int = 1) -> None:
        self.items += n
        if self.items > self.budget:
            raise PayloadTooLarge(
                "The search is too broad to answer: narrow it with a more selective key "
                "(PatientID, AccessionNumber, StudyInstanceUID, a StudyDate range, ...)."
            )


class IndexReads:
    """The reads of one search: ``wanted`` (offset + limit) sizes the pages of merged shards."""

    def __init__(self, stats: ReadStats, *, wanted: int) -> None:
        self.stats = stats
        self.wanted = wanted

    def counted(self, items: Iterable[IndexItem]) -> Iterator[Any]:
        for item in items:
            self.stats.count()
            yield item

    def gsi(
        self, number: int, pk: str, *, begins_with: str | None = None, descending: bool = False
    ) -> Iterator[Any]:
        index = getattr(IndexItem, f"g{number}")
        sk_attribute = _sort_attribute(index)
        condition = sk_attribute.startswith(begins_with) if begins_with else None
        self.stats.queries += 1
        return self.counted(
            map(uids_from_keys, index.query(pk, condition, scan_index_forward=not descending, page_size=100))
        )

    def merged_shards(
        self, number: int, pks: Sequence[str], bounds: tuple[str | None, str | None] = (None, None)
    ) -> Iterator[Any]:
        """Several partitions of one GSI merged newest first (descending sort key)."""
        index = getattr(IndexItem, f"g{number}")
        sk_attribute = _sort_attribute(index)
        low, high = bounds
        condition = None
        if low and high:
            condition = sk_attribute.between(low, high)
        elif low:
            condition = sk_attribute >= low
        elif high:
            condition = sk_attribute <= high
        page = max(8, self.wanted // max(1, keys.SHARDS) + 2)
        # Each Query is made here (pynamodb fixes its connection, so its table, when it is
        # made), and their first pages are read together: one round trip for all shards.
        queries = [
            index.query(pk, condition, scan_index_forward=False, page_size=min(page, 1000)) for pk in pks
        ]
        self.stats.queries += len(queries)
        streams = [self.counted(map(uids_from_keys, q)) for q in _first_pages_together(queries)]
        key_name = index_sort_attribute(number)
        return heapq.merge(*streams, key=lambda i: getattr(i, key_name), reverse=True)

    def partition(self, study: str, prefix: str) -> list[IndexItem]:
        self.stats.queries += 1
        return list(
            self.counted(IndexItem.query(study_pk(study), IndexItem.sk.startswith(prefix), page_size=1000))
        )

    def batch_get(self, item_keys: Sequence[tuple[str, str]]) -> list[IndexItem]:
        found: list[IndexItem] = []
        for start in range(0, len(item_keys), _BATCH_GET):
            found += self.counted(IndexItem.batch_get(item_keys[start : start + _BATCH_GET]))
        return found

    def registry(self, name: str) -> set[str]:
        try:
            item = RegistryItem.get(*RegistryItem.key(name))
        except RegistryItem.DoesNotExist:
            return set()
        self.stats.count()
        return set(item.values or ())

    def postings(self, family: str, term: str) -> Iterator[PostingItem]:
        self.stats.queries += 1
        return self.counted(
            PostingItem.query(keys.posting_pk(family, term), PostingItem.sk.startswith(term), page_size=200)
        )

    def postings_studies(self, family: str, term: str) -> Iterator[StudyItem]:
        uids = _unique_strings(p.study_uid for p in self.postings(family, term))
        for chunk in _chunks(uids, _BATCH_GET):
            found = {
                i.pk: i for i in self.batch_get([StudyItem.key(u) for u in chunk]) if isinstance(i, StudyItem)
            }
            yield from (found[study_pk(u)] for u in chunk if study_pk(u) in found)

    def postings_series(self, family: str, term: str) -> Iterator[SeriesItem]:
        pairs = _unique_strings(
            f"{p.study_uid}#{p.series_uid}"
            for p in self.postings(family, term)
            if p.sk.startswith(f"{term}#")
        )
        for chunk in _chunks(pairs, _BATCH_GET):
            wanted = [SeriesItem.key(*pair.split("#", 1)) for pair in chunk]
            found = {(i.pk, i.sk): i for i in self.batch_get(wanted) if isinstance(i, SeriesItem)}
            yield from (found[k] for k in wanted if k in found)


_PAGE_READERS = ThreadPoolExecutor(max_workers=keys.SHARDS, thread_name_prefix="shard-page")
_NOTHING = object()


def _first_pages_together(queries: Sequence[Iterator[Any]]) -> list[Iterator[Any]]:
    """The queries, each with its first page read, all at once (in threads): the items come
    back as they were, in order; later pages are read as they are reached."""
    if len(queries) < 2:
        return list(queries)
    firsts = list(_PAGE_READERS.map(lambda query: next(query, _NOTHING), queries))
    return [
        iter(()) if first is _NOTHING else chain((first,), query)
        for first, query in zip(firsts, queries, strict=True)
    ]


def _sort_attribute(index: Any) -> Any:
    """The range key attribute of a GSI, for key conditions on it."""
    return next(a for a in type(index).Meta.attributes.values() if a.is_range_key)


def _unique_strings(values: Iterable[str]) -> Iterator[str]:
    seen: set[str] = set()
    for value in values:
        if value not in seen:
            seen.add(value)
            yield value


def _chunks(values: Iterable[str], size: int) -> Iterator[list[str]]:
    iterator = iter(values)
    while chunk := list(islice(iterator, size)):
        yield chunk
