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
from collections.abc import Callable
from typing import Any

from pydicom.dataset import Dataset

BASE_PLACEHOLDER = "{{DICOMWEB_BASE_URL}}"
BULK_DATA_THRESHOLD = 1024
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})


def bulkdata_path(study: str, series: str, sop: str, element_path: str) -> str:
    return f"/studies/{study}/series/{series}/instances/{sop}/bulkdata/{element_path}"


def instance_metadata(dataset: Dataset, *, study: str, series: str, sop: str) -> dict[str, Any]:
    """DICOM JSON of ``dataset`` (no File Meta Information), bulk data as URIs."""
    # pydicom compares its threshold with the base64 length, which would make values of
    # 769 to 1024 bytes bulk data too; the rule is on the value's own length, applied here.
    document: dict[str, Any] = dataset.to_json_dict()
    _bulk_data_as_uris(dataset, document, "", lambda path: bulkdata_path(study, series, sop, path))
    return document


def _bulk_data_as_uris(
    dataset: Dataset, document: dict[str, Any], prefix: str, path_of: Callable[[str], str]
) -> None:
    for element in dataset:
        key = f"{element.tag:08X}"
        entry = document.get(key)
        if entry is None:
            continue
        if element.VR == "SQ":
            for number, (item, item_json) in enumerate(
                zip(element.value, entry.get("Value") or [], strict=False)
            ):
                _bulk_data_as_uris(item, item_json, f"{prefix}{key}.{number}.", path_of)
        elif (
            element.VR in _BINARY_VRS
            and "InlineBinary" in entry
            and isinstance(element.value, bytes | bytearray)
            and len(element.value) > BULK_DATA_THRESHOLD
        ):
            del entry["InlineBinary"]
            entry["BulkDataURI"] = BASE_PLACEHOLDER + path_of(f"{prefix}{key}")


def render(document: str, base_url: str) -> str:
    """A stored metadata document with its bulk data URIs made absolute."""
    return document.replace(BASE_PLACEHOLDER, json.dumps(base_url.rstrip("/"))[1:-1])
