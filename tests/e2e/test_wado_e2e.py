"""WADO-RS end to end: instances stored through STOW-RS, read back as a viewer does.

dicomweb-client plays the viewer (its own default Accept headers, recorded per call) and
raw requests play OHIF and a browser (OHIF's frame Accept, gzip, CORS). The session's
runtime is shared with the other end-to-end modules, so everything asserted here is
about instances this module stored: fresh UIDs, plus a few pydicom files whose UIDs
nothing else reuses.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from infra.datasets import dicom_files
from infra.datasets.generate import make_dataset, new_uid, to_part10
from tests.e2e.conftest import Runtime
from tests.e2e.helpers import TIMEOUT_S, instance_url, stow

pytestmark = pytest.mark.e2e

VIEWER_ORIGIN = "http://localhost:3000"
OHIF_FRAMES = "multipart/related; type=application/octet-stream; transfer-syntax=*"
DICOM_JSON = "application/dicom+json"
# What dicomweb-client 0.61 sends as Accept when no media types are given (asserted below).
CLIENT_DEFAULT_INSTANCE = 'multipart/related; type="application/dicom"; transfer-syntax=*'
CLIENT_DEFAULT_SERIES = 'multipart/related; type="application/dicom"'
CLIENT_DEFAULT_FRAMES = 'multipart/related; type="*/*"'  # frames and bulk data
CLIENT_DEFAULT_METADATA = "application/dicom+json, application/json"
SOP_INSTANCE_UID = "00080018"
PIXEL_DATA = "7FE00010"
PRIVATE_BLOB = "00091010"  # a 2 KiB OB value: bulk data in the metadata


# ---------------------------------------------------------------------- what is stored
@dataclass
class Stored:
    study: str
    series: str  # three native instances (InstanceNumber 1..3), the third with a private blob
    datasets: list[Dataset]  # of that series, in InstanceNumber order
    multiframe: Dataset  # native, 3 frames, in a second series of the study
    rle: Dataset  # RLE Lossless, 3 frames, in the second series
    files: dict[str, bytes] = field(default_factory=dict)  # pydicom test files by name

    @property
    def blob(self) -> bytes:
        return bytes(self.datasets[2][0x00091010].value)


def _native_multiframe(study: str, series: str) -> Dataset:
    ds = make_dataset(study=study, series=series, SeriesNumber=2, InstanceNumber=1, NumberOfFrames=3)
    ds.PixelData = b"".join(bytes([k + 1]) * 32 for k in range(3))  # 4x4, 16 bit: 32 bytes a frame
    return ds


def _rle_multiframe(study: str, series: str) -> Dataset:
    ds = make_dataset(
        study=study, series=series, rows=8, columns=8, SeriesNumber=2, InstanceNumber=2, NumberOfFrames=3
    )
    pixels = (np.arange(3 * 64, dtype=np.uint16).reshape(3, 8, 8) * 7).astype(np.uint16)
    ds.PixelData = pixels.tobytes()
    ds.compress(RLELossless, pixels, generate_instance_uid=False)
    return ds


@pytest.fixture(scope="module")
def stored(runtime: Runtime) -> Stored:
    # Given a study of generated instances and a few pydicom files, stored by the uploader
    study, series, other = new_uid(), new_uid(), new_uid()
    datasets = [
        make_dataset(study=study, series=series, InstanceNumber=n, PatientID=f"WADO-{study[-8:]}")
        for n in (1, 2, 3)
    ]
    datasets[2].add_new(0x00090010, "LO", "WADO E2E")
    datasets[2].add_new(0x00091010, "OB", bytes(range(256)) * 8)
    result = Stored(study, series, datasets, _native_multiframe(study, other), _rle_multiframe(study, other))
    payloads = [to_part10(d) for d in [*datasets, result.multiframe, result.rle]]
    for name in ("CT_small.dcm", "MR2_J2KR.dcm", "JPEG-LL.dcm"):
        result.files[name] = dicom_files.test_file(name).read_bytes()
    response = stow(runtime.base_url, payloads, token=runtime.tokens["uploader"], study=study)
    assert response.status_code == HTTPStatus.OK, response.text
    response = stow(runtime.base_url, list(result.files.values()), token=runtime.tokens["uploader"])
    assert response.status_code == HTTPStatus.OK, response.text
    # And recounted (the counts are part of the versions that metadata ETags carry)
    counts = (len(payloads), 2)
    assert runtime.wait_for_counts(study, counts) == counts
    return result


class RecordingClient(DICOMwebClient):
    """dicomweb-client with the Accept header of every request it made recorded."""

    accepts: list[str]


@pytest.fixture(scope="module")
def viewer(runtime: Runtime) -> Iterator[RecordingClient]:
    client = RecordingClient(
        url=runtime.base_url,
        headers={"Authorization": f"Bearer {runtime.tokens['viewer']}"},
        timeout=TIMEOUT_S,
    )
    client.accepts = []

    def record(response: requests.Response, *args: Any, **kwargs: Any) -> None:
        client.accepts.append(str(response.request.headers.get("Accept")))

    client._session.hooks["response"].append(record)
    yield client


def get(runtime: Runtime, url: str, *, role: str | None = "viewer", **headers: str) -> requests.Response:
    sent = {k.replace("_", "-"): v for k, v in headers.items()}
    if role is not None:
        sent.update(runtime.auth(role))
    return requests.get(
        url if url.startswith("http") else f"{runtime.base_url}{url}", headers=sent, timeout=TIMEOUT_S
    )


def parts(response: requests.Response) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a multipart/related response (RFC 2046), parsed independently of the server."""
    content_type = response.headers["Content-Type"]
    assert content_type.startswith("multipart/related"), content_type
    found = re.search(r'boundary="?([^";]+)"?', content_type)
    assert found
    delimiter = b"--" + found.group(1).encode()
    body = response.content
    assert body.startswith(delimiter + b"\r\n") and body.endswith(delimiter + b"--\r\n")
    result = []
    for chunk in body[len(delimiter) + 2 : -len(delimiter) - 6].split(b"\r\n" + delimiter + b"\r\n"):
        head, _, content = chunk.partition(b"\r\n\r\n")
        headers = {}
        for line in head.decode("ascii").split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        result.append((headers, content))
    return result


