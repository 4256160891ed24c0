"""Pre-built series metadata documents, so a viewer's series/study metadata request costs
one index read and one storage read instead of one read per instance (PS3.18 §10.4.1.1.2).

The document of a series version is the ordered array of its instances' metadata
documents (built at ingest, BulkDataURIs still relative to the placeholder base, see
``metadata.render``). It is written once per version under a key that names the version,
by the metadata hook when the series becomes stable (``SeriesStable``), never by the
retrieve function (which only reads: issue 5's least privilege). A request for a series
that has no document for its current version (still receiving, or changed since) is
answered from the per-instance documents directly, and the answer is the same.
"""

from __future__ import annotations

import gzip
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from dicomweb_core.index.models import SeriesItem
from dicomweb_core.index.reader import instances_of
from dicomweb_core.index.versions import at_version, record_version
from dicomweb_core.storage import InstanceStore, ObjectReader, metadata_key, series_metadata_key
from dicomweb_core.web.uri import DicomWebURI

DICOM_JSON = "application/dicom+json"
_READERS = 16  # parallel S3 reads when assembling a document


def cached(reader: ObjectReader, series: SeriesItem) -> str | None:
    """The pre-built document of the series' current version, if the hook has written it
    (the series item says so: no storage read is spent on a missing document)."""
    version = series.version
    if series.metadata_version != version:
        return None
    key = series_metadata_key(series.study_uid, series.series_uid, version)
    return gzip.decompress(reader.read(key)).decode()


def assemble(reader: ObjectReader, study: str, series: str) -> str:
    """The series' document from its per-instance documents, in instance order."""
    items = instances_of(DicomWebURI("", study=study, series=series))
    with ThreadPoolExecutor(max_workers=_READERS) as pool:
        documents = list(pool.map(lambda i: reader.read(metadata_key(i.s3_key)).decode(), items))
    return "[" + ",".join(documents) + "]"


@dataclass
class SeriesMetadataBuilder:
    """Writes the document of a stable series' current version (the metadata hook)."""

    reader: ObjectReader
    store: InstanceStore

    def build(self, study: str, series: str, version: str) -> str:
        """``built``, ``exists`` (already written) or ``changed`` (a newer version is coming)."""
        current = at_version(SeriesItem, SeriesItem.key(study, series), version)
        if current is None:
            return "changed"
        if current.metadata_version == version:
            return "exists"
        body = gzip.compress(assemble(self.reader, study, series).encode(), 6)
        self.store.put_document(series_metadata_key(study, series, version), body, content_type=DICOM_JSON)
        # announced only while it is still the current version
        return "built" if record_version(current, SeriesItem.metadata_version) else "changed"
