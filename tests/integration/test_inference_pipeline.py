"""Inference against moto: SeriesStable → models → SEG/SR stored through STOW's ingest path.

Resources come from template.yaml. The series is a synthetic CT with a known body mask
(infra/datasets/synthetic_ct.py); the reference model runs for real, highdicom builds the
results, and the store re-validates them as untrusted input.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import boto3
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from dicomweb_core import config
from dicomweb_core.events import EventPublisher
from dicomweb_core.hooks.inference.model import (
    Code,
    Measurement,
    ModelOutputError,
    ModelResult,
    SeriesDescriptor,
)
from dicomweb_core.hooks.inference.pipeline import InferenceFailed, InferencePipeline
from dicomweb_core.hooks.inference.reference import CtBodyMaskModel
from dicomweb_core.index.access import Index
from dicomweb_core.index.models import InferenceRunItem, InstanceItem, SeriesItem, StudyItem
from dicomweb_core.storage import ObjectReader
from dicomweb_core.stow.service import StowService
from infra.datasets import synthetic_ct
from infra.datasets.generate import new_uid, to_part10
from infra.local.provision import Stack
from infra.samtemplate import load_template
from tests.lambda_harness import LambdaContext, load_handler, sqs_record
from tests.moto_stack import provisioned, stow_service
from tests.streams import settle

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


class CrashingModel:
    name = "crashes"
    version = "0.1"

    def accepts(self, series: SeriesDescriptor) -> bool:
        return True

    def run(self, datasets: Sequence[Dataset]) -> ModelResult | None:
        raise RuntimeError("segfault in the model")


class GarbageModel:
    """Returns a mask of the wrong shape and a NaN measurement."""

    name = "garbage"
    version = "0.1"

    def accepts(self, series: SeriesDescriptor) -> bool:
        return True

    def run(self, datasets: Sequence[Dataset]) -> ModelResult | None:
        code = Code("123", "99TEST", "Thing")
        return ModelResult(
            mask=np.ones((1, 2, 3), dtype=bool),
            segment_label="Thing",
            segmented_category=code,
            segmented_type=code,
            measurements=(Measurement(code, float("nan"), Code("mL", "UCUM", "milliliter")),),
        )


@dataclass
class InferenceEnv:
    stack: Stack
    stow: StowService
    sqs: Any
    completed_queue: str

    def pipeline(self, *models: Any) -> InferencePipeline:
        settings = self.stow.settings
        return InferencePipeline(
            models=list(models) or [CtBodyMaskModel()],
            reader=ObjectReader(settings.bucket_name),
            stow=self.stow,
            events=EventPublisher(settings.event_bus_name),
        )

    def store_series(self) -> tuple[list[Dataset], dict[str, Any]]:
        """A synthetic CT series in a new study; the SeriesStable detail announcing it."""
        study, series = new_uid(), new_uid()
        datasets = synthetic_ct.ct_series(series_uid=series)
        for ds in datasets:
            ds.StudyInstanceUID = study
            ds.SOPInstanceUID = new_uid()
        outcome = self.stow.store_all([memoryview(to_part10(ds)) for ds in datasets], study=None)
        assert not outcome.failures, outcome.failures
        settle()
        item = SeriesItem.get(*SeriesItem.key(study, series))
        detail = {
            "studyInstanceUID": study,
            "seriesInstanceUID": series,
            "seriesVersion": item.version,
            "modality": "CT",
            "sopClassUID": synthetic_ct.CT_IMAGE_STORAGE,
            "bodyPartExamined": "",
            "numberOfSeriesRelatedInstances": len(datasets),
        }
        return datasets, detail

    def completed(self) -> list[dict[str, Any]]:
        found = []
        while messages := self.sqs.receive_message(QueueUrl=self.completed_queue, MaxNumberOfMessages=10).get(
            "Messages", []
        ):
            for message in messages:
                found.append(json.loads(message["Body"])["detail"])
                self.sqs.delete_message(QueueUrl=self.completed_queue, ReceiptHandle=message["ReceiptHandle"])
        return found

    def study_objects(self, study: str) -> dict[str, list[Dataset]]:
        """Stored instances of the study by SOP Class, read back from S3."""
        reader = ObjectReader(self.stow.settings.bucket_name)
        found: dict[str, list[Dataset]] = {}
        for series in Index().series_of(study):
            for item in InstanceItem.query(
                series.pk, InstanceItem.sk.startswith(f"INSTANCE#{series.series_uid}#")
            ):
                data = reader.read(item.s3_key, version_id=item.s3_version_id)
                found.setdefault(item.sop_class_uid, []).append(pydicom.dcmread(io.BytesIO(data)))
        return found


@pytest.fixture
def env(aws: None) -> Iterator[InferenceEnv]:
    stack, settings = provisioned()
    sqs = boto3.client("sqs")
    events = boto3.client("events")
    url = sqs.create_queue(QueueName="completed")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    bus = stack.physical_ids["EventBus"]
    events.put_rule(
        Name="completed", EventBusName=bus, EventPattern=json.dumps({"detail-type": ["InferenceCompleted"]})
    )
    events.put_targets(Rule="completed", EventBusName=bus, Targets=[{"Id": "q", "Arn": arn}])
    yield InferenceEnv(stack, stow_service(settings), sqs, url)


def test_a_stable_ct_series_gets_a_seg_and_an_sr_in_its_study(env: InferenceEnv) -> None:
    # Given a stored CT series announced as stable
    datasets, detail = env.store_series()
    study = detail["studyInstanceUID"]
    # When the pipeline runs the reference model on it
    (outcome,) = env.pipeline().process(detail)
    # Then a SEG and an SR were stored in the same study, through the ingest path
    assert outcome.status == "completed"
    objects = env.study_objects(study)
    (seg,) = objects[SEG_STORAGE]
    (sr,) = objects[COMPREHENSIVE_3D_SR]
    assert seg.StudyInstanceUID == sr.StudyInstanceUID == study
    settle()  # the study's count, once AggregatesFunction has read the results' commits
    assert StudyItem.get(*StudyItem.key(study)).instance_count == len(datasets) + 2
    # And the SEG references the source images and carries the algorithm identification
    sources = {ds.SOPInstanceUID for ds in datasets}
    referenced = {
        i.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence for i in s.ReferencedInstanceSequence
    }
    assert referenced == sources
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("ct-body-mask", "1.0.0")
    # And the mask it carries is the known body (the table excluded)
    body_frames = int(seg.NumberOfFrames)
    assert body_frames == len(synthetic_ct.BODY_SLICES)
    # And InferenceCompleted names the results and the measurements
    (completed,) = env.completed()
    assert completed["model"] == "ct-body-mask"
    assert {r["sopInstanceUID"] for r in completed["results"]} == {seg.SOPInstanceUID, sr.SOPInstanceUID}
    volume = next(m["value"] for m in completed["measurements"] if m["unit"] == "mL")
    assert volume == pytest.approx(synthetic_ct.analytic_body_volume_ml(), rel=0.05)


def test_inference_runs_once_per_series_version(env: InferenceEnv) -> None:
    # Given a series already processed
    _datasets, detail = env.store_series()
    env.pipeline().process(detail)
    env.completed()
    # When the same SeriesStable is delivered again
    (again,) = env.pipeline().process(detail)
    # Then nothing runs or is stored again
    assert again.status == "skipped-done"
    assert env.completed() == []
    assert len(env.study_objects(detail["studyInstanceUID"])[SEG_STORAGE]) == 1


def test_a_series_that_changed_since_the_event_is_left_to_the_next_one(env: InferenceEnv) -> None:
    _datasets, detail = env.store_series()
    stale = {**detail, "seriesVersion": "1-0"}
    (outcome,) = env.pipeline().process(stale)
    assert outcome.status == "skipped-changed"
    assert SEG_STORAGE not in env.study_objects(detail["studyInstanceUID"])


def test_a_crashing_model_fails_the_message_but_not_the_other_models(env: InferenceEnv) -> None:
    _datasets, detail = env.store_series()
    with pytest.raises(InferenceFailed, match="crashes"):
        env.pipeline(CrashingModel(), CtBodyMaskModel()).process(detail)
    # The reference model's results are stored; the retry skips it and retries the crashing one
    assert SEG_STORAGE in env.study_objects(detail["studyInstanceUID"])
    with pytest.raises(InferenceFailed):
        env.pipeline(CrashingModel(), CtBodyMaskModel()).process(detail)
    assert len(env.study_objects(detail["studyInstanceUID"])[SEG_STORAGE]) == 1


def test_garbage_output_is_refused_and_nothing_is_written(env: InferenceEnv) -> None:
    datasets, detail = env.store_series()
    with pytest.raises(InferenceFailed):
        env.pipeline(GarbageModel()).process(detail)
    objects = env.study_objects(detail["studyInstanceUID"])
    assert set(objects) == {synthetic_ct.CT_IMAGE_STORAGE}
    assert env.completed() == []
    with pytest.raises(ModelOutputError):
        from dicomweb_core.hooks.inference.model import validate_result

        validate_result(GarbageModel().run(datasets), datasets)


def test_models_that_do_not_accept_the_series_are_not_run(env: InferenceEnv) -> None:
    _datasets, detail = env.store_series()
    assert env.pipeline().process({**detail, "modality": "MR"}) == []


@pytest.fixture
def inference(env: InferenceEnv, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """functions/inference/app.py with the environment the template gives InferenceFunction."""
    spec = load_template().functions()["InferenceFunction"]
    for name, value in env.stack.function_environment(spec).items():
        monkeypatch.setenv(name, value)
    config.settings.cache_clear()
    yield load_handler("InferenceFunction")
    config.settings.cache_clear()


def test_handler_runs_the_template_models_on_a_series_stable_event(
    env: InferenceEnv, inference: ModuleType
) -> None:
    _datasets, detail = env.store_series()
    event = {"source": "dicomweb", "detail-type": "SeriesStable", "detail": detail}
    response = inference.handler({"Records": [sqs_record("m1", event)]}, LambdaContext("InferenceFunction"))
    assert response == {"batchItemFailures": []}
    assert SEG_STORAGE in env.study_objects(detail["studyInstanceUID"])


def test_the_inference_rule_selects_stable_series_of_the_configured_modalities() -> None:
    rule = load_template().resources["InferenceRule"]["Properties"]["EventPattern"]
    assert rule["detail-type"] == ["SeriesStable"]
    assert rule["detail"]["modality"] == {"Ref": "InferenceModalities"}


def test_a_rerun_after_a_crash_before_the_run_record_stores_the_same_objects(env: InferenceEnv) -> None:
    # Given a run whose results were stored but whose run record was lost (crash in between)
    _datasets, detail = env.store_series()
    (first,) = env.pipeline().process(detail)
    for run in InferenceRunItem.query(
        StudyItem.key(detail["studyInstanceUID"])[0], InferenceRunItem.sk.startswith("RUN#")
    ):
        run.delete()
    # When the message is redelivered
    (again,) = env.pipeline().process(detail)
    # Then the results are the same objects (same UIDs, same bytes: the store accepts them)
    assert again.status == "completed"
    assert {r["sopInstanceUID"] for r in again.results} == {r["sopInstanceUID"] for r in first.results}
    assert len(env.study_objects(detail["studyInstanceUID"])[SEG_STORAGE]) == 1


def test_body_part_and_sop_class_parameters_select_the_series(env: InferenceEnv) -> None:
    from dicomweb_core.hooks.inference.pipeline import Selection

    _datasets, detail = env.store_series()
    chest_only = Selection.from_environ({"INFERENCE_BODY_PARTS": "CHEST", "INFERENCE_SOP_CLASSES": "*"})
    pipeline = env.pipeline()
    pipeline.selection = chest_only
    assert pipeline.process({**detail, "bodyPartExamined": "ABDOMEN"}) == []
    mr_only = Selection.from_environ({"INFERENCE_SOP_CLASSES": "1.2.840.10008.5.1.4.1.1.4"})
    pipeline.selection = mr_only
    assert pipeline.process(detail) == []
    pipeline.selection = Selection.from_environ({"INFERENCE_BODY_PARTS": "chest,*"})
    (outcome,) = pipeline.process({**detail, "bodyPartExamined": "ABDOMEN"})
    assert outcome.status == "completed"


def test_the_template_passes_the_selection_parameters() -> None:
    variables = load_template().resources["InferenceFunction"]["Properties"]["Environment"]["Variables"]
    assert variables["INFERENCE_BODY_PARTS"] == {"Fn::Join": [",", {"Ref": "InferenceBodyParts"}]}
    assert variables["INFERENCE_SOP_CLASSES"] == {"Fn::Join": [",", {"Ref": "InferenceSopClasses"}]}