def _same(returned: Dataset, original: Dataset) -> None:
    """The same data set, element by element (File Meta Information aside)."""
    assert [e.tag for e in returned] == [e.tag for e in original]
    for element in original:
        assert returned[element.tag].value == element.value, element


# ---------------------------------------------------------------------- dicomweb-client
def test_retrieve_instance(viewer: RecordingClient, stored: Stored) -> None:
    # Given a stored instance with a private blob
    original = stored.datasets[2]
    # When the viewer retrieves it with dicomweb-client's defaults
    ds = viewer.retrieve_instance(stored.study, stored.series, original.SOPInstanceUID)
    # Then it is the stored data set, as stored (the client asks transfer-syntax=*)
    assert viewer.accepts[-1] == CLIENT_DEFAULT_INSTANCE
    _same(ds, original)
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


def test_retrieve_compressed_instance_as_stored(viewer: RecordingClient, stored: Stored) -> None:
    # Given a stored JPEG 2000 file
    original = pydicom.dcmread(io.BytesIO(stored.files["MR2_J2KR.dcm"]))
    # When it is retrieved with dicomweb-client's defaults
    ds = viewer.retrieve_instance(
        original.StudyInstanceUID, original.SeriesInstanceUID, original.SOPInstanceUID
    )
    # Then the compressed data comes back untouched
    assert ds.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert ds.PixelData == original.PixelData


def test_retrieve_series(viewer: RecordingClient, stored: Stored) -> None:
    # When the series is retrieved with dicomweb-client's defaults
    datasets = viewer.retrieve_series(stored.study, stored.series)
    # Then every instance comes back in InstanceNumber order, Explicit VR Little Endian
    assert viewer.accepts[-1] == CLIENT_DEFAULT_SERIES
    assert [d.SOPInstanceUID for d in datasets] == [d.SOPInstanceUID for d in stored.datasets]
    for returned, original in zip(datasets, stored.datasets, strict=True):
        _same(returned, original)


