"""Content negotiation (PS3.18 §8.7.3): pick what to send from the Accept header."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from dicomweb_core.errors import NotAcceptable
from dicomweb_core.web.mediatype import MediaRange, MediaType, parse_accept


def _specificity(media_range: MediaRange) -> tuple[int, int]:
    main, _, sub = media_range.type.partition("/")
    return ((main != "*") + (sub != "*"), len(media_range.params))


def negotiate(
    accept: str | None, offers: Sequence[MediaType], *, query: Mapping[str, str] | None = None
) -> MediaType:
    """The offer the client prefers (highest q; the most specific matching range decides
    an offer's q); ties go to the earlier offer. The ``accept`` query parameter overrides
    the header. No acceptable offer → 406 listing what is available."""
    header = (query or {}).get("accept") or accept
    if not header or not header.strip():
        return offers[0]
    ranges = parse_accept(header)
    if not ranges:
        return offers[0]
    best: tuple[float, int, MediaType] | None = None
    for position, offer in enumerate(offers):
        matching = [r for r in ranges if r.matches(offer)]
        if not matching:
            continue
        q = max(matching, key=_specificity).q
        if q > 0 and (best is None or q > best[0]):
            best = (q, position, offer)
    if best is None:
        available = ", ".join(str(o) for o in offers)
        raise NotAcceptable(
            f"None of the requested media types can be produced here; available: {available}."
        )
    return best[2]
