"""A stable series → each accepting model → SEG/SR results stored in the same study.

One ``SeriesStable`` event (EventBridge → SQS → the inference function) is processed as:

1. the models that accept the series (modality, SOP class, body part) are chosen;
2. the series is skipped when it has changed since the event (a newer ``SeriesStable``
   follows) and, per model, when an index item records a run for (series version, model,
   model version) — inference is idempotent per series version and model version;
3. the series' instances are read from the index and S3 (bounded: instance count and
   bytes), the model runs, and its output is validated (model output is untrusted);
4. the SEG/SR objects go through the same ingest path as any STOW (Part 10 validation,
   S3, index, ``InstanceStored``), so a broken object is refused, never stored;
5. a run record is written and ``InferenceCompleted`` is published.

A model that crashes or returns garbage fails only its own run: the others still run, and
the message is retried and finally dead-lettered (with an alarm). Ingest is never blocked:
all of this happens after the instances were stored.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from dicomweb_core.dicom.uid import validate_uid
from dicomweb_core.events import INFERENCE_COMPLETED, EventPublisher
from dicomweb_core.hooks.inference.model import Model, ModelOutputError, SeriesDescriptor, validate_result
from dicomweb_core.hooks.inference.results import build_results
from dicomweb_core.index.access import Index
from dicomweb_core.index.models import InferenceRunItem, SeriesItem
from dicomweb_core.observability import logger
from dicomweb_core.storage import ObjectReader
from dicomweb_core.stow.service import StowService
from dicomweb_core.web.uri import DicomWebURI


class InferenceFailed(RuntimeError):
    """At least one model failed on the series; the message is retried, then dead-lettered."""


@dataclass(frozen=True, slots=True)
class Bounds:
    """What one run may load into memory (a Lambda has at most 10 GB)."""

    max_instances: int = 2000
    max_bytes: int = 1024 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Selection:
    """Which stable series go to the models at all (beyond the rule's modality filter):
    body parts and SOP classes, from the template's parameters; ``*`` admits any."""

    body_parts: frozenset[str] = frozenset({"*"})
    sop_classes: frozenset[str] = frozenset({"*"})

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Selection:
        def values(name: str) -> frozenset[str]:
            found = frozenset(v.strip().upper() for v in environ.get(name, "*").split(",") if v.strip())
            return found or frozenset({"*"})

        return cls(values("INFERENCE_BODY_PARTS"), values("INFERENCE_SOP_CLASSES"))

    def admits(self, series: SeriesDescriptor) -> bool:
        return ("*" in self.body_parts or (series.body_part or "").upper() in self.body_parts) and (
            "*" in self.sop_classes or series.sop_class_uid.upper() in self.sop_classes
        )


@dataclass(frozen=True, slots=True)
class RunOutcome:
    model: str
    status: str  # "completed", "declined", "skipped-done", "skipped-changed", "too-large"
    results: tuple[dict[str, str], ...] = ()


@dataclass
class InferencePipeline:
    models: Sequence[Model]
    reader: ObjectReader
    stow: StowService
    events: EventPublisher
    bounds: Bounds = field(default_factory=Bounds)
    selection: Selection = field(default_factory=Selection)
    index: Index = field(default_factory=Index)

    def process(self, detail: Mapping[str, Any]) -> list[RunOutcome]:
        series = _descriptor(detail)
        version = str(detail["seriesVersion"])
        if not self.selection.admits(series):
            return []
        chosen = [m for m in self.models if m.accepts(series)]
        if not chosen:
            return []
        current = self.index.at_version(
            SeriesItem, SeriesItem.key(series.study_uid, series.series_uid), version
        )
        if current is None:  # changed (a newer SeriesStable follows) or deleted
            return [RunOutcome(m.name, "skipped-changed") for m in chosen]
        pending = [m for m in chosen if not self._done(series, version, m)]
        outcomes = [RunOutcome(m.name, "skipped-done") for m in chosen if m not in pending]
        if not pending:
            return outcomes
        datasets = self._load(series)
        if datasets is None:
            return [*outcomes, *(RunOutcome(m.name, "too-large") for m in pending)]
        failed: list[str] = []
        for model in pending:
            try:
                outcomes.append(self._run(model, series, version, datasets, created=current.updated_at))
            except Exception:
                logger.exception("model failed", extra={"model": model.name, "version": model.version})
                failed.append(model.name)
        if failed:
            raise InferenceFailed(f"models failed on series {series.series_uid}: {', '.join(failed)}")
        return outcomes

    # ---------------------------------------------------------------- steps
    def _load(self, series: SeriesDescriptor) -> list[Dataset] | None:
        uri = DicomWebURI.from_path("", f"/studies/{series.study_uid}/series/{series.series_uid}")
        items = self.index.instances(uri)
        total = sum(int(i.size) for i in items)
        if len(items) > self.bounds.max_instances or total > self.bounds.max_bytes:
            logger.warning("series too large for inference", extra={"instances": len(items), "bytes": total})
            return None
        return [
            pydicom.dcmread(io.BytesIO(self.reader.read(i.s3_key, version_id=i.s3_version_id))) for i in items
        ]

    def _run(
        self,
        model: Model,
        series: SeriesDescriptor,
        version: str,
        datasets: list[Dataset],
        *,
        created: datetime | None,
    ) -> RunOutcome:
        raw = model.run(datasets)
        if raw is None:
            self._record(series, version, model, status="declined", results=[])
            return RunOutcome(model.name, "declined")
        result = validate_result(raw, datasets)
        # Dated by the series version, not the clock: a re-run (a crash before the run was
        # recorded) writes the same bytes under the same UIDs, which the store accepts.
        outputs = build_results(datasets, result, model, series_version=version, created=created)
        payloads = [memoryview(_part10(ds)) for ds in outputs]
        stored = self.stow.store_all(payloads, study=series.study_uid) if payloads else None
        if stored is not None and stored.failures:
            reasons = "; ".join(f"{f.reason:#06x} {f.message}" for f in stored.failures)
            raise ModelOutputError(f"the store refused the model's output: {reasons}")
        results = [
            {
                "seriesInstanceUID": s.series_instance_uid,
                "sopInstanceUID": s.sop_instance_uid,
                "sopClassUID": s.sop_class_uid,
                "modality": s.modality or "",
            }
            for s in (stored.stored if stored is not None else [])
        ]
        self._record(series, version, model, status="completed", results=results)
        self.events.publish(
            INFERENCE_COMPLETED,
            [
                {
                    "studyInstanceUID": series.study_uid,
                    "seriesInstanceUID": series.series_uid,
                    "seriesVersion": version,
                    "model": model.name,
                    "modelVersion": model.version,
                    "results": results,
                    "measurements": [
                        {"name": m.name.meaning, "value": m.value, "unit": m.unit.value}
                        for m in result.measurements
                    ],
                }
            ],
        )
        return RunOutcome(model.name, "completed", tuple(results))

    # ------------------------------------------------------------ run records
    def _done(self, series: SeriesDescriptor, version: str, model: Model) -> bool:
        key = InferenceRunItem.key(series.study_uid, series.series_uid, version, model.name, model.version)
        return self.index.run_recorded(key)

    def _record(
        self,
        series: SeriesDescriptor,
        version: str,
        model: Model,
        *,
        status: str,
        results: list[dict[str, str]],
    ) -> None:
        key = InferenceRunItem.key(series.study_uid, series.series_uid, version, model.name, model.version)
        run = InferenceRunItem(
            *key,
            study_uid=series.study_uid,
            series_uid=series.series_uid,
            model=model.name,
            model_version=model.version,
            status=status,
            results=json.dumps(results),
            updated_at=datetime.now(UTC),
        )
        self.index.record_run(run)


def _descriptor(detail: Mapping[str, Any]) -> SeriesDescriptor:
    return SeriesDescriptor(
        study_uid=validate_uid(detail["studyInstanceUID"], name="StudyInstanceUID"),
        series_uid=validate_uid(detail["seriesInstanceUID"], name="SeriesInstanceUID"),
        modality=str(detail.get("modality") or ""),
        sop_class_uid=str(detail.get("sopClassUID") or ""),
        body_part=str(detail.get("bodyPartExamined") or "") or None,
        instance_count=int(detail.get("numberOfSeriesRelatedInstances") or 0),
    )


def _part10(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()