def test_retrieve_compressed_series_decompressed_or_as_stored(
    viewer: RecordingClient, stored: Stored
) -> None:
    # Given the second series: a native multi-frame instance and an RLE one
    series = stored.rle.SeriesInstanceUID
    # When it is retrieved with the client's default (Explicit VR Little Endian, no transfer-syntax)
    native, decoded = viewer.retrieve_series(stored.study, series)
    # Then the imaging layer decompressed the RLE instance: same instance, same pixels, native
    _same(native, stored.multiframe)
    assert decoded.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert decoded.SOPInstanceUID == stored.rle.SOPInstanceUID
    assert np.array_equal(decoded.pixel_array, stored.rle.pixel_array)
    # And with transfer-syntax=* it is as stored
    _, as_stored = viewer.retrieve_series(stored.study, series, media_types=(("application/dicom", "*"),))
    assert viewer.accepts[-1] == CLIENT_DEFAULT_INSTANCE
    assert as_stored.file_meta.TransferSyntaxUID == RLELossless
    assert as_stored.PixelData == stored.rle.PixelData


def test_retrieve_study(viewer: RecordingClient, stored: Stored) -> None:
    # When the study is retrieved
    datasets = viewer.retrieve_study(stored.study)
    # Then it holds both series, series by SeriesNumber, instances by InstanceNumber
    expected = [*stored.datasets, stored.multiframe, stored.rle]
    assert viewer.accepts[-1] == CLIENT_DEFAULT_SERIES
    assert [d.SOPInstanceUID for d in datasets] == [d.SOPInstanceUID for d in expected]
    # And the RLE instance was decompressed for the default Accept
    assert datasets[-1].file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.array_equal(datasets[-1].pixel_array, stored.rle.pixel_array)


def test_retrieve_metadata_at_every_level(viewer: RecordingClient, stored: Stored) -> None:
    first = stored.datasets[0]
    # When instance, series and study metadata are retrieved
    instance = viewer.retrieve_instance_metadata(stored.study, stored.series, first.SOPInstanceUID)
    series = viewer.retrieve_series_metadata(stored.study, stored.series)
    study = viewer.retrieve_study_metadata(stored.study)
    # Then each is DICOM JSON of its instances without File Meta Information
    assert viewer.accepts[-1] == CLIENT_DEFAULT_METADATA
    assert Dataset.from_json(instance).PatientID == first.PatientID
    assert not any(tag.startswith("0002") for tag in instance)
    assert [d[SOP_INSTANCE_UID]["Value"][0] for d in series] == [d.SOPInstanceUID for d in stored.datasets]
    expected = {d.SOPInstanceUID for d in [*stored.datasets, stored.multiframe, stored.rle]}
    assert {d[SOP_INSTANCE_UID]["Value"][0] for d in study} == expected
    # And the 2 KiB private value is bulk data, the 32-byte pixel data inline
    blob = next(d for d in series if d[SOP_INSTANCE_UID]["Value"][0] == stored.datasets[2].SOPInstanceUID)
    assert blob[PRIVATE_BLOB]["BulkDataURI"].endswith(f"/bulkdata/{PRIVATE_BLOB}")
    assert "InlineBinary" in instance[PIXEL_DATA]


