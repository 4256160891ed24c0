"""The SageMaker endpoint model against moto's sagemaker-runtime.

Responses are queued through moto's API (``/moto-api/static/sagemaker/endpoint-results``).
moto 5.2 decodes every sagemaker-runtime request body as UTF-8, so a binary ``.npy`` body
would crash it: a ``before-send`` hook on the test's client records the real body and hands
moto its SHA-256 instead. Everything else is the real boto3 client talking to moto.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from collections.abc import Iterator
from typing import Any

import boto3
import numpy as np
import numpy.typing as npt
import pytest
import requests
from pydicom import Dataset

from dicomweb_core.hooks.inference.model import ModelOutputError, SeriesDescriptor, validate_result
from dicomweb_core.hooks.inference.sagemaker import SageMakerModel, parse_response
from infra.datasets import synthetic_ct as phantom

ENDPOINT = "body-seg"
MOTO_RESULTS = "http://motoapi.amazonaws.com/moto-api/static/sagemaker/endpoint-results"
SHAPE = (phantom.SLICES, phantom.ROWS, phantom.COLUMNS)
CATEGORY = {"value": "91723000", "scheme": "SCT", "meaning": "Anatomical Structure"}
TYPE = {"value": "38266002", "scheme": "SCT", "meaning": "Entire body"}
VOLUME = {
    "name": {"value": "118565006", "scheme": "SCT", "meaning": "Volume"},
    "value": 215.2,
    "unit": {"value": "mL", "scheme": "UCUM", "meaning": "milliliter"},
}


class Endpoint:
    """A moto-backed sagemaker-runtime client plus the request bodies it sent."""

    def __init__(self) -> None:
        self.client = boto3.client("sagemaker-runtime", region_name="us-east-1")
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        self.client.meta.events.register_first("before-send.sagemaker-runtime.InvokeEndpoint", self._record)

    def _record(self, request: Any, **_: Any) -> None:
        body = request.body if isinstance(request.body, bytes) else request.body.read()
        self.bodies.append(body)
        self.headers.append(
            {k.lower(): v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()}
        )
        request.body = hashlib.sha256(body).hexdigest().encode("ascii")
        request.headers["Content-Length"] = str(len(request.body))

    def respond(self, body: str, content_type: str = "application/json") -> None:
        response = requests.post(
            MOTO_RESULTS, json={"results": [{"Body": body, "ContentType": content_type}]}, timeout=5
        )
        assert response.status_code == 201

    def model(self, **options: Any) -> SageMakerModel:
        return SageMakerModel(ENDPOINT, ["CT"], self.client, **options)


@pytest.fixture
def endpoint(aws: None) -> Iterator[Endpoint]:
    yield Endpoint()


@pytest.fixture(scope="module")
def series() -> list[Dataset]:
    return phantom.ct_series()


def packbits(mask: npt.NDArray[np.bool_]) -> str:
    return base64.b64encode(np.packbits(mask.reshape(-1)).tobytes()).decode("ascii")


def response(segment: npt.NDArray[np.bool_] | None = None, /, **changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "mask": None if segment is None else {"shape": list(segment.shape), "packbits": packbits(segment)},
        "label": "Body",
        "category": CATEGORY,
        "type": TYPE,
        "measurements": [VOLUME],
    }
    document.update(changes)
    return document


# --- through moto ---------------------------------------------------------------------------------


def test_happy_path(endpoint: Endpoint, series: list[Dataset]) -> None:
    body = phantom.expected_body()  # the endpoint answers in slice order
    endpoint.respond(json.dumps(response(body)))
    result = endpoint.model(version="3").run(series)
    assert result is not None and result.mask is not None
    assert np.array_equal(result.mask, phantom.in_input_order(body, series))  # back in input order
    assert result.segment_label == "Body"
    assert result.segmented_type.value == "38266002"
    (volume,) = result.measurements
    assert (volume.value, volume.unit.value, volume.derivation) == (215.2, "mL", None)
    validate_result(result, series)

    (sent,) = endpoint.bodies
    volume_sent = np.load(io.BytesIO(sent), allow_pickle=False)
    assert volume_sent.dtype == np.int16 and volume_sent.shape == SHAPE
    expected = np.rint(phantom.hu_volume()).astype(np.int16)  # HU, slice order
    assert np.array_equal(volume_sent, expected)
    headers = endpoint.headers[0]
    assert headers["content-type"] == "application/x-npy"
    assert headers["accept"] == "application/json"
    assert headers["x-amzn-sagemaker-custom-attributes"] == "spacing_mm=2,2,2.5;modality=CT"


def test_measurements_only_and_declines(endpoint: Endpoint, series: list[Dataset]) -> None:
    endpoint.respond(json.dumps(response(None)))
    result = endpoint.model().run(series)
    assert result is not None and result.mask is None and len(result.measurements) == 1
    endpoint.respond("null")
    # moto answers a repeated request with the same result, so send another volume
    assert endpoint.model().run(phantom.ct_series(seed=8)) is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps(response(np.zeros((phantom.SLICES, 64, 32), dtype=np.bool_))), "mask.shape"),
        (json.dumps(response(None, measurements=[{**VOLUME, "value": float("nan")}])), "not valid JSON"),
    ],
)
def test_garbage_responses(endpoint: Endpoint, series: list[Dataset], body: str, message: str) -> None:
    endpoint.respond(body)
    with pytest.raises(ModelOutputError, match=message):
        endpoint.model().run(series)


def test_wrong_content_type(endpoint: Endpoint, series: list[Dataset]) -> None:
    endpoint.respond(json.dumps(response(None)), content_type="text/plain")
    with pytest.raises(ModelOutputError, match="text/plain"):
        endpoint.model().run(series)


def test_oversized_response(endpoint: Endpoint, series: list[Dataset]) -> None:
    endpoint.respond(json.dumps(response(phantom.expected_body())))
    with pytest.raises(ModelOutputError, match="over 1000 bytes"):
        endpoint.model(max_response_bytes=1000).run(series)


def test_oversized_volumes_are_not_sent(endpoint: Endpoint, series: list[Dataset], caplog: Any) -> None:
    assert endpoint.model(max_payload_bytes=100_000).run(series) is None  # 20x64x64 int16 = 160 KiB
    assert endpoint.bodies == []
    assert "over the 100000-byte limit" in caplog.text


def test_declines_what_is_not_a_volume(endpoint: Endpoint, series: list[Dataset]) -> None:
    broken = [phantom.ct_slice(i, phantom.hu_volume()) for i in range(3)]
    broken[1].PixelSpacing = [1.0, 1.0]
    assert endpoint.model().run(broken) is None
    frames = [phantom.ct_slice(0, phantom.hu_volume())]
    frames[0].NumberOfFrames = 2
    assert endpoint.model().run(frames) is None
    assert endpoint.model().run([]) is None
    assert endpoint.bodies == []


def test_accepts_by_modality() -> None:
    model = SageMakerModel("e", ["ct", " MR "], client=object())
    assert model.name == "sagemaker:e"
    for modality, wanted in (("CT", True), ("MR", True), ("mr", True), ("PT", False)):
        series = SeriesDescriptor("1.2", "1.2.3", modality, phantom.CT_IMAGE_STORAGE, None, 1)
        assert model.accepts(series) is wanted
    with pytest.raises(ValueError, match="endpoint name"):
        SageMakerModel("", ["CT"])


# --- parsing, without the service -----------------------------------------------------------------


def _parse(document: Any) -> Any:
    return parse_response(json.dumps(document).encode(), SHAPE)


def test_parse_accepts_the_contract() -> None:
    mask = np.zeros(SHAPE, dtype=np.bool_)
    mask[3, 4, 5] = mask[-1, -1, -1] = True
    result = _parse(response(mask, measurements=[{**VOLUME, "derivation": None}]))
    assert np.array_equal(result.mask, mask)
    minimal = _parse({"label": "Body", "category": CATEGORY, "type": TYPE})
    assert minimal.mask is None and minimal.measurements == ()
    assert parse_response(b"null", SHAPE) is None


def _bad_mask(**mask: Any) -> dict[str, Any]:
    good = {"shape": list(SHAPE), "packbits": packbits(np.zeros(SHAPE, dtype=np.bool_))}
    return response(None, mask={**good, **mask})


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\xff\xfe", "not valid JSON"),
        (b'{"label": NaN}', "not valid JSON"),
        (b'{"label": Infinity}', "not valid JSON"),
        (json.dumps([1, 2]).encode(), "JSON object"),
        (json.dumps(response(None, extra=1)).encode(), "unknown keys: extra"),
        (json.dumps({"label": "Body", "category": CATEGORY}).encode(), "lacks type"),
        (json.dumps(response(None, label=5)).encode(), "label"),
        (json.dumps(response(None, measurements={"a": 1})).encode(), "list"),
        (json.dumps(response(None, measurements=[{**VOLUME, "value": "1"}])).encode(), "number"),
        (json.dumps(response(None, measurements=[{**VOLUME, "value": True}])).encode(), "number"),
        (json.dumps(response(None, measurements=[{**VOLUME, "value": 1e400}])).encode(), "not valid JSON"),
        (json.dumps(response(None, category={"value": "1", "scheme": "SCT"})).encode(), "lacks meaning"),
        (json.dumps(response(None, type={**TYPE, "meaning": 3})).encode(), "strings"),
        (json.dumps(_bad_mask(shape=[20, 64])).encode(), "three integers"),
        (json.dumps(_bad_mask(shape=[20, 64, 64.0])).encode(), "three integers"),
        (json.dumps(_bad_mask(shape=[10, 64, 128])).encode(), "mask.shape"),
        (json.dumps(_bad_mask(packbits="not base64!")).encode(), "base64"),
        (json.dumps(_bad_mask(packbits=base64.b64encode(b"\0" * 10).decode())).encode(), "10 bytes"),
        (json.dumps(_bad_mask(packbits=None)).encode(), "base64 string"),
        (json.dumps(response(None, mask={"shape": list(SHAPE)})).encode(), "lacks packbits"),
    ],
)
def test_parse_rejects(payload: bytes, message: str) -> None:
    with pytest.raises(ModelOutputError, match=message):
        parse_response(payload, SHAPE)


def test_parse_rejects_set_padding_bits() -> None:
    shape = (1, 3, 3)  # 9 voxels: 2 bytes, 7 padding bits
    packed = base64.b64encode(bytes([0, 0b0100_0000])).decode()
    document = response(None, mask={"shape": list(shape), "packbits": packed})
    with pytest.raises(ModelOutputError, match="padding"):
        parse_response(json.dumps(document).encode(), shape)


def test_from_environ_limits() -> None:
    model = SageMakerModel.from_environ(
        {"SAGEMAKER_ENDPOINT_NAME": "e", "SAGEMAKER_MAX_PAYLOAD_BYTES": "1234"}, client=object()
    )
    assert model.max_payload_bytes == 1234
