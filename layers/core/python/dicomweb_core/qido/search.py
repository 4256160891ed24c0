"""Executing a QIDO-RS query on the index: DynamoDB Queries only, never a Scan.

The planner (:mod:`~dicomweb_core.qido.planner`) picks one *driving* key per search — the
most selective one the index can serve — and streams candidate items from its GSI,
postings or partition (:mod:`~dicomweb_core.index.search_reads`) in a deterministic order.
Every candidate is then matched against all keys
(:mod:`dicomweb_core.qido.matching`), then ``offset`` and ``limit`` apply. Items read
are counted, so the benchmark can report read amplification, and a search that would
read more than its budget before filling a page is refused as too broad (413).

Orders: studies newest first (StudyDate, StudyTime, UID descending) when driven by
date, patient, accession or study ID, modality; by folded name when driven by a name;
series by SeriesNumber and instances by InstanceNumber within their parent.
See docs/index-design.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from dicomweb_core.index.search_reads import DEFAULT_READ_BUDGET, IndexReads, ReadStats
from dicomweb_core.index.table import IndexTable
from dicomweb_core.qido.matching import matches_all
from dicomweb_core.qido.planner import Planner
from dicomweb_core.qido.query import MAX_LIMIT, QidoQuery
from dicomweb_core.qido.view import Entity, view


@dataclass
class SearchResult:
    matches: list[Entity]
    more: bool
    reads: ReadStats
    warnings: list[str] = field(default_factory=list)
    views: list[dict[str, Any]] = field(default_factory=list)  # each match's attributes, merged


def search(
    query: QidoQuery, *, table: IndexTable | None = None, budget: int = DEFAULT_READ_BUDGET
) -> SearchResult:
    """Plan, read and match: every read of the search goes to ``table`` (the process's
    default table when None)."""
    with (table or IndexTable()).bound():
        return _search(query, budget)


def _search(query: QidoQuery, budget: int) -> SearchResult:
    stats = ReadStats(budget=budget)
    warnings = []
    limit = query.limit or MAX_LIMIT
    if limit > MAX_LIMIT:
        warnings.append(
            f"The limit {limit} exceeds the maximum of {MAX_LIMIT}; at most {MAX_LIMIT} results are returned."
        )
        limit = MAX_LIMIT
    planner = Planner(query, IndexReads(stats, wanted=query.offset + limit))
    candidates = _unique(planner.candidates())
    matching = (item for item in candidates if matches_all(query, planner.matchable(item)))
    page = list(islice(matching, query.offset, query.offset + limit + 1))
    views = [view(item, planner.parents) for item in page[:limit]]
    return SearchResult(page[:limit], len(page) > limit, stats, warnings, views)


def _identity(item: Entity) -> tuple[str, str]:
    return item.pk, item.sk


def _unique(items: Iterable[Entity]) -> Iterator[Entity]:
    seen: set[tuple[str, str]] = set()
    for item in items:
        identity = _identity(item)
        if identity not in seen:
            seen.add(identity)
            yield item
