"""The two DICOMweb roots: the primary store (``/``) and the research store (``/deid``).

Both have the same resources and behaviour (PS3.18); each has its own bucket and index
table and its own scope at the API (dicomweb/read, dicomweb/deid.read), so a token for
one never reaches the other. A request picks its root from its path; the index models
are bound to that root's table for the request (a Lambda environment serves one request
at a time).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from dicomweb_core.config import Settings
from dicomweb_core.index.models import IndexItem, bind_table
from dicomweb_core.web.errors import NotFound

DEID_PREFIX = "/deid"


@dataclass(frozen=True, slots=True)
class StoreRoot:
    prefix: str  # "" for the primary store, "/deid" for the research store
    table_name: str
    bucket_name: str

    def base_url(self, public_base_url: str) -> str:
        return public_base_url.rstrip("/") + self.prefix

    def path(self, raw_path: str) -> str:
        """The DICOMweb path below this root."""
        return raw_path[len(self.prefix) :] or "/"


def roots(settings: Settings, environ: Mapping[str, str] = os.environ) -> dict[str, StoreRoot]:
    found = {"": StoreRoot("", settings.table_name, settings.bucket_name)}
    if environ.get("DEID_TABLE_NAME") and environ.get("DEID_BUCKET_NAME"):
        found[DEID_PREFIX] = StoreRoot(DEID_PREFIX, environ["DEID_TABLE_NAME"], environ["DEID_BUCKET_NAME"])
    return found


def store_prefix(raw_path: str) -> str:
    """Which store a request path belongs to: ``/deid`` for the research store (the path is
    ``/deid`` or below it; ``/deidx`` is not), else ``""``, the primary store. Access rules,
    the audit record and store selection all decide with this one function."""
    return DEID_PREFIX if raw_path == DEID_PREFIX or raw_path.startswith(DEID_PREFIX + "/") else ""


def is_research(raw_path: str) -> bool:
    return store_prefix(raw_path) == DEID_PREFIX


def select(available: Mapping[str, StoreRoot], raw_path: str) -> StoreRoot:
    """The root a path belongs to, with the index bound to its table."""
    root = available.get(store_prefix(raw_path))
    if root is None:
        raise NotFound("No such DICOMweb root.")
    if IndexItem.Meta.table_name != root.table_name:
        bind_table(root.table_name)
    return root
