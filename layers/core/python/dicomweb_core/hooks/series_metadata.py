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
from dataclasses import dataclass, field

from dicomweb_core.index.access import Index
from dicomweb_core.index.models import SeriesItem
from dicomweb_core.storage import InstanceStore, ObjectReader, series_metadata_key
from dicomweb_core.wado.prebuilt import assemble

DICOM_JSON = "application/dicom+json"


@dataclass
class SeriesMetadataBuilder:
    """Writes the document of a stable series' current version (the metadata hook)."""

    reader: ObjectReader
    store: InstanceStore
    index: Index = field(default_factory=Index)

    def build(self, study: str, series: str, version: str) -> str:
        """``built``, ``exists`` (already written) or ``changed`` (a newer version is coming)."""
        current = self.index.at_version(SeriesItem, SeriesItem.key(study, series), version)
        if current is None:
            return "changed"
        if current.metadata_version == version:
            return "exists"
        body = gzip.compress(assemble(self.reader, self.index, study, series).encode(), 6)
        self.store.put_document(series_metadata_key(study, series, version), body, content_type=DICOM_JSON)
        # announced only while it is still the current version
        return "built" if self.index.record_version(current, "metadata_version") else "changed"