def test_retrieve_bulkdata_from_a_bulk_data_uri(viewer: RecordingClient, stored: Stored) -> None:
    # Given the BulkDataURI of the private blob, from the metadata
    metadata = viewer.retrieve_instance_metadata(
        stored.study, stored.series, stored.datasets[2].SOPInstanceUID
    )
    uri = metadata[PRIVATE_BLOB]["BulkDataURI"]
    assert uri.startswith(viewer.base_url)
    # When the viewer retrieves it (dicomweb-client's default Accept)
    (value,) = viewer.retrieve_bulkdata(uri)
    # Then it is exactly the element's value
    assert viewer.accepts[-1] == CLIENT_DEFAULT_FRAMES
    assert value == stored.blob
    # And the pixel data of a compressed file is sent as stored by default
    original = pydicom.dcmread(io.BytesIO(stored.files["JPEG-LL.dcm"]))
    document = viewer.retrieve_instance_metadata(
        original.StudyInstanceUID, original.SeriesInstanceUID, original.SOPInstanceUID
    )
    (pixels,) = viewer.retrieve_bulkdata(document[PIXEL_DATA]["BulkDataURI"])
    assert pixels == original.PixelData


def test_retrieve_instance_frames(viewer: RecordingClient, stored: Stored) -> None:
    # Given a stored native 3-frame instance
    ds = stored.multiframe
    frames = [ds.PixelData[k * 32 : (k + 1) * 32] for k in range(3)]
    # When frames 3,1 are retrieved with dicomweb-client's defaults
    got = viewer.retrieve_instance_frames(stored.study, ds.SeriesInstanceUID, ds.SOPInstanceUID, [3, 1])
    # Then they are those frames in that order
    assert viewer.accepts[-1] == CLIENT_DEFAULT_FRAMES
    assert got == [frames[2], frames[0]]
    # And octet-stream as stored gives the same bytes
    same = viewer.retrieve_instance_frames(
        stored.study,
        ds.SeriesInstanceUID,
        ds.SOPInstanceUID,
        [2],
        media_types=(("application/octet-stream", "*"),),
    )
    assert viewer.accepts[-1] == OHIF_FRAMES.replace(
        "type=application/octet-stream", 'type="application/octet-stream"'
    )
    assert same == [frames[1]]


def test_retrieve_compressed_frames(viewer: RecordingClient, stored: Stored) -> None:
    # Given a stored RLE 3-frame instance
    ds = stored.rle
    encoded = list(generate_frames(ds.PixelData, number_of_frames=3))
    # When frames 2,3 are retrieved as stored
    as_stored = viewer.retrieve_instance_frames(
        stored.study,
        ds.SeriesInstanceUID,
        ds.SOPInstanceUID,
        [2, 3],
        media_types=(("application/octet-stream", "*"),),
    )
    # Then they are the RLE frames
    assert as_stored == encoded[1:]
    # And as image/dicom-rle too
    rle = viewer.retrieve_instance_frames(
        stored.study,
        ds.SeriesInstanceUID,
        ds.SOPInstanceUID,
        [1],
        media_types=(("image/dicom-rle", RLELossless),),
    )
    assert rle == encoded[:1]
    # And with the client's default they are decoded to native pixels
    decoded = viewer.retrieve_instance_frames(stored.study, ds.SeriesInstanceUID, ds.SOPInstanceUID, [3])
    assert decoded == [ds.pixel_array[2].tobytes()]


# ---------------------------------------------------------------------- raw requests
def test_ohif_frame_request(runtime: Runtime, stored: Stored) -> None:
    # Given OHIF's frame request for a stored RLE instance
    ds = stored.rle
    url = instance_url(runtime.base_url, stored.study, ds.SeriesInstanceUID, ds.SOPInstanceUID) + "/frames/1"
    # When it is sent with OHIF's Accept header
    response = get(runtime, url, Accept=OHIF_FRAMES)
    # Then the frame comes back as stored, its part labelled with the actual transfer syntax
    assert response.status_code == HTTPStatus.OK, response.text
    ((headers, body),) = parts(response)
    assert headers["content-type"] == f"application/octet-stream; transfer-syntax={RLELossless}"
    assert headers["content-location"] == url
    assert body == next(generate_frames(ds.PixelData, number_of_frames=3))
    assert "immutable" in response.headers["Cache-Control"]
    # And revalidation with the ETag is 304
    again = get(runtime, url, Accept=OHIF_FRAMES, If_None_Match=response.headers["ETag"])
    assert again.status_code == HTTPStatus.NOT_MODIFIED
    assert again.content == b""


