"""A model served by an Amazon SageMaker real-time endpoint (``InvokeEndpoint``).

The contract between this client and the endpoint's container:

Request
    ``ContentType: application/x-npy``, ``Accept: application/json``. The body is one
    ``numpy.save`` array: ``int16``, shape ``(slices, rows, columns)``, the series' stored
    values through the Modality LUT rescale (PS3.3 C.11.1: Hounsfield units for CT), rounded
    and clipped to the int16 range, slices sorted along the slice normal
    (:func:`~dicomweb_core.hooks.inference.volume.slice_order`). ``CustomAttributes`` carries
    ``spacing_mm=<row>,<column>,<slice>;modality=<Modality>`` (voxel spacing in mm).

Response
    ``Content-Type: application/json``, UTF-8. Either ``null`` (the model declines the
    input) or an object with exactly these keys::

        {
          "mask": null | {"shape": [slices, rows, columns],
                          "packbits": "<base64 of numpy.packbits(mask.reshape(-1))>"},
          "label": "Liver",
          "category": {"value": "91723000", "scheme": "SCT", "meaning": "Anatomical Structure"},
          "type": {"value": "10200004", "scheme": "SCT", "meaning": "Liver"},
          "measurements": [
            {"name": {"value": "118565006", "scheme": "SCT", "meaning": "Volume"},
             "value": 1523.5,
             "unit": {"value": "mL", "scheme": "UCUM", "meaning": "milliliter"},
             "derivation": null}
          ]
        }

    ``mask`` and ``measurements`` may be omitted (``null`` and ``[]``); ``derivation`` is
    optional. The mask has the request's shape and slice order; ``packbits`` is standard
    base64 (with padding) of ``numpy.packbits`` with the default big-endian bit order over
    the C-order flattened mask, padding bits zero. Codes follow PS3.16 (category CID 7150,
    type CID 7151, units UCUM). Anything else - invalid JSON, NaN or Infinity, a wrong shape
    or byte count, unknown keys, wrong types - raises
    :class:`~dicomweb_core.hooks.inference.model.ModelOutputError`.

Size limits
    SageMaker refuses real-time requests over 6 MB (4 MB for serverless endpoints), so a
    request larger than ``max_payload_bytes`` (default 6,000,000; env
    ``SAGEMAKER_MAX_PAYLOAD_BYTES``) is not sent: the model declines the series and logs a
    warning. A 512x512 int16 CT slice is 512 KiB, so this covers about 11 slices at full
    resolution; whole CT volumes need asynchronous inference (S3 input), which this client
    does not implement. Responses over ``max_response_bytes`` are rejected.

Errors from the service itself (throttling, ``ModelError`` when the container fails) are
raised as botocore exceptions: they are failures to retry, not model output.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom import Dataset

from dicomweb_core.hooks.inference.model import (
    Code,
    Measurement,
    ModelOutputError,
    ModelResult,
    SeriesDescriptor,
    validate_result,
)
from dicomweb_core.hooks.inference.volume import is_multiframe, modality_values, regular_volume

log = logging.getLogger(__name__)

REQUEST_CONTENT_TYPE = "application/x-npy"
RESPONSE_CONTENT_TYPE = "application/json"
DEFAULT_MAX_PAYLOAD_BYTES = 6_000_000
DEFAULT_MAX_RESPONSE_BYTES = 8 * 1024 * 1024
DEFAULT_MODALITIES = ("CT",)
_INT16 = np.iinfo(np.int16)
_RESULT_KEYS = {"mask", "label", "category", "type", "measurements"}
_MASK_KEYS = {"shape", "packbits"}
_CODE_KEYS = {"value", "scheme", "meaning"}
_MEASUREMENT_KEYS = {"name", "value", "unit", "derivation"}


class SageMakerModel:
    """A :class:`~dicomweb_core.hooks.inference.model.Model` that calls a SageMaker endpoint."""

    def __init__(
        self,
        endpoint_name: str,
        modalities: Sequence[str] = DEFAULT_MODALITIES,
        client: Any = None,
        *,
        version: str = "1",
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        if not endpoint_name:
            raise ValueError("a SageMaker model needs an endpoint name")
        self.endpoint_name = endpoint_name
        self.modalities = frozenset(m.strip().upper() for m in modalities if m.strip())
        self.name = f"sagemaker:{endpoint_name}"
        self.version = version
        self.max_payload_bytes = max_payload_bytes
        self.max_response_bytes = max_response_bytes
        self._client = client

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], client: Any = None) -> SageMakerModel:
        """Configured from ``SAGEMAKER_ENDPOINT_NAME`` (required), ``SAGEMAKER_MODALITIES``
        (comma-separated, default ``CT``), ``SAGEMAKER_MODEL_VERSION`` (default ``1``) and
        ``SAGEMAKER_MAX_PAYLOAD_BYTES`` (default 6,000,000)."""
        endpoint = environ.get("SAGEMAKER_ENDPOINT_NAME", "").strip()
        if not endpoint:
            raise ValueError("the sagemaker model needs SAGEMAKER_ENDPOINT_NAME")
        modalities = [m for m in environ.get("SAGEMAKER_MODALITIES", "CT").split(",") if m.strip()]
        if not modalities:
            raise ValueError("SAGEMAKER_MODALITIES lists no modality")
        limit = environ.get("SAGEMAKER_MAX_PAYLOAD_BYTES", "").strip()
        try:
            max_payload = int(limit) if limit else DEFAULT_MAX_PAYLOAD_BYTES
        except ValueError:
            raise ValueError("SAGEMAKER_MAX_PAYLOAD_BYTES must be a whole number of bytes") from None
        return cls(
            endpoint,
            modalities,
            client,
            version=environ.get("SAGEMAKER_MODEL_VERSION", "").strip() or "1",
            max_payload_bytes=max_payload,
        )

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3  # noqa: PLC0415 - only when the endpoint is actually called

            self._client = boto3.client("sagemaker-runtime")
        return self._client

    def accepts(self, series: SeriesDescriptor) -> bool:
        return series.modality.upper() in self.modalities

    def run(self, datasets: Sequence[Dataset]) -> ModelResult | None:
        if not datasets:
            return None
        if any(is_multiframe(ds) for ds in datasets):
            log.info("%s declines: multi-frame images are not supported", self.name)
            return None
        volume = regular_volume(self.name, datasets)
        if volume is None:
            return None
        spacing, order = volume
        rows, columns = int(datasets[0].Rows), int(datasets[0].Columns)
        shape = (len(order), rows, columns)
        size = math.prod(shape) * 2 + 128  # int16 values plus the .npy header
        if size > self.max_payload_bytes:
            log.warning(
                "%s declines: the volume %s would be about %d bytes, over the %d-byte limit "
                "of a real-time endpoint",
                self.name,
                "x".join(map(str, shape)),
                size,
                self.max_payload_bytes,
            )
            return None
        body = encode_volume(datasets, order)
        if len(body) > self.max_payload_bytes:  # the header estimate was off
            log.warning("%s declines: the request is %d bytes, over the limit", self.name, len(body))
            return None
        modality = str(datasets[0].get("Modality", "")).upper()
        response = self.client.invoke_endpoint(
            EndpointName=self.endpoint_name,
            ContentType=REQUEST_CONTENT_TYPE,
            Accept=RESPONSE_CONTENT_TYPE,
            CustomAttributes=f"spacing_mm={spacing.row:g},{spacing.column:g},{spacing.slice:g};modality={modality}",
            Body=body,
        )
        content_type = str(response.get("ContentType") or "").split(";")[0].strip().lower()
        if content_type != RESPONSE_CONTENT_TYPE:
            raise ModelOutputError(f"the endpoint answered {content_type or 'no content type'}, not JSON")
        payload = _read_body(response.get("Body"), self.max_response_bytes)
        result = parse_response(payload, shape)
        if result is None:
            return None
        if result.mask is not None:
            mask = np.empty_like(result.mask)
            mask[order] = result.mask  # slice order back to the order of the input datasets
            result = ModelResult(
                mask=mask,
                segment_label=result.segment_label,
                segmented_category=result.segmented_category,
                segmented_type=result.segmented_type,
                measurements=result.measurements,
            )
        return validate_result(result, datasets)


def encode_volume(datasets: Sequence[Dataset], order: Sequence[int]) -> bytes:
    """The request body: the rescaled volume as an int16 ``.npy`` in ``order``."""
    first = datasets[order[0]]
    volume = np.empty((len(order), int(first.Rows), int(first.Columns)), dtype=np.int16)
    for position, index in enumerate(order):
        values = np.rint(modality_values(datasets[index]))
        volume[position] = np.clip(values, _INT16.min, _INT16.max).astype(np.int16)
    buffer = io.BytesIO()
    np.save(buffer, volume, allow_pickle=False)
    return buffer.getvalue()


def _read_body(body: Any, limit: int) -> bytes:
    if body is None:
        raise ModelOutputError("the endpoint's response has no body")
    data = body.read(limit + 1) if hasattr(body, "read") else body
    if not isinstance(data, bytes | bytearray):
        raise ModelOutputError("the endpoint's response body is not bytes")
    if len(data) > limit:
        raise ModelOutputError(f"the endpoint's response is over {limit} bytes")
    return bytes(data)


def parse_response(payload: bytes, shape: tuple[int, int, int]) -> ModelResult | None:
    """Parse a response body (see the module docstring) for a request volume of ``shape``.

    Returns ``None`` when the endpoint declined (a JSON ``null``); the mask, if any, is in the
    request's slice order. Raises :class:`ModelOutputError` on anything malformed.
    """
    try:
        document = json.loads(payload.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise ModelOutputError(f"the endpoint's response is not valid JSON: {exc}") from None
    if document is None:
        return None
    obj = _object(document, "the response", _RESULT_KEYS, required={"label", "category", "type"})
    label = obj["label"]
    if not isinstance(label, str):
        raise ModelOutputError("label must be a string")
    measurements = obj.get("measurements")
    if measurements is None:
        measurements = []
    if not isinstance(measurements, list):
        raise ModelOutputError("measurements must be a list")
    raw_mask = obj.get("mask")
    return ModelResult(
        mask=None if raw_mask is None else _mask(raw_mask, shape),
        segment_label=label,
        segmented_category=_code(obj["category"], "category"),
        segmented_type=_code(obj["type"], "type"),
        measurements=tuple(_measurement(item, index) for index, item in enumerate(measurements)),
    )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _object(value: object, what: str, keys: set[str], *, required: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ModelOutputError(f"{what} must be a JSON object")
    unknown = set(value) - keys
    if unknown:
        raise ModelOutputError(f"{what} has unknown keys: {', '.join(sorted(unknown))}")
    missing = required - set(value)
    if missing:
        raise ModelOutputError(f"{what} lacks {', '.join(sorted(missing))}")
    return value


def _code(value: object, what: str) -> Code:
    obj = _object(value, what, _CODE_KEYS, required=_CODE_KEYS)
    if not all(isinstance(obj[key], str) for key in _CODE_KEYS):
        raise ModelOutputError(f"{what}: value, scheme and meaning must be strings")
    return Code(value=obj["value"], scheme=obj["scheme"], meaning=obj["meaning"])


def _measurement(value: object, index: int) -> Measurement:
    what = f"measurements[{index}]"
    obj = _object(value, what, _MEASUREMENT_KEYS, required={"name", "value", "unit"})
    number = obj["value"]
    if isinstance(number, bool) or not isinstance(number, int | float):
        raise ModelOutputError(f"{what}.value must be a number")
    if not math.isfinite(number):
        raise ModelOutputError(f"{what}.value is not finite")
    derivation = obj.get("derivation")
    return Measurement(
        name=_code(obj["name"], f"{what}.name"),
        value=float(number),
        unit=_code(obj["unit"], f"{what}.unit"),
        derivation=None if derivation is None else _code(derivation, f"{what}.derivation"),
    )


def _mask(value: object, shape: tuple[int, int, int]) -> npt.NDArray[np.bool_]:
    obj = _object(value, "mask", _MASK_KEYS, required=_MASK_KEYS)
    declared = obj["shape"]
    if (
        not isinstance(declared, list)
        or len(declared) != 3
        or any(isinstance(n, bool) or not isinstance(n, int) for n in declared)
    ):
        raise ModelOutputError("mask.shape must be a list of three integers")
    if tuple(declared) != shape:
        raise ModelOutputError(f"mask.shape is {declared}; the request volume is {list(shape)}")
    encoded = obj["packbits"]
    if not isinstance(encoded, str):
        raise ModelOutputError("mask.packbits must be a base64 string")
    try:
        packed = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ModelOutputError("mask.packbits is not valid base64") from None
    count = math.prod(shape)
    if len(packed) != (count + 7) // 8:
        raise ModelOutputError(
            f"mask.packbits holds {len(packed)} bytes; {count} voxels need {(count + 7) // 8}"
        )
    bits = np.unpackbits(np.frombuffer(packed, dtype=np.uint8))
    if bits[count:].any():
        raise ModelOutputError("mask.packbits has padding bits set after the last voxel")
    return bits[:count].astype(np.bool_).reshape(shape)
