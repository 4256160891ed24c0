"""WADO-RS against moto: instances, metadata, frames and bulk data of stored objects.

One moto account serves the whole module: every pydicom test file the ingest accepts is
stored once through STOW (files sharing a SOP Instance UID once), then read back through
the WADO handler (payload v2 events, as API Gateway sends them) or directly through a
:class:`RetrieveService` whose :class:`ObjectReader` counts what S3 served. Checks that
create their own data use fresh UIDs, so they never disturb the corpus.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import math
import os
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import unquote, urlencode, urlsplit

import pydicom
import pytest
from botocore.client import BaseClient
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.multival import MultiValue
from pydicom.pixels import pixel_array
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from dicomweb_core import config
from dicomweb_core.config import DuplicatePolicy, Limits, Settings
from dicomweb_core.dicom.failures import InstanceRejected
from dicomweb_core.dicom.frames import MAX_READ_GAP
from dicomweb_core.dicom.instance import ReceivedInstance, read_instance
from dicomweb_core.errors import PayloadTooLarge
from dicomweb_core.hooks.series_metadata import SeriesMetadataBuilder
from dicomweb_core.index.models import InstanceItem, SeriesItem
from dicomweb_core.index.table import use_by_default
from dicomweb_core.index.writer import IndexWriter
from dicomweb_core.storage import ObjectReader, S3InstanceStore
from dicomweb_core.stow.service import StowService
from dicomweb_core.wado.orders import QueuedBundleOrders
from dicomweb_core.wado.prebuilt import RESPONSE_LIMIT
from dicomweb_core.wado.redirects import WAIT_PARAMETER
from dicomweb_core.wado.service import Request, RetrieveService
from dicomweb_core.web.uri import MAX_FRAMES_PER_REQUEST, DicomWebURI
from infra.datasets.dicom_files import PYDICOM_DATA_FILES, PYDICOM_TEST_FILES, part10_files
from infra.datasets.generate import make_dataset, new_uid, to_part10
from infra.local.moto_atomic import serialise_dynamodb
from infra.local.provision import provision
from infra.samtemplate import load_template, object_routes
from tests.bundle_orders import fulfil_bundle_orders
from tests.lambda_harness import LambdaContext, load_handler, route_for
from tests.moto_stack import store_ok

DOMAIN = "dicom.example.test"
BASE_URL = f"https://{DOMAIN}"
AS_STORED_INSTANCES = 'multipart/related; type="application/dicom"; transfer-syntax=*'
AS_STORED_FRAMES = "multipart/related; type=application/octet-stream; transfer-syntax=*"
BULK_DATA_THRESHOLD = 1024
FRAME_READ_OVERHEAD = 1.1  # S3 bytes read per frame byte returned, at most
RESPONSE_BUDGET = 4_000_000  # frames asked for per request stay under the response limit

pytestmark = [
    pytest.mark.filterwarnings("ignore:Invalid value for VR:UserWarning"),
    pytest.mark.filterwarnings("ignore:No application metrics to publish:UserWarning"),
]


# ---------------------------------------------------------------------- the corpus
@dataclass(frozen=True)
class CorpusFile:
    path: Path
    name: str
    instance: ReceivedInstance

    @property
    def url(self) -> str:
        i = self.instance
        return instance_path(i.study_instance_uid, i.series_instance_uid, i.sop_instance_uid)


def _name(path: Path) -> str:
    for prefix, root in (("pydicom", PYDICOM_TEST_FILES), ("pydicom-data", PYDICOM_DATA_FILES)):
        if path.is_relative_to(root):
            return f"{prefix}/{path.relative_to(root)}"
    return str(path)


@cache
def corpus() -> tuple[CorpusFile, ...]:
    """Every file the ingest accepts, the first of those sharing a SOP Instance UID."""
    found: dict[str, CorpusFile] = {}
    for path in part10_files():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                instance = read_instance(path.read_bytes(), limits=Limits())
        except InstanceRejected:
            continue
        found.setdefault(instance.sop_instance_uid, CorpusFile(path, _name(path), instance))
    return tuple(found.values())


def _dataset(data: bytes) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data))


@cache
def with_pixels() -> tuple[CorpusFile, ...]:
    return tuple(f for f in corpus() if "PixelData" in _dataset(f.instance.data))


def instance_path(study: str, series: str, sop: str) -> str:
    return f"/studies/{study}/series/{series}/instances/{sop}"


# ---------------------------------------------------------------------- responses
@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "")

    def json(self) -> Any:
        body = gzip.decompress(self.body) if self.headers.get("Content-Encoding") == "gzip" else self.body
        return json.loads(body)

    def parts(self) -> list[tuple[dict[str, str], bytes]]:
        return split_multipart(self.body, self.content_type)


def split_multipart(body: bytes, content_type: str) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a multipart/related body (RFC 2046 §5.1.1), written independently of the server."""
    assert content_type.startswith("multipart/related"), content_type
    found = re.search(r'boundary="?([^";]+)"?', content_type)
    assert found, content_type
    delimiter = b"--" + found.group(1).encode()
    assert body.startswith(delimiter + b"\r\n"), body[:80]
    assert body.endswith(delimiter + b"--\r\n"), body[-80:]
    chunks = body[len(delimiter) + 2 : -len(delimiter) - 6].split(b"\r\n" + delimiter + b"\r\n")
    parts = []
    for chunk in chunks:
        head, _, content = chunk.partition(b"\r\n\r\n")
        headers = {}
        for line in head.decode("ascii").split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            assert int(headers["content-length"]) == len(content)
        parts.append((headers, content))
    return parts


def transfer_syntax_of(part_content_type: str) -> str | None:
    found = re.search(r"transfer-syntax=([0-9.]+|\*)", part_content_type)
    return found.group(1) if found else None


# ---------------------------------------------------------------------- the environment
def wado_event(
    path: str, headers: dict[str, str] | None = None, query: dict[str, str] | None = None
) -> dict[str, Any]:
    """A payload v2 event as the HTTP API sends it for a GET on one of the WADO routes."""
    route = route_for("GET", path).path
    lowered = {k.lower(): v for k, v in (headers or {}).items()}
    lowered.setdefault("host", DOMAIN)
    parameters = {"queryStringParameters": dict(query)} if query else {}
    return {
        "version": "2.0",
        "routeKey": f"GET {route}",
        "rawPath": path,
        "rawQueryString": urlencode(query or {}),
        **parameters,
        "headers": lowered,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "example",
            "domainName": DOMAIN,
            "domainPrefix": "dicom",
            "http": {
                "method": "GET",
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "192.0.2.10",
                "userAgent": "test",
            },
            "requestId": "wado-test",
            "routeKey": f"GET {route}",
            "stage": "$default",
            "time": "23/Nov/2026:00:00:00 +0000",
            "timeEpoch": 1795392000000,
            "authorizer": {
                "jwt": {"claims": {"scope": "dicomweb/read"}, "scopes": ["dicomweb/read"]},
            },
        },
        "isBase64Encoded": False,
    }