def test_metadata_is_gzipped_for_clients_that_accept_it(runtime: Runtime, stored: Stored) -> None:
    # Given the study's metadata (larger than 1 KiB)
    url = f"/studies/{stored.study}/metadata"
    # When it is asked for with and without Accept-Encoding: gzip
    zipped = get(runtime, url, Accept=DICOM_JSON, Accept_Encoding="gzip")
    plain = get(runtime, url, Accept=DICOM_JSON, Accept_Encoding="identity")
    # Then the gzip answer is compressed on the wire and the same document once decoded
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert "Content-Encoding" not in plain.headers
    assert int(zipped.headers["Content-Length"]) < int(plain.headers["Content-Length"])
    assert zipped.json() == plain.json()
    # And a revalidation with its ETag is 304
    assert get(runtime, url, If_None_Match=zipped.headers["ETag"]).status_code == HTTPStatus.NOT_MODIFIED


def test_cors_on_a_wado_response(runtime: Runtime, stored: Stored) -> None:
    # Given a browser viewer on a local origin
    url = f"/studies/{stored.study}/series/{stored.series}/metadata"
    # When it reads metadata cross-origin
    response = get(runtime, url, Origin=VIEWER_ORIGIN)
    # Then the response allows that origin and exposes the ETag for revalidation
    assert response.status_code == HTTPStatus.OK
    assert response.headers["Access-Control-Allow-Origin"] == VIEWER_ORIGIN
    exposed = {h.strip().lower() for h in response.headers["Access-Control-Expose-Headers"].split(",")}
    assert "etag" in exposed
    # And the preflight for a GET with Authorization and Accept is allowed
    preflight = requests.options(
        f"{runtime.base_url}{url}",
        headers={
            "Origin": VIEWER_ORIGIN,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization, accept",
        },
        timeout=TIMEOUT_S,
    )
    assert preflight.status_code == HTTPStatus.NO_CONTENT
    assert preflight.headers["Access-Control-Allow-Origin"] == VIEWER_ORIGIN


@pytest.mark.parametrize(
    "suffix",
    ["", "/metadata", "/frames/1", f"/bulkdata/{PRIVATE_BLOB}"],
    ids=["instance", "metadata", "frames", "bulk"],
)
def test_retrieval_needs_the_read_scope(runtime: Runtime, stored: Stored, suffix: str) -> None:
    url = (
        instance_url(runtime.base_url, stored.study, stored.series, stored.datasets[2].SOPInstanceUID)
        + suffix
    )
    # Given no token, When a WADO resource is requested, Then 401 from the authorizer
    anonymous = get(runtime, url, role=None, Origin=VIEWER_ORIGIN)
    assert anonymous.status_code == HTTPStatus.UNAUTHORIZED
    assert anonymous.headers.get("Access-Control-Allow-Origin") == VIEWER_ORIGIN
    # Given the uploader's token (dicomweb/write only), Then 403
    assert get(runtime, url, role="uploader").status_code == HTTPStatus.FORBIDDEN
    # And the viewer's token is let through
    assert get(runtime, url, role="viewer").status_code == HTTPStatus.OK


def test_errors_are_json_with_a_message(runtime: Runtime, stored: Stored) -> None:
    ds = stored.multiframe
    base = instance_url(runtime.base_url, stored.study, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    cases = [
        (f"{base}/frames/4", {}, HTTPStatus.BAD_REQUEST),  # 3 frames
        (f"/studies/{new_uid()}/metadata", {}, HTTPStatus.NOT_FOUND),
        (base, {"Accept": "application/dicom, image/png"}, HTTPStatus.BAD_REQUEST),
        (base, {"Accept": "text/html"}, HTTPStatus.NOT_ACCEPTABLE),
    ]
    for url, headers, status in cases:
        # Given a request the server cannot answer, When sent, Then the status and a JSON message
        response = get(runtime, url, **headers)
        assert response.status_code == status, (url, response.text)
        assert response.json()["message"], url
