"""The two DICOMweb roots: the primary store (``/``) and the research store (``/deid``).

Both have the same resources and behaviour (PS3.18); each has its own bucket and index
table and its own scope at the API (dicomweb/read, dicomweb/deid.read), so a token for
one never reaches the other. Which root a request belongs to is decided here, from its
path alone; access rules, the audit record and store selection (``entry.stores``) all use
this one decision.
"""

from __future__ import annotations

DEID_PREFIX = "/deid"


def store_prefix(raw_path: str) -> str:
    """Which store a request path belongs to: ``/deid`` for the research store (the path is
    ``/deid`` or below it; ``/deidx`` is not), else ``""``, the primary store. Access rules,
    the audit record and store selection all decide with this one function."""
    return DEID_PREFIX if raw_path == DEID_PREFIX or raw_path.startswith(DEID_PREFIX + "/") else ""


def is_research(raw_path: str) -> bool:
    return store_prefix(raw_path) == DEID_PREFIX
