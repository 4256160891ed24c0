"""The store a request reads: its bucket and index table, chosen by its path's root.

Each root's services are built once per process with that root's bucket and
:class:`~dicomweb_core.index.table.IndexTable`; choosing a root binds nothing globally.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from dicomweb_core.config import Settings
from dicomweb_core.errors import NotFound
from dicomweb_core.index.table import IndexTable
from dicomweb_core.web.roots import DEID_PREFIX, store_prefix


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

    @property
    def index_table(self) -> IndexTable:
        return IndexTable(self.table_name)


def roots(settings: Settings, environ: Mapping[str, str] = os.environ) -> dict[str, StoreRoot]:
    found = {"": StoreRoot("", settings.table_name, settings.bucket_name)}
    if environ.get("DEID_TABLE_NAME") and environ.get("DEID_BUCKET_NAME"):
        found[DEID_PREFIX] = StoreRoot(DEID_PREFIX, environ["DEID_TABLE_NAME"], environ["DEID_BUCKET_NAME"])
    return found


def select(available: Mapping[str, StoreRoot], raw_path: str) -> StoreRoot:
    """The root a path belongs to."""
    root = available.get(store_prefix(raw_path))
    if root is None:
        raise NotFound("No such DICOMweb root.")
    return root