def follow_presigned(s3: Any, bucket: str, location: str) -> tuple[str, bytes]:
    """What CloudFront serves for a same-host presigned path: (Content-Type, body) of the object."""
    url = urlsplit(location)
    assert any(route.pattern.match(url.path) for route in object_routes(load_template())), url.path
    assert "X-Amz-Signature=" in url.query
    version = dict(p.split("=", 1) for p in url.query.split("&")).get("versionId")
    arguments = {"Bucket": bucket, "Key": unquote(url.path[1:])}
    if version:
        arguments["VersionId"] = unquote(version)
    answer = s3.get_object(**arguments)
    return answer["ContentType"], answer["Body"].read()


class CallCounter:
    """Counts AWS API calls by (service, operation) at the botocore client."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self._original: Callable[..., Any] = BaseClient._make_api_call

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        original = self._original
        calls = self.calls

        def counted(client: Any, operation: str, params: Any) -> Any:
            calls.append((client.meta.service_model.service_name, operation))
            return original(client, operation, params)

        monkeypatch.setattr(BaseClient, "_make_api_call", counted)

    def reset(self) -> None:
        self.calls.clear()

    def of(self, service: str) -> list[str]:
        return [operation for name, operation in self.calls if name == service]


@dataclass
class World:
    settings: Settings
    stow: StowService
    handler: ModuleType
    s3: Any

    def get(self, path: str, headers: dict[str, str] | None = None) -> Answer:
        """GET ``path`` (or an absolute URL under BASE_URL) through the WADO handler."""
        if path.startswith(BASE_URL):
            path = path[len(BASE_URL) :]
        response = self.handler.handler(wado_event(path, headers), LambdaContext("WadoFunction"))
        # Metrics are disabled in tests, so nothing flushes them; they would pile up.
        self.handler.metrics.clear_metrics()
        body = response.get("body") or ""
        raw = base64.b64decode(body) if response.get("isBase64Encoded") else body.encode()
        return Answer(int(response["statusCode"]), dict(response.get("headers") or {}), raw)

    def service(self) -> tuple[RetrieveService, ObjectReader]:
        """A RetrieveService with a fresh counting reader, ordering large bodies as the
        handler does (without waiting for them)."""
        reader = ObjectReader(self.settings.bucket_name, client=self.s3)
        orders = QueuedBundleOrders(os.environ["BUNDLE_QUEUE_URL"])
        return RetrieveService(settings=self.settings, reader=reader, orders=orders), reader

    def get_built(self, path: str, headers: dict[str, str] | None = None) -> Answer:
        """GET; when the answer is a body still being built (a redirect to the request
        itself), build what was ordered, as BundleFunction does, and GET again."""
        answer = self.get(path, headers)
        if answer.status == 303 and f"{WAIT_PARAMETER}=1" in answer.headers["Location"]:
            assert self.fulfil() == ["built"]
            answer = self.get(path, headers)
        return answer

    def fulfil(self) -> list[str]:
        """Build the bodies the retrievals so far ordered, as BundleFunction does."""
        return fulfil_bundle_orders(os.environ["BUNDLE_QUEUE_URL"], self.settings.bucket_name)

    def builder(self) -> SeriesMetadataBuilder:
        """The metadata hook's builder, as SeriesMetadataFunction runs it on SeriesStable."""
        return SeriesMetadataBuilder(
            ObjectReader(self.settings.bucket_name), S3InstanceStore(self.settings.bucket_name)
        )

    def store(self, *payloads: bytes) -> None:
        store_ok(self.stow, *payloads)


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    from moto import mock_aws

    serialise_dynamodb()
    with mock_aws(), pytest.MonkeyPatch.context() as patch:
        import boto3

        stack = provision(load_template(), endpoint_url=None, region="us-east-1", overrides={})
        for name, value in stack.function_environment(load_template().functions()["WadoFunction"]).items():
            patch.setenv(name, value)
        patch.setenv("BUNDLE_WAIT_SECONDS", "0")  # the test builds what was ordered, then asks again
        use_by_default(stack.physical_ids["IndexTable"])
        config.settings.cache_clear()
        settings = Settings(
            table_name=stack.physical_ids["IndexTable"],
            bucket_name=stack.physical_ids["InstanceBucket"],
            event_bus_name=stack.physical_ids["EventBus"],
            public_base_url="",
            duplicate_policy=DuplicatePolicy.REJECT,
            limits=Limits(),
        )
        stow = StowService(
            settings=settings,
            store=S3InstanceStore(settings.bucket_name),
            index=IndexWriter(),
        )
        built = World(settings, stow, load_handler("WadoFunction"), boto3.client("s3"))
        for entry in corpus():
            built.store(entry.path.read_bytes())
        yield built
        config.settings.cache_clear()


# ---------------------------------------------------------------------- instances
@pytest.mark.parametrize("entry", corpus(), ids=lambda e: e.name)
def test_every_stored_file_comes_back_byte_for_byte(world: World, entry: CorpusFile) -> None:
    # Given a stored test file
    stored = entry.instance.data
    # When it is retrieved as stored through the handler
    answer = world.get_built(entry.url, {"Accept": AS_STORED_INSTANCES})
    # Then the bytes are the original ones with the preamble zeroed
    if answer.status == 303:  # more than one response can carry: built when first asked for
        assert len(stored) > 4_000_000
        content_type, body = follow_presigned(
            world.s3, world.settings.bucket_name, answer.headers["Location"]
        )
        ((headers, body),) = split_multipart(body, content_type)
        assert body == stored
        return
    assert answer.status == 200, answer.body[:300]
    ((headers, body),) = answer.parts()
    assert body == stored
    assert transfer_syntax_of(headers["content-type"]) == entry.instance.transfer_syntax_uid


def test_single_part_instance_for_one_instance_only(world: World) -> None:
    # Given a stored instance and its series
    entry = next(e for e in corpus() if e.path.name == "CT_small.dcm")
    i = entry.instance
    # When one instance is asked for as bare application/dicom
    single = world.get(entry.url, {"Accept": "application/dicom; transfer-syntax=*"})
    # Then it is the stored object as a single part
    assert single.status == 200
    assert single.content_type.startswith("application/dicom")
    assert single.body == i.data
    assert single.headers["ETag"].strip('"') == hashlib.sha256(i.data).hexdigest()
    # And the series cannot be a single part (it may hold many instances)
    series = world.get(
        f"/studies/{i.study_instance_uid}/series/{i.series_instance_uid}", {"Accept": "application/dicom"}
    )
    assert series.status == 406
    assert "multipart/related" in series.json()["message"]


