"""AI inference end to end through `make serve`: STOW a CT series, wait until it is stable,
find the SEG and SR in the study with QIDO-RS, retrieve them with WADO-RS.

The local runtime's stable age is a few seconds (STABLE_AGE_SECONDS, default 3); the
chain is the deployed one: InstanceStored → StabilityQueue (delayed) → StabilityFunction
→ SeriesStable → InferenceRule → InferenceQueue → InferenceFunction → STOW ingest.
"""

from __future__ import annotations

import io
import time
from typing import Any

import pydicom
import pytest
from dicomweb_client import DICOMwebClient

from infra.datasets import synthetic_ct
from infra.datasets.generate import new_uid, to_part10
from tests.e2e.conftest import Runtime
from tests.e2e.helpers import stow

pytestmark = pytest.mark.e2e

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
WAIT_S = 120


def _client(runtime: Runtime, role: str) -> DICOMwebClient:
    return DICOMwebClient(runtime.base_url, headers={"Authorization": f"Bearer {runtime.tokens[role]}"})


def _value(item: dict[str, Any], tag: str) -> Any:
    values = item.get(tag, {}).get("Value", [])
    return values[0] if values else None


def _of(events: list[dict[str, Any]], kind: str, series: str) -> list[dict[str, Any]]:
    return [
        e
        for e in events
        if e.get("detail-type") == kind and e.get("detail", {}).get("seriesInstanceUID") == series
    ]


def _wait_for(runtime: Runtime, kind: str, series: str) -> dict[str, Any]:
    events = runtime.wait_for_events(lambda events: bool(_of(events, kind, series)), timeout=WAIT_S)
    found = _of(events, kind, series)
    assert found, f"no {kind} for series {series} within {WAIT_S} s:\n{runtime.log_tail()}"
    return found[0]


def test_a_stored_ct_series_gets_a_seg_and_sr_that_viewers_find(runtime: Runtime) -> None:
    # Given a CT series stored through STOW-RS
    study, series = new_uid(), new_uid()
    datasets = synthetic_ct.ct_series(series_uid=series)
    for ds in datasets:
        ds.StudyInstanceUID = study
        ds.SOPInstanceUID = new_uid()
    response = stow(runtime.base_url, [to_part10(ds) for ds in datasets], token=runtime.tokens["uploader"])
    assert response.status_code == 200, response.text

    # When the series has been quiet for the stable age, the events flow
    stable = _wait_for(runtime, "SeriesStable", series)
    assert stable["detail"]["numberOfSeriesRelatedInstances"] == len(datasets)
    completed = _wait_for(runtime, "InferenceCompleted", series)
    results = {r["sopClassUID"]: r for r in completed["detail"]["results"]}
    assert set(results) == {SEG_STORAGE, COMPREHENSIVE_3D_SR}

    # Then a viewer finds them in the study with QIDO-RS
    viewer = _client(runtime, "viewer")
    found = viewer.search_for_series(study_instance_uid=study)
    modalities = sorted(_value(s, "00080060") for s in found)
    assert modalities == ["CT", "SEG", "SR"]
    (seg_series,) = [s for s in found if _value(s, "00080060") == "SEG"]

    # And retrieves the SEG, which references the CT images and decodes to the body mask
    seg_uid = results[SEG_STORAGE]["sopInstanceUID"]
    seg = viewer.retrieve_instance(
        study_instance_uid=study,
        series_instance_uid=_value(seg_series, "0020000E"),
        sop_instance_uid=seg_uid,
    )
    assert seg.SOPClassUID == SEG_STORAGE
    referenced = {
        i.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence for i in s.ReferencedInstanceSequence
    }
    assert referenced == {ds.SOPInstanceUID for ds in datasets}
    assert int(seg.NumberOfFrames) == len(synthetic_ct.BODY_SLICES)
    # And the SR's metadata is served like any instance's
    sr = results[COMPREHENSIVE_3D_SR]
    metadata = viewer.retrieve_instance_metadata(
        study_instance_uid=study,
        series_instance_uid=sr["seriesInstanceUID"],
        sop_instance_uid=sr["sopInstanceUID"],
    )
    assert _value(metadata, "00080016") == COMPREHENSIVE_3D_SR
    # And inference ran once for this series version
    time.sleep(1)
    assert len(_of(runtime.read_events(), "InferenceCompleted", series)) == 1
    # And the SEG is a valid Part 10 object as stored
    raw = runtime.instance_bytes(seg_uid)
    assert raw is not None
    assert pydicom.dcmread(io.BytesIO(raw)).SOPInstanceUID == seg_uid
