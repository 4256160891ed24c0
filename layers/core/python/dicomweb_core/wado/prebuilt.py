"""Pre-built WADO-RS answers: the largest answer a function returns, where the hooks put
the answers they build ahead of time, and how they are read back.

Two hooks build for WADO-RS, keyed by the study's or series' content version: the series
metadata hook (the ordered array of a stable series' instance metadata documents,
PS3.18 §10.4.1.1.2), and the bundle builder (the multipart body of one retrieval too large
for a response, §10.4.1.1.1, §10.4.1.1.3), which builds what a :class:`BundleOrder` names
when WADO first needs it (``wado.redirects``). WADO reads them; a missing metadata document
is assembled from the per-instance ones.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from dicomweb_core.index.access import Index
from dicomweb_core.index.models import InstanceItem, SeriesItem
from dicomweb_core.storage import ObjectReader, metadata_key, series_metadata_key
from dicomweb_core.wado import media
from dicomweb_core.web.uri import DicomWebURI

RESPONSE_LIMIT = 4_400_000  # raw bytes a Lambda response can carry (base64 under 6 MB)
_READERS = 16  # parallel S3 reads when assembling a document


def bundle_syntax(requested: str, items: Sequence[InstanceItem]) -> str:
    """The bundle that answers a request for ``requested`` (None-free: the caller checked)."""
    if requested == media.AS_STORED or all(i.transfer_syntax_uid == requested for i in items):
        return media.AS_STORED
    return requested


def bundle_key(
    version: str, syntax: str, study: str, series: str = "-", instance: str = "-", *, frame: int | None = None
) -> str:
    """Where the bundle of a resource version in a transfer syntax (``*``: as stored) lives."""
    tag = "stored" if syntax == media.AS_STORED else syntax
    suffix = f".frame-{frame}" if frame is not None else ""
    return f"bundles/{study}/{series}/{instance}/{version}/{tag}{suffix}.multipart"


@dataclass(frozen=True, slots=True)
class BundleOrder:
    """One body to build: a study, series or instance (``-`` where absent), or one of its
    frames, at a content version, in a transfer syntax (``*``: as stored)."""

    version: str
    syntax: str
    study: str
    series: str = "-"
    instance: str = "-"
    frame: int | None = None

    @property
    def key(self) -> str:
        return bundle_key(self.version, self.syntax, self.study, self.series, self.instance, frame=self.frame)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> BundleOrder:
        fields = json.loads(text)
        return cls(
            version=str(fields["version"]),
            syntax=str(fields["syntax"]),
            study=str(fields["study"]),
            series=str(fields.get("series", "-")),
            instance=str(fields.get("instance", "-")),
            frame=int(fields["frame"]) if fields.get("frame") is not None else None,
        )


def cached(reader: ObjectReader, series: SeriesItem) -> str | None:
    """The pre-built document of the series' current version, if the hook has written it
    (the series item says so: no storage read is spent on a missing document)."""
    version = series.version
    if series.metadata_version != version:
        return None
    key = series_metadata_key(series.study_uid, series.series_uid, version)
    return gzip.decompress(reader.read(key)).decode()


def assemble(reader: ObjectReader, index: Index, study: str, series: str) -> str:
    """The series' document from its per-instance documents, in instance order."""
    items = index.instances(DicomWebURI("", study=study, series=series))
    with ThreadPoolExecutor(max_workers=_READERS) as pool:
        documents = list(pool.map(lambda i: reader.read(metadata_key(i.s3_key)).decode(), items))
    return "[" + ",".join(documents) + "]"