def test_study_and_series_hold_every_instance_in_order(world: World) -> None:
    # Given a study of two series, the second with three instances stored out of order
    study, first, second = new_uid(), new_uid(), new_uid()
    one = to_part10(make_dataset(study=study, series=first, SeriesNumber=1))
    later = [
        to_part10(make_dataset(study=study, series=second, SeriesNumber=2, InstanceNumber=n))
        for n in (3, 1, 2)
    ]
    world.store(one, *later)
    # When the study and the second series are retrieved
    study_parts = world.get(f"/studies/{study}", {"Accept": AS_STORED_INSTANCES}).parts()
    series_parts = world.get(f"/studies/{study}/series/{second}").parts()
    # Then the study has every instance, series by SeriesNumber, instances by InstanceNumber
    expected = [one, later[1], later[2], later[0]]
    assert [body for _, body in study_parts] == expected
    # And the series (default Accept: Explicit VR Little Endian, as stored) has its three
    assert [body for _, body in series_parts] == expected[1:]
    assert all(transfer_syntax_of(h["content-type"]) == ExplicitVRLittleEndian for h, _ in series_parts)


def test_implicit_vr_file_comes_back_explicit_by_default(world: World) -> None:
    # Given an instance stored in Implicit VR Little Endian
    ds = make_dataset(PatientName="Implicit^Vr", ImageComments="stored implicit")
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    data = to_part10(ds)
    world.store(data)
    path = instance_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    # When it is retrieved with the default Accept
    ((headers, body),) = world.get(path).parts()
    # Then it is Explicit VR Little Endian and holds the same data set
    assert transfer_syntax_of(headers["content-type"]) == ExplicitVRLittleEndian
    returned = pydicom.dcmread(io.BytesIO(body))
    assert returned.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert body[128:132] == b"DICM"
    original = pydicom.dcmread(io.BytesIO(data))
    assert returned.original_encoding == (False, True)  # (is implicit VR, is little endian)
    assert list(returned.keys()) == list(original.keys())
    for element in original:
        assert returned[element.tag].value == element.value, element
        assert returned[element.tag].VR == element.VR
    # And asked for explicitly in Implicit VR it is the stored object
    implicit = f'multipart/related; type="application/dicom"; transfer-syntax={ImplicitVRLittleEndian}'
    ((headers, body),) = world.get(path, {"Accept": implicit}).parts()
    assert body == data


def test_compressed_file_is_decompressed_for_the_default_accept(world: World) -> None:
    # Given a stored lossless JPEG 2000 file
    entry = next(e for e in corpus() if e.path.name == "MR2_J2KR.dcm")
    original = _dataset(entry.instance.data)
    # When it is retrieved with the default Accept (Explicit VR Little Endian), instance and frame
    instance = world.get(entry.url)
    frame = world.get(f"{entry.url}/frames/1")
    # Then the instance is Explicit VR Little Endian with the same pixels, native
    assert instance.status == 200, instance.body[:300]
    ((headers, body),) = instance.parts()
    assert transfer_syntax_of(headers["content-type"]) == ExplicitVRLittleEndian
    returned = pydicom.dcmread(io.BytesIO(body))
    assert returned.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert (returned.pixel_array == original.pixel_array).all()
    assert returned.SOPInstanceUID == original.SOPInstanceUID
    # And the frame is the decoded pixel bytes, labelled Explicit VR Little Endian
    assert frame.status == 200, frame.body[:300]
    ((headers, pixels),) = frame.parts()
    assert transfer_syntax_of(headers["content-type"]) == ExplicitVRLittleEndian
    assert pixels == original.pixel_array.tobytes()


def test_what_cannot_be_produced_is_406_with_what_is_available(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a stored JPEG 2000 file and a stored deflated file
    j2k = next(e for e in corpus() if e.path.name == "MR2_J2KR.dcm")
    deflated = next(e for e in corpus() if e.instance.transfer_syntax_uid == DeflatedExplicitVRLittleEndian)
    implicit = f'multipart/related; type="application/dicom"; transfer-syntax={ImplicitVRLittleEndian}'
    # When what the server cannot make is asked for: JPEG 2000 as Implicit VR, deflated as
    # Explicit VR (the default), a JPEG 2000 frame as JPEG baseline
    answers = [
        world.get(j2k.url, {"Accept": implicit}),
        world.get(deflated.url),
        world.get(f"{j2k.url}/frames/1", {"Accept": 'multipart/related; type="image/jpeg"'}),
    ]
    # And when the function has no codec for the stored syntax (no imaging layer)
    from dicomweb_core.wado import media

    monkeypatch.setattr(media, "can_decode", lambda syntax: False)
    answers += [world.get(j2k.url), world.get(f"{j2k.url}/frames/1")]
    # Then each is 406 and says what can be had instead
    for answer in answers:
        assert answer.status == 406
        message = answer.json()["message"]
        assert "available" in message
        assert "transfer-syntax=*" in message
    # And as stored it always works
    assert world.get(j2k.url, {"Accept": AS_STORED_INSTANCES}).status == 200
    assert world.get(deflated.url, {"Accept": AS_STORED_INSTANCES}).status == 200


# ---------------------------------------------------------------------- metadata
def _fetch_bulk(world: World, uri: str) -> bytes | None:
    """The value at a BulkDataURI; None when it is more than one response can carry (413)."""
    assert uri.startswith(f"{BASE_URL}/studies/"), uri
    answer = world.get_built(uri)
    if answer.status == 413:
        assert "frame" in answer.json()["message"].lower()
        return None
    if answer.status == 303:  # large pixel data, built when first asked for: the same part
        content_type, raw = follow_presigned(world.s3, world.settings.bucket_name, answer.headers["Location"])
        ((headers, body),) = split_multipart(raw, content_type)
    else:
        assert answer.status == 200, (uri, answer.body[:300])
        ((headers, body),) = answer.parts()
    assert headers["content-type"].startswith("application/octet-stream")
    return body


def _bulk_uris(document: Any) -> list[str]:
    if isinstance(document, dict):
        found = [document["BulkDataURI"]] if "BulkDataURI" in document else []
        return found + [u for v in document.values() for u in _bulk_uris(v)]
    if isinstance(document, list):
        return [u for v in document for u in _bulk_uris(v)]
    return []


def _values(value: Any) -> list[Any]:
    if isinstance(value, MultiValue | list | tuple):
        return list(value)
    return [] if value is None or value == "" else [value]


def _same_value(returned: DataElement, original: DataElement, where: str, too_large: set[str]) -> None:
    if original.VR == "SQ":
        assert returned.VR == "SQ", where
        assert len(returned.value) == len(original.value), where
        for number, (a, b) in enumerate(zip(returned.value, original.value, strict=True)):
            _same_dataset(a, b, f"{where}.{number}.", too_large=too_large)
        return
    if any(uri.endswith(f"/bulkdata/{where}") for uri in too_large):
        assert len(original.value) > 4_000_000, where
        return
    if isinstance(original.value, bytes | bytearray):
        # Binary values: exact, however they travelled (inline or as bulk data).
        assert bytes(returned.value or b"") == bytes(original.value), where
        return
    got, want = _values(returned.value), _values(original.value)
    assert len(got) == len(want), (where, got, want)
    for a, b in zip(got, want, strict=True):
        if original.VR in ("DS", "FL", "FD"):
            assert math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-12), (where, a, b)
        elif original.VR == "IS":
            assert int(a) == int(b), (where, a, b)
        else:
            assert str(a).rstrip(" \0") == str(b).rstrip(" \0"), (where, a, b)


