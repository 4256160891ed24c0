"""`make serve LOAD=DIR`: import a folder of DICOM files through STOW-RS.

Files go through the same route, authorizer and handler as any client's upload, in
multipart/related batches that fit the Lambda request payload limit.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import requests

from dicomweb_core.web.multipart import encode_multipart, multipart_content_type

# Raw bytes per request: base64 in the payload-v2 event must stay under 6 MB.
MAX_BATCH_BYTES = 4 * 1024 * 1024


@dataclass
class LoadReport:
    stored: int = 0
    failed: int = 0
    skipped: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"LOAD: {self.stored} instances stored, {self.failed} refused, {len(self.skipped)} skipped"]
        lines += [f"  skipped {s}" for s in self.skipped[:20]]
        lines += [f"  error {e}" for e in self.errors[:20]]
        return "\n".join(lines)


def _batches(folder: Path, report: LoadReport) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    size = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if data[128:132] != b"DICM":
            report.skipped.append(f"{path}: not a DICOM Part 10 file")
            continue
        if len(data) > MAX_BATCH_BYTES:
            report.skipped.append(f"{path}: {len(data) / 2**20:.1f} MiB is over the API request limit")
            continue
        if batch and size + len(data) > MAX_BATCH_BYTES:
            yield batch
            batch, size = [], 0
        batch.append(data)
        size += len(data)
    if batch:
        yield batch


def load_folder(folder: Path, *, base_url: str, token: str) -> LoadReport:
    report = LoadReport()
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    for batch in _batches(folder, report):
        body, boundary = encode_multipart(({"Content-Type": "application/dicom"}, data) for data in batch)
        response = session.post(
            f"{base_url}/studies",
            data=body,
            headers={
                "Content-Type": multipart_content_type(boundary, "application/dicom"),
                "Accept": "application/dicom+json",
            },
            timeout=60,
        )
        if response.status_code not in (200, 202, 409):
            report.errors.append(f"HTTP {response.status_code}: {response.text[:200]}")
            report.failed += len(batch)
            continue
        result = response.json()
        report.stored += len(result.get("00081199", {}).get("Value", []))
        report.failed += len(result.get("00081198", {}).get("Value", []))
        report.failed += len(result.get("0008119A", {}).get("Value", []))
    return report
