"""From an ``InstanceStored`` event to a de-identified copy in the research store.

The copy goes through the very STOW path (validation, S3 then index, events with the
source ``dicomweb.deid``), so it is indexed for QIDO/WADO exactly like a primary
instance. De-identification is deterministic under the key, so a replayed event
produces byte-identical output, which STOW accepts idempotently: at-least-once delivery
stores each copy once.

Instances that may carry burned-in identifying text are held in a quarantine (a record
with the reason under ``quarantine/`` in the research bucket) instead of being
published, unless the quarantine is switched off (DeidQuarantineBurnedIn).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from dicomweb_core.hooks.deid.profile import Deidentifier
from dicomweb_core.storage import InstanceStore, ObjectReader
from dicomweb_core.stow.service import StowService

# Modalities and SOP classes whose pixels often carry text (PS3.15 E.3.1 Clean Pixel Data).
TEXT_PRONE_MODALITIES = frozenset({"US", "XC", "ES", "OT", "SC", "DOC", "GM"})
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
ENCAPSULATED_DOCUMENT_PREFIX = "1.2.840.10008.5.1.4.1.1.104"


@dataclass(frozen=True, slots=True)
class Rules:
    modalities: frozenset[str]  # "*" means all
    quarantine_burned_in: bool

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Rules:
        modalities = frozenset(
            m.strip().upper() for m in environ.get("DEID_MODALITIES", "*").split(",") if m.strip()
        )
        return cls(modalities or frozenset({"*"}), environ.get("DEID_QUARANTINE_BURNED_IN", "true") == "true")

    def selects(self, modality: str) -> bool:
        """Automatic de-identification of this modality ("none": on demand only)."""
        if "NONE" in self.modalities:
            return False
        return "*" in self.modalities or modality.upper() in self.modalities


def burned_in_text_reason(dataset: Dataset) -> str | None:
    """Why the pixels may show identifying text, or None (PS3.15 E.3.1)."""
    declared = str(dataset.get("BurnedInAnnotation", "") or "").upper()
    if declared == "YES":
        return "BurnedInAnnotation is YES"
    if declared == "NO":
        return None
    sop_class = str(dataset.get("SOPClassUID", ""))
    if sop_class.startswith(ENCAPSULATED_DOCUMENT_PREFIX):
        return "an encapsulated document (PDF, CDA, ...) may contain any text"
    if "PixelData" not in dataset:
        return None
    if sop_class.startswith(SECONDARY_CAPTURE_PREFIX):
        return "a secondary capture (screenshot) without BurnedInAnnotation NO"
    modality = str(dataset.get("Modality", "") or "").upper()
    if modality in TEXT_PRONE_MODALITIES:
        return f"modality {modality} often burns text into pixels and BurnedInAnnotation is not NO"
    return None


class DeidentificationFailed(RuntimeError):
    """The copy could not be stored; the event is retried, then dead-lettered."""


@dataclass(frozen=True, slots=True)
class Outcome:
    status: str  # stored | skipped | quarantined
    reason: str = ""


class DeidPipeline:
    def __init__(
        self,
        *,
        source: ObjectReader,
        deidentifier: Deidentifier,
        stow: StowService,
        quarantine: InstanceStore,
        rules: Rules,
    ) -> None:
        self.source = source
        self.deidentifier = deidentifier
        self.stow = stow
        self.quarantine = quarantine
        self.rules = rules

    def process(self, detail: Mapping[str, Any]) -> Outcome:
        """One ``InstanceStored`` event's detail → a stored, skipped or quarantined copy."""
        if not detail.get("forced") and not self.rules.selects(str(detail.get("modality", ""))):
            return Outcome("skipped", "modality not selected for de-identification")
        data = self.source.read(str(detail["s3Key"]), version_id=detail.get("s3VersionId") or None)
        dataset = pydicom.dcmread(io.BytesIO(data))
        reason = burned_in_text_reason(dataset) if self.rules.quarantine_burned_in else None
        if reason is not None:
            self._hold(detail, reason)
            return Outcome("quarantined", reason)
        output = self.deidentifier.deidentify(dataset)
        buffer = io.BytesIO()
        output.save_as(buffer, enforce_file_format=True)
        # The same validation as any STOW: the profile's output is untrusted input too.
        outcome = self.stow.store_all([memoryview(buffer.getvalue())], study=None)
        if outcome.failures:
            failure = outcome.failures[0]
            raise DeidentificationFailed(
                f"the research store refused the copy: {failure.reason:#06x} {failure.message}"
            )
        return Outcome("stored")

    def _hold(self, detail: Mapping[str, Any], reason: str) -> None:
        record = {
            "reason": reason,
            "source": {
                k: detail.get(k) for k in ("bucket", "s3Key", "s3VersionId", "sopClassUID", "modality")
            },
        }
        name = hashlib.sha256(f"{detail.get('s3Key')}@{detail.get('s3VersionId')}".encode()).hexdigest()
        self.quarantine.put_document(
            f"quarantine/{name}.json", json.dumps(record).encode(), content_type="application/json"
        )