def _same_dataset(
    returned: Dataset,
    original: Dataset,
    where: str = "",
    *,
    too_large: set[str] = frozenset(),  # type: ignore[assignment]
) -> None:
    assert sorted(returned.keys()) == sorted(original.keys()), where
    for element in original:
        _same_value(returned[element.tag], element, f"{where}{element.tag:08X}", too_large)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("entry", corpus(), ids=lambda e: e.name)
def test_metadata_is_the_stored_data_set(world: World, entry: CorpusFile) -> None:
    # Given a stored test file
    original = _dataset(entry.instance.data)
    # When its metadata is retrieved
    answer = world.get(f"{entry.url}/metadata")
    # Then it is one DICOM JSON object without the File Meta Information
    assert answer.status == 200, answer.body[:300]
    assert answer.content_type.startswith("application/dicom+json")
    (document,) = answer.json()
    assert not any(tag.startswith("0002") for tag in document)
    # And every BulkDataURI is absolute and returns exactly the element's value
    uris = _bulk_uris(document)
    assert len(uris) == len(set(uris))
    fetched = {uri: _fetch_bulk(world, uri) for uri in uris}
    assert all(value is None or len(value) > BULK_DATA_THRESHOLD for value in fetched.values())
    too_large = {uri for uri, value in fetched.items() if value is None}
    returned = Dataset.from_json(document, bulk_data_uri_handler=lambda uri: fetched[uri] or b"")
    # And attribute by attribute it is the data set as stored (a value larger than one
    # response, 413 above, only by its presence: the instance itself is the way to it)
    _same_dataset(returned, original, too_large=too_large)


def test_metadata_bulk_data_rule_and_nested_uris(world: World) -> None:
    # Given an instance with small and large binary values, one inside a sequence
    ds = make_dataset(rows=32, columns=32)  # 2 KiB of pixel data
    item = Dataset()
    item.add_new(0x00090010, "LO", "TEST PRIVATE")  # private creator of the block below
    item.add_new(0x00091010, "OB", bytes(range(256)) * 8)  # private, 2 KiB, inside a sequence
    item.add_new(0x00091011, "OB", b"small!")
    ds.ReferencedImageSequence = [item]
    ds.add_new(0x00291010, "OB", bytes(1024))  # exactly 1 KiB: stays inline
    ds.add_new(0x00291011, "OB", bytes(1026))  # just over: bulk data
    data = to_part10(ds)
    world.store(data)
    path = instance_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    # When its metadata is read
    (document,) = world.get(f"{path}/metadata").json()
    # Then values over 1 KiB are BulkDataURIs naming their path, smaller ones are inline
    assert document["7FE00010"]["BulkDataURI"] == f"{BASE_URL}{path}/bulkdata/7FE00010"
    nested = document["00081140"]["Value"][0]
    assert nested["00091010"]["BulkDataURI"] == f"{BASE_URL}{path}/bulkdata/00081140.0.00091010"
    assert base64.b64decode(nested["00091011"]["InlineBinary"]) == b"small!"
    assert base64.b64decode(document["00291010"]["InlineBinary"]) == bytes(1024)
    assert document["00291011"]["BulkDataURI"] == f"{BASE_URL}{path}/bulkdata/00291011"
    # And the nested URI returns exactly that value
    assert _fetch_bulk(world, nested["00091010"]["BulkDataURI"]) == bytes(range(256)) * 8
    # And a path into nothing is 404
    assert world.get(f"{path}/bulkdata/00081140.5.00091010").status == 404
    assert world.get(f"{path}/bulkdata/00100010").status == 404  # PatientName is not binary


def test_bulk_data_is_sent_as_stored_unless_asked_otherwise(world: World) -> None:
    # Given a stored JPEG 2000 file and the BulkDataURI of its pixel data
    entry = next(e for e in corpus() if e.path.name == "MR2_J2KR.dcm")
    (document,) = world.get(f"{entry.url}/metadata").json()
    uri = document["7FE00010"]["BulkDataURI"]
    value = _dataset(entry.instance.data).PixelData
    for accept in (None, "*/*", AS_STORED_FRAMES):
        # When it is fetched with no Accept, */* or transfer-syntax=*
        answer = world.get(uri, {"Accept": accept} if accept else None)
        # Then it is the value as stored, labelled with the stored transfer syntax
        assert answer.status == 200, accept
        ((headers, body),) = answer.parts()
        assert body == value
        assert transfer_syntax_of(headers["content-type"]) == "1.2.840.10008.1.2.4.90"
    # When it is asked for uncompressed, Then 406: bulk data values are never decoded
    answer = world.get(uri, {"Accept": "multipart/related; type=application/octet-stream"})
    assert answer.status == 406
    assert "transfer-syntax=*" in answer.json()["message"]


def test_series_and_study_metadata_hold_every_instance(world: World) -> None:
    # Given a study of two series
    study, first, second = new_uid(), new_uid(), new_uid()
    payloads = [
        make_dataset(study=study, series=first, SeriesNumber=1, InstanceNumber=1),
        make_dataset(study=study, series=second, SeriesNumber=2, InstanceNumber=1),
        make_dataset(study=study, series=second, SeriesNumber=2, InstanceNumber=2),
    ]
    world.store(*(to_part10(d) for d in payloads))
    # When series and study metadata are read
    series = world.get(f"/studies/{study}/series/{second}/metadata").json()
    whole = world.get(f"/studies/{study}/metadata").json()
    # Then each lists its instances' metadata
    assert sorted(d["00080018"]["Value"][0] for d in series) == sorted(d.SOPInstanceUID for d in payloads[1:])
    assert sorted(d["00080018"]["Value"][0] for d in whole) == sorted(d.SOPInstanceUID for d in payloads)


