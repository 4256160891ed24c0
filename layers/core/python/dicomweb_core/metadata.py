"""Instance metadata for WADO-RS (PS3.18 §10.4.1.1.2, Annex F), built once at ingest.

The metadata of an instance is its data set as DICOM JSON without bulk data. The rule
(docs/conformance.md): values of binary VRs (OB, OD, OF, OL, OV, OW, UN) longer than
1 KiB become a ``BulkDataURI``; shorter ones stay inline as ``InlineBinary``. The URI
names the element's path in the data set — top-level tag, or tags and item numbers
joined by dots for nested elements — under the instance's ``/bulkdata/`` resource.

URIs are stored with a placeholder for the public base URL, substituted when served, so
a changed ``PublicBaseUrl`` never requires rewriting stored documents.
"""

from __future__ import annotations

import json
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

BASE_PLACEHOLDER = "{{DICOMWEB_BASE_URL}}"
BULK_DATA_THRESHOLD = 1024
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})


def bulkdata_path(study: str, series: str, sop: str, element_path: str) -> str:
    return f"/studies/{study}/series/{series}/instances/{sop}/bulkdata/{element_path}"


def instance_metadata(dataset: Dataset, *, study: str, series: str, sop: str) -> dict[str, Any]:
    """DICOM JSON of ``dataset`` (no File Meta Information), bulk data as URIs."""
    paths: dict[int, str] = {}
    _record_paths(dataset, "", paths)

    def uri(element: DataElement) -> str:
        return BASE_PLACEHOLDER + bulkdata_path(study, series, sop, paths[id(element)])

    return dataset.to_json_dict(bulk_data_threshold=BULK_DATA_THRESHOLD, bulk_data_element_handler=uri)


def _record_paths(dataset: Dataset, prefix: str, paths: dict[int, str]) -> None:
    for element in dataset:
        path = f"{prefix}{element.tag:08X}"
        if element.VR == "SQ":
            for number, item in enumerate(element.value):
                _record_paths(item, f"{path}.{number}.", paths)
        elif element.VR in _BINARY_VRS:
            paths[id(element)] = path


def render(document: str, base_url: str) -> str:
    """A stored metadata document with its bulk data URIs made absolute."""
    return document.replace(BASE_PLACEHOLDER, json.dumps(base_url.rstrip("/"))[1:-1])