def test_metadata_as_xml(world: World) -> None:
    # Given a stored instance
    ds = make_dataset(PatientName="Xml^Reader")
    world.store(to_part10(ds))
    path = instance_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    # When its metadata is asked for as multipart DICOM XML
    answer = world.get(f"{path}/metadata", {"Accept": 'multipart/related; type="application/dicom+xml"'})
    # Then there is one Native DICOM Model part naming the instance
    assert answer.status == 200
    ((headers, body),) = answer.parts()
    assert headers["content-type"].startswith("application/dicom+xml")
    assert ds.SOPInstanceUID.encode() in body
    assert b"NativeDicomModel" in body


def test_metadata_is_gzipped_when_the_client_accepts_it(world: World) -> None:
    # Given a series whose metadata is larger than 1 KiB
    study, series = new_uid(), new_uid()
    world.store(*(to_part10(make_dataset(study=study, series=series, InstanceNumber=n)) for n in range(5)))
    path = f"/studies/{study}/series/{series}/metadata"
    # When it is read with and without Accept-Encoding: gzip
    plain = world.get(path)
    zipped = world.get(path, {"Accept-Encoding": "gzip, deflate, br"})
    # Then the gzip answer says so and decodes to the same document
    assert "Content-Encoding" not in plain.headers
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert "Accept-Encoding" in zipped.headers["Vary"]
    assert gzip.decompress(zipped.body) == plain.body


# ---------------------------------------------------------------------- frames
def _expected_frames(data: bytes) -> list[bytes]:
    """Each frame as pydicom sees it: encapsulated frames, or native slices without padding."""
    ds = _dataset(data)
    count = int(ds.get("NumberOfFrames") or 1)
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        return list(generate_frames(ds.PixelData, number_of_frames=count))
    bits = int(ds.BitsAllocated)
    samples = int(ds.get("SamplesPerPixel") or 1)
    pixels = int(ds.Rows) * int(ds.Columns) * samples
    if bits % 8 == 0:
        size = pixels * bits // 8
        return [ds.PixelData[k * size : (k + 1) * size] for k in range(count)]
    # Bit-packed (BitsAllocated 1): a frame is its bits, whole bytes when it ends mid-byte
    assert count == 1 or (pixels * bits) % 8 == 0
    size = math.ceil(pixels * bits / 8)
    return [ds.PixelData[k * size : (k + 1) * size] for k in range(count)]


def _frame_batches(sizes: list[int]) -> Iterator[list[int]]:
    """Frame numbers in requests whose frames stay under the response limit."""
    batch: list[int] = []
    total = 0
    for number, size in enumerate(sizes, start=1):
        if batch and total + size > RESPONSE_BUDGET:
            yield batch
            batch, total = [], 0
        batch.append(number)
        total += size
    if batch:
        yield batch


def _frames_request(entry: CorpusFile, numbers: list[int]) -> Request:
    i = entry.instance
    uri = DicomWebURI(
        BASE_URL, i.study_instance_uid, i.series_instance_uid, i.sop_instance_uid, tuple(numbers)
    )
    return Request(uri=uri, accept=AS_STORED_FRAMES, query={}, if_none_match=None, accepts_gzip=False)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("entry", with_pixels(), ids=lambda e: e.name)
def test_frames_are_pydicoms_frames_read_by_range(world: World, entry: CorpusFile) -> None:
    # Given a stored file with pixel data and the frames pydicom finds in it
    expected = _expected_frames(entry.instance.data)
    indexed = entry.instance.frames is not None
    # When every frame is retrieved as stored, in requests under the response limit
    for numbers in _frame_batches([len(f) for f in expected]):
        service, reader = world.service()
        if len(numbers) == 1 and len(expected[numbers[0] - 1]) > 4_400_000:
            # A frame larger than one response can carry (if indexed): ordered when first
            # asked for, then a redirect to its built body
            if not indexed:
                with pytest.raises(PayloadTooLarge):
                    service.frames(_frames_request(entry, numbers))
                continue
            response = service.frames(_frames_request(entry, numbers))
            if WAIT_PARAMETER in response.headers["Location"]:  # not built before (as bulk data)
                assert world.fulfil() == ["built"]
                response = service.frames(_frames_request(entry, numbers))
            assert response.status == 303
            raw = follow_presigned(world.s3, world.settings.bucket_name, response.headers["Location"])
            ((headers, body),) = split_multipart(raw[1], raw[0])
            assert body == expected[numbers[0] - 1]
            assert transfer_syntax_of(headers["content-type"]) == entry.instance.transfer_syntax_uid
            continue
        response = service.frames(_frames_request(entry, numbers))
        # Then each part is exactly that frame, labelled with the stored transfer syntax
        parts = split_multipart(response.body, response.content_type)
        assert [body for _, body in parts] == [expected[n - 1] for n in numbers]
        for (headers, _), number in zip(parts, numbers, strict=True):
            assert transfer_syntax_of(headers["content-type"]) == entry.instance.transfer_syntax_uid
            assert headers["content-location"].endswith(f"/frames/{number}")
        # And an indexed frame costs little more S3 bytes than it returns
        returned = sum(len(body) for _, body in parts)
        if indexed:
            assert reader.requests == 1  # adjacent frames come in one ranged GET
            assert reader.bytes_read <= FRAME_READ_OVERHEAD * returned, (reader.bytes_read, returned)


@pytest.fixture(scope="module")
def multiframe(world: World) -> tuple[str, str, str, list[bytes]]:
    """A native 16-bit instance of 3 frames of 4x4, each frame's bytes distinct."""
    frames = [bytes([k + 1]) * 32 for k in range(3)]
    ds = make_dataset(NumberOfFrames=3)
    ds.PixelData = b"".join(frames)
    world.store(to_part10(ds))
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, frames


@pytest.mark.parametrize("numbers", [[3, 1, 2], [2], [1, 1], [3, 2, 1, 3]])
def test_frame_lists_come_back_in_the_order_asked(
    world: World, multiframe: tuple[str, str, str, list[bytes]], numbers: list[int]
) -> None:
    # Given a stored 3-frame instance
    study, series, sop, frames = multiframe
    path = instance_path(study, series, sop)
    # When a frame list is retrieved (default Accept: octet-stream, Explicit VR Little Endian)
    answer = world.get(f"{path}/frames/{','.join(map(str, numbers))}")
    # Then the parts are those frames in that order
    assert answer.status == 200
    assert 'type="application/octet-stream"' in answer.content_type or "type=application/octet-stream" in (
        answer.content_type
    )
    parts = answer.parts()
    assert [body for _, body in parts] == [frames[n - 1] for n in numbers]
    assert [h["content-location"] for h, _ in parts] == [f"{BASE_URL}{path}/frames/{n}" for n in numbers]


def test_encapsulated_frame_list(world: World) -> None:
    # Given a stored 15-frame RLE file
    entry = next(e for e in with_pixels() if e.path.name == "rtdose_rle.dcm")
    expected = _expected_frames(entry.instance.data)
    # When frames 3,1,2 are retrieved as stored
    answer = world.get(f"{entry.url}/frames/3,1,2", {"Accept": AS_STORED_FRAMES})
    # Then they are the encapsulated frames in that order
    assert answer.status == 200
    assert [body for _, body in answer.parts()] == [expected[2], expected[0], expected[1]]
    # And asking for image/dicom-rle (the stored syntax's media type) gives the same bytes
    rle = world.get(f"{entry.url}/frames/15", {"Accept": 'multipart/related; type="image/dicom-rle"'})
    assert rle.status == 200
    ((headers, body),) = rle.parts()
    assert headers["content-type"].startswith("image/dicom-rle")
    assert transfer_syntax_of(headers["content-type"]) == "1.2.840.10008.1.2.5"
    assert body == expected[14]


def _frames_of(study: str, series: str, sop: str, numbers: list[int], accept: str | None = None) -> Request:
    uri = DicomWebURI(BASE_URL, study, series, sop, tuple(numbers))
    return Request(uri=uri, accept=accept, query={}, if_none_match=None, accepts_gzip=False)


@pytest.mark.parametrize(
    "numbers",
    [[2, 1, 2, 2, 3, 1], [1] * MAX_FRAMES_PER_REQUEST],
    ids=["mixed-repeats", "one-frame-at-the-cap"],
)
def test_repeated_frames_are_read_once_and_answered_in_the_order_asked(
    world: World, multiframe: tuple[str, str, str, list[bytes]], numbers: list[int]
) -> None:
    # Given the stored 3-frame instance (whose frames are adjacent in the object)
    study, series, sop, frames = multiframe
    service, reader = world.service()
    # When a list that repeats frames is retrieved
    response = service.frames(_frames_of(study, series, sop, numbers, AS_STORED_FRAMES))
    # Then every number asked for has its part, in the order asked (PS3.18 §10.4.1.1.4)
    parts = split_multipart(response.body, response.content_type)
    assert [body for _, body in parts] == [frames[n - 1] for n in numbers]
    path = instance_path(study, series, sop)
    assert [h["content-location"] for h, _ in parts] == [f"{BASE_URL}{path}/frames/{n}" for n in numbers]
    # And S3 served one ranged GET of the distinct frames, however often they were listed
    assert reader.requests == 1
    assert reader.bytes_read == sum(len(frames[n - 1]) for n in set(numbers))


def test_frame_list_over_the_cap_is_400_with_the_cap(
    world: World, multiframe: tuple[str, str, str, list[bytes]]
) -> None:
    # Given the stored 3-frame instance
    study, series, sop, _ = multiframe
    # When frame 1 is listed 3,000 times (a 6 KB path)
    answer = world.get(f"{instance_path(study, series, sop)}/frames/{','.join(['1'] * 3000)}")
    # Then it is 400 naming the cap
    assert answer.status == 400
    assert f"at most {MAX_FRAMES_PER_REQUEST} frame numbers" in answer.json()["message"]


FRAME_BYTES = 64 * 64 * 2  # one 64x64 16-bit frame


@pytest.fixture(scope="module")
def long_multiframe(world: World) -> tuple[str, str, str, list[bytes]]:
    """A native instance of 200 frames of 64x64 16-bit (8 KiB each), each frame distinct."""
    frames = [bytes([k % 251]) * FRAME_BYTES for k in range(200)]
    ds = make_dataset(rows=64, columns=64, NumberOfFrames=200)
    ds.PixelData = b"".join(frames)
    world.store(to_part10(ds))
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, frames


def test_near_frames_share_a_ranged_get_and_far_ones_do_not(
    world: World, long_multiframe: tuple[str, str, str, list[bytes]]
) -> None:
    # Given a 200-frame instance, and a list with: frames 1-3; a frame whose gap after frame
    # 3 is exactly the largest gap worth reading through; a frame one frame further than
    # that; and the last two frames, asked in reverse
    study, series, sop, frames = long_multiframe
    near = 3 + MAX_READ_GAP // FRAME_BYTES + 1
    far = near + MAX_READ_GAP // FRAME_BYTES + 2
    numbers = [200, 1, near, 2, far, 3, 199]
    service, reader = world.service()
    # When the list is retrieved as stored
    response = service.frames(_frames_of(study, series, sop, numbers, AS_STORED_FRAMES))
    # Then the frames come back in the order asked
    parts = split_multipart(response.body, response.content_type)
    assert [body for _, body in parts] == [frames[n - 1] for n in numbers]
    # And S3 served three ranged GETs: frames 1-3 with the near one (reading the gap),
    # the far one alone, and the last two together
    assert reader.requests == 3
    assert reader.bytes_read == len(numbers) * FRAME_BYTES + MAX_READ_GAP


def test_frames_too_large_together_are_refused_before_any_read(world: World) -> None:
    # Given a stored single-frame 1024x1024 16-bit image (a 2 MiB frame)
    ds = make_dataset(rows=1024, columns=1024)
    ds.PixelData = bytes(range(256)) * 8192
    world.store(to_part10(ds))
    service, reader = world.service()
    # When the frame is listed three times (6 MiB, more than one response carries)
    request = _frames_of(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, [1, 1, 1])
    with pytest.raises(PayloadTooLarge, match="fewer frames"):
        service.frames(request)
    # Then it is refused from the frame index, without reading the object
    assert reader.requests == 0


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_repeated_compressed_frames_are_decompressed_like_single_ones(world: World) -> None:
    # Given a stored 15-frame RLE file, and its frame 2 decompressed alone (the default Accept)
    entry = next(e for e in with_pixels() if e.path.name == "rtdose_rle.dcm")
    single = world.get(f"{entry.url}/frames/2")
    assert single.status == 200
    ((_, second),) = single.parts()
    # When frames 2,1,2 are retrieved decompressed
    answer = world.get(f"{entry.url}/frames/2,1,2")
    # Then frame 2 is the same decompressed bytes both times
    assert answer.status == 200
    bodies = [body for _, body in answer.parts()]
    assert len(bodies) == 3
    assert bodies[0] == bodies[2] == second


@pytest.fixture(scope="module")
def deflated_multiframe(world: World) -> tuple[str, str, str, list[bytes]]:
    """A deflated 2-frame instance: no frame index, frames come from parsing the object."""
    frames = [bytes([7]) * 32, bytes([9]) * 32]
    ds = make_dataset(NumberOfFrames=2)
    ds.PixelData = b"".join(frames)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    world.store(to_part10(ds))
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, frames


def test_frames_without_an_index_are_parsed_from_the_object(
    world: World, deflated_multiframe: tuple[str, str, str, list[bytes]]
) -> None:
    # Given a stored deflated 2-frame instance (not indexable)
    study, series, sop, frames = deflated_multiframe
    assert InstanceItem.get(*InstanceItem.key(study, series, sop)).frame_index is None
    # When frames 2,1 are retrieved as stored
    answer = world.get(f"{instance_path(study, series, sop)}/frames/2,1", {"Accept": AS_STORED_FRAMES})
    # Then they are the frames in that order
    assert answer.status == 200
    assert [body for _, body in answer.parts()] == [frames[1], frames[0]]


@pytest.mark.parametrize("kind", ["indexed", "parsed"])
def test_frame_out_of_range_is_400_with_a_message(
    world: World,
    multiframe: tuple[str, str, str, list[bytes]],
    deflated_multiframe: tuple[str, str, str, list[bytes]],
    kind: str,
) -> None:
    # Given a stored multi-frame instance, with and without a frame index
    study, series, sop, frames = multiframe if kind == "indexed" else deflated_multiframe
    # When a frame past the last is asked for, alone or in a list
    for frames_path in (f"{len(frames) + 1}", f"1,{len(frames) + 5}"):
        answer = world.get(
            f"{instance_path(study, series, sop)}/frames/{frames_path}", {"Accept": AS_STORED_FRAMES}
        )
        # Then it is 400 and says how many frames there are
        assert answer.status == 400
        message = answer.json()["message"]
        assert f"{len(frames)} frame" in message


def test_frame_zero_and_garbage_lists_are_400(
    world: World, multiframe: tuple[str, str, str, list[bytes]]
) -> None:
    study, series, sop, _ = multiframe
    for frames_path in ("0", "1,,2", "a"):
        # Given a malformed frame list, When it is requested, Then it is 400 with a message
        answer = world.get(f"{instance_path(study, series, sop)}/frames/{frames_path}")
        assert answer.status == 400, frames_path
        assert answer.json()["message"]


def test_frames_of_an_instance_without_pixel_data_is_404(world: World) -> None:
    # Given a stored structured report (no pixel data)
    entry = next(e for e in corpus() if e.path.name == "test-SR.dcm")
    # When frame 1 is asked for
    answer = world.get(f"{entry.url}/frames/1", {"Accept": AS_STORED_FRAMES})
    # Then it is 404 with a message (not a server error)
    assert answer.status == 404
    assert "pixel data" in answer.json()["message"]


# ---------------------------------------------------------------------- not found
def test_unknown_uids_are_404(world: World) -> None:
    # Given a stored instance and UIDs nobody stored
    entry = next(e for e in corpus() if e.path.name == "CT_small.dcm")
    i = entry.instance
    nobody = new_uid()
    paths = [
        f"/studies/{nobody}",
        f"/studies/{nobody}/metadata",
        f"/studies/{i.study_instance_uid}/series/{nobody}",
        f"/studies/{i.study_instance_uid}/series/{nobody}/metadata",
        instance_path(i.study_instance_uid, i.series_instance_uid, nobody),
        instance_path(i.study_instance_uid, i.series_instance_uid, nobody) + "/metadata",
        instance_path(i.study_instance_uid, i.series_instance_uid, nobody) + "/frames/1",
        instance_path(i.study_instance_uid, i.series_instance_uid, nobody) + "/bulkdata/7FE00010",
        instance_path(nobody, i.series_instance_uid, i.sop_instance_uid),  # right SOP, wrong study
    ]
    for path in paths:
        # When each is retrieved, Then it is 404 with a JSON message
        answer = world.get(path, {"Accept": "*/*"})
        assert answer.status == 404, path
        assert answer.json()["message"], path


def test_invalid_uid_in_the_path_is_400(world: World) -> None:
    answer = world.get("/studies/1.2.03/metadata")
    assert answer.status == 400
    assert "leading zeros" in answer.json()["message"]


# ---------------------------------------------------------------------- caching
def test_instance_metadata_and_frames_revalidate_with_304(
    world: World, multiframe: tuple[str, str, str, list[bytes]]
) -> None:
    # Given a stored instance and the ETags of its metadata and a frame
    study, series, sop, _ = multiframe
    path = instance_path(study, series, sop)
    for resource in (f"{path}/metadata", f"{path}/frames/2"):
        first = world.get(resource)
        etag = first.headers["ETag"]
        assert first.status == 200 and etag.startswith('"')
        # When it is asked again with If-None-Match (alone, in a list, weak)
        for header in (etag, f'"other", {etag}', f"W/{etag}"):
            again = world.get(resource, {"If-None-Match": header})
            # Then it is 304 without a body and with the same ETag
            assert again.status == 304, (resource, header)
            assert again.body == b""
            assert again.headers["ETag"] == etag
        # And another ETag gets the full answer
        assert world.get(resource, {"If-None-Match": '"stale"'}).status == 200


def test_frame_etag_depends_on_the_representation(world: World) -> None:
    # Given a stored native Explicit VR Little Endian instance
    entry = next(e for e in corpus() if e.path.name == "CT_small.dcm")
    frame = f"{entry.url}/frames/1"
    # When frame 1 is read as stored, as Explicit VR (the same thing) and as Implicit VR
    as_stored = world.get(frame, {"Accept": AS_STORED_FRAMES})
    explicit = world.get(frame)
    octet_implicit = (
        f"multipart/related; type=application/octet-stream; transfer-syntax={ImplicitVRLittleEndian}"
    )
    implicit = world.get(frame, {"Accept": octet_implicit})
    # Then the same representation has the same ETag, another one another ETag
    assert as_stored.status == explicit.status == implicit.status == 200
    assert as_stored.headers["ETag"] == explicit.headers["ETag"]
    assert implicit.headers["ETag"] != explicit.headers["ETag"]
    assert world.get(frame, {"If-None-Match": explicit.headers["ETag"]}).status == 304


def test_series_and_study_metadata_revalidate_with_304(world: World) -> None:
    # Given a stored series
    study, series = new_uid(), new_uid()
    world.store(to_part10(make_dataset(study=study, series=series)))
    for path in (f"/studies/{study}/series/{series}/metadata", f"/studies/{study}/metadata"):
        etag = world.get(path).headers["ETag"]
        # When revalidated, Then 304
        assert world.get(path, {"If-None-Match": etag}).status == 304, path


def test_series_metadata_is_prebuilt_by_the_hook_and_changes_with_a_new_instance(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a series of two instances, read before any document was built
    study, series = new_uid(), new_uid()
    world.store(*(to_part10(make_dataset(study=study, series=series, InstanceNumber=n)) for n in (1, 2)))
    path = f"/studies/{study}/series/{series}/metadata"
    counter = CallCounter()
    counter.install(monkeypatch)
    assembled = world.get(path)
    assert assembled.status == 200
    # Then the retrieve function assembled it from the instance documents and wrote nothing
    assert counter.of("s3").count("GetObject") == 2
    assert "PutObject" not in counter.of("s3")
    # When the series becomes stable and the metadata hook builds its document
    assert (
        world.builder().build(study, series, SeriesItem.get(*SeriesItem.key(study, series)).version)
        == "built"
    )
    counter.reset()
    second = world.get(path)
    # Then a read costs one index GetItem and one S3 GetObject, and is the same document
    assert counter.of("dynamodb") == ["GetItem"]
    assert counter.of("s3") == ["GetObject"]
    assert second.body == assembled.body
    assert second.headers["ETag"] == assembled.headers["ETag"]
    # When a third instance joins the series
    third = make_dataset(study=study, series=series, InstanceNumber=3)
    world.store(to_part10(third))
    changed = world.get(path)
    # Then the ETag and the document change at once (assembled again), the old ETag no longer revalidates
    assert changed.headers["ETag"] != assembled.headers["ETag"]
    assert len(changed.json()) == 3
    assert third.SOPInstanceUID in {d["00080018"]["Value"][0] for d in changed.json()}
    assert world.get(path, {"If-None-Match": assembled.headers["ETag"]}).status == 200
    # And a stale SeriesStable (the old version) builds nothing
    assert world.builder().build(study, series, second.headers["ETag"].strip('"')) == "changed"


def test_study_metadata_changes_with_a_new_series(world: World) -> None:
    # Given a study read once
    study = new_uid()
    world.store(to_part10(make_dataset(study=study)))
    first = world.get(f"/studies/{study}/metadata")
    # When a series is added, Then the study's ETag and document change
    world.store(to_part10(make_dataset(study=study)))
    second = world.get(f"/studies/{study}/metadata")
    assert second.headers["ETag"] != first.headers["ETag"]
    assert len(second.json()) == 2


def test_cache_headers(world: World, multiframe: tuple[str, str, str, list[bytes]]) -> None:
    # Given a stored instance
    study, series, sop, _ = multiframe
    path = instance_path(study, series, sop)
    # Then instance bytes and frames never change (immutable), metadata is revalidated
    assert "immutable" in world.get(path).headers["Cache-Control"]
    assert "immutable" in world.get(f"{path}/frames/1").headers["Cache-Control"]
    assert "no-cache" in world.get(f"{path}/metadata").headers["Cache-Control"]


def _compressed() -> list[CorpusFile]:
    return [e for e in with_pixels() if UID(e.instance.transfer_syntax_uid).is_compressed]


def _assert_406_with_what_is_available(answer: Answer) -> None:
    assert answer.status == 406, (answer.status, answer.body[:300])
    message = answer.json()["message"]
    assert "cannot be decompressed" in message
    assert "Available" in message
    assert "transfer-syntax=*" in message


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("entry", _compressed(), ids=lambda e: e.name)
def test_compressed_frames_decompress_pixel_exact_or_406(world: World, entry: CorpusFile) -> None:
    # Given a stored compressed file, and what pydicom's own decoders make of its first frame
    ds = _dataset(entry.instance.data)
    try:
        expected = pixel_array(ds, index=0, raw=True).tobytes()
    except Exception:  # no codec can decode it
        expected = None
    # When its first frame is retrieved uncompressed (the default Accept)
    answer = world.get_built(f"{entry.url}/frames/1")
    # Then it is pixel-exact when the codecs support the file, else 406 naming what is available
    if expected is None:
        _assert_406_with_what_is_available(answer)
        return
    if len(expected) > RESPONSE_LIMIT:
        # A decoded frame larger than one response can carry: built decompressed when first
        # asked for, then a redirect to it
        assert answer.status == 303, (answer.status, answer.body[:300])
        content_type, raw = follow_presigned(world.s3, world.settings.bucket_name, answer.headers["Location"])
        ((headers, pixels),) = split_multipart(raw, content_type)
        assert transfer_syntax_of(headers["content-type"]) == ExplicitVRLittleEndian
        assert pixels == expected
        return
    assert answer.status == 200, answer.body[:300]
    ((headers, pixels),) = answer.parts()
    assert transfer_syntax_of(headers["content-type"]) == ExplicitVRLittleEndian
    assert pixels == expected


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("entry", _compressed(), ids=lambda e: e.name)
def test_compressed_instances_decompress_pixel_exact_or_406(world: World, entry: CorpusFile) -> None:
    # Given a stored compressed file, and its pixels as pydicom decodes them
    original = _dataset(entry.instance.data)
    try:
        expected = original.pixel_array
    except Exception:  # no codec can decode it
        expected = None
    # When it is retrieved with the default Accept (Explicit VR Little Endian)
    answer = world.get_built(entry.url)
    # Then it is the same instance with the same pixels, native, when the codecs support the
    # file, else 406 naming what is available
    if expected is None:
        _assert_406_with_what_is_available(answer)
        return
    if expected.nbytes > RESPONSE_LIMIT:
        # Decompressed, more than one response can carry: the body built when first asked for
        assert answer.status == 303, (answer.status, answer.body[:300])
        raw = follow_presigned(world.s3, world.settings.bucket_name, answer.headers["Location"])
        ((headers, body),) = split_multipart(raw[1], raw[0])
    else:
        assert answer.status == 200, answer.body[:300]
        ((headers, body),) = answer.parts()
    assert transfer_syntax_of(headers["content-type"]) == ExplicitVRLittleEndian
    returned = _dataset(body)
    assert returned.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert returned.SOPInstanceUID == original.SOPInstanceUID
    assert returned.pixel_array.dtype == expected.dtype
    assert returned.pixel_array.shape == expected.shape
    assert (returned.pixel_array == expected).all()
