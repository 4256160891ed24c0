"""The STOW Lambda handler on the sample events in events/ (the ones `sam local invoke` uses)."""

from __future__ import annotations

import base64
import io
import json
import uuid
from collections.abc import Callable, Iterator
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from dicomweb_client import DICOMwebClient
from pydicom import dcmread

from dicomweb_core import config
from dicomweb_core.index.models import StudyItem, index_projection, key_schema, secondary_indexes
from dicomweb_core.index.table import use_by_default
from infra.datasets.generate import make_dataset, to_part10
from infra.local.provision import provision
from infra.samtemplate import REPO_ROOT, load_template
from tests.lambda_harness import LambdaContext, load_handler
from tests.streams import settle

EVENTS = REPO_ROOT / "events"


@pytest.fixture
def stow(aws: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    stack = provision(load_template(), endpoint_url=None, region="us-east-1", overrides={})
    spec = load_template().functions()["StowFunction"]
    for name, value in stack.function_environment(spec).items():
        monkeypatch.setenv(name, value)
    use_by_default(stack.physical_ids["IndexTable"])
    config.settings.cache_clear()
    yield load_handler("StowFunction")
    config.settings.cache_clear()


def invoke(module: ModuleType, event: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
    response = module.handler(event, LambdaContext("StowFunction"))
    body = response["body"]
    if response.get("isBase64Encoded"):
        body = base64.b64decode(body).decode()
    return response["statusCode"], response["headers"], json.loads(body) if body else None


def sample(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


def test_single_part_sample_event(stow: ModuleType) -> None:
    # Given the single-part sample event
    event = sample("stow-single-part.json")
    # When the handler runs
    status, headers, body = invoke(stow, event)
    # Then the instance is stored and the response is the Store Instances Response Module
    assert status == 200
    assert headers["Content-Type"] == "application/dicom+json"
    (item,) = body["00081199"]["Value"]
    assert item["00081190"]["Value"][0].startswith("https://api.example.test/studies/")


def test_multipart_sample_event_stores_both_into_the_study(stow: ModuleType) -> None:
    event = sample("stow-multipart-study.json")
    status, _, body = invoke(stow, event)
    assert status == 200
    assert len(body["00081199"]["Value"]) == 2
    study = event["pathParameters"]["study"]
    settle()
    assert int(StudyItem.get(*StudyItem.key(study)).instance_count) == 2


@pytest.mark.parametrize(
    ("content_type", "body", "status"),
    [
        ("text/plain", b"hello", 415),
        ("multipart/related; type=application/dicom+xml; boundary=x", b"--x\r\n\r\nx\r\n--x--", 415),
        ('multipart/related; type="application/dicom"; boundary=abc', b"no delimiter here", 400),
        ("application/dicom", b"not dicom at all", 409),
    ],
    ids=["wrong-type", "xml-metadata-stow", "malformed-multipart", "not-dicom"],
)
def test_bad_requests_get_clear_answers(
    stow: ModuleType, content_type: str, body: bytes, status: int
) -> None:
    event = sample("stow-single-part.json")
    event["headers"]["content-type"] = content_type
    event["body"] = base64.b64encode(body).decode()
    got, _, payload = invoke(stow, event)
    assert got == status
    if status in (400, 415):
        assert payload["message"]


def test_invalid_study_uid_in_path_is_400(stow: ModuleType) -> None:
    event = sample("stow-multipart-study.json")
    event["pathParameters"]["study"] = "1.2.03"
    event["rawPath"] = event["requestContext"]["http"]["path"] = "/studies/1.2.03"
    status, _, payload = invoke(stow, event)
    assert status == 400
    assert "leading zeros" in payload["message"]


def test_event_files_match_template_routes() -> None:
    route_keys = {route.route_key for route in load_template().routes()}
    for path in EVENTS.glob("*.json"):
        assert json.loads(path.read_text())["routeKey"] in route_keys, path.name


def test_layer_requirements_pin_what_the_core_imports() -> None:
    text = (REPO_ROOT / "layers/core/requirements.txt").read_text()
    for package in ("pydicom", "pynamodb", "aws-lambda-powertools"):
        assert package in text


INDEX_TABLES = sorted(
    name
    for name, table in load_template().resources_of_type("AWS::DynamoDB::Table").items()
    if "GlobalSecondaryIndexes" in table["Properties"]
)


def test_both_stores_have_an_index_table() -> None:
    assert INDEX_TABLES == ["DeidTable", "IndexTable"]


@pytest.mark.parametrize("name", INDEX_TABLES)
def test_index_models_match_the_template_table(name: str) -> None:
    # Given an index table of the template (the primary index and the research store's index)
    table = load_template().resources_of_type("AWS::DynamoDB::Table")[name]
    # Then its keys and GSIs are exactly the ones the pynamodb models define
    keys = {k["KeyType"]: k["AttributeName"] for k in table["Properties"]["KeySchema"]}
    assert keys == {"HASH": key_schema()["hash_key"], "RANGE": key_schema()["range_key"]}
    template_indexes = {
        gsi["IndexName"]: (
            next(k["AttributeName"] for k in gsi["KeySchema"] if k["KeyType"] == "HASH"),
            next(k["AttributeName"] for k in gsi["KeySchema"] if k["KeyType"] == "RANGE"),
        )
        for gsi in table["Properties"]["GlobalSecondaryIndexes"]
    }
    assert template_indexes == secondary_indexes()
    assert all(g["Projection"] == index_projection() for g in table["Properties"]["GlobalSecondaryIndexes"])


# --- What real senders send (docs/conformance.md, STOW-RS "Tolerances") ----------------------
#
# Each body is built the way that client builds it (the source read is named); none is fetched.

DICOM_PART = b"Content-Type: application/dicom\r\n"


def _orthanc(instances: list[bytes]) -> tuple[str, bytes]:
    """Orthanc's DICOMweb plugin 1.x (Plugin/DicomWebClient.cpp, StowClientJob): the boundary
    is a UUID, '-', the same UUID again (73 characters), unquoted; each part carries a
    Content-Length; the close delimiter ends the body without a CRLF."""
    uid = str(uuid.uuid4())
    boundary = f"{uid}-{uid}"
    parts = b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\nContent-Length: {len(data)}\r\n\r\n".encode()
        + data
        + b"\r\n"
        for data in instances
    )
    return (
        f'multipart/related; type="application/dicom"; boundary={boundary}',
        parts + f"--{boundary}--".encode(),
    )


def _dicomweb_client_python(instances: list[bytes]) -> tuple[str, bytes]:
    """dicomweb-client (Python) ``store_instances``, run for real; the request is captured
    where it would go on the wire (``_http_post``), so no network is used."""
    client = DICOMwebClient("https://api.example.test")
    sent: dict[str, Any] = {}

    def capture(url: str, data: bytes, headers: dict[str, str]) -> SimpleNamespace:
        sent.update(data=data, headers=headers)
        return SimpleNamespace(content=b"")

    client._http_post = capture  # type: ignore[method-assign]
    client.store_instances([dcmread(io.BytesIO(data)) for data in instances])
    return sent["headers"]["Content-Type"], sent["data"]


def _dicomweb_client_js(instances: list[bytes], *, legacy: bool) -> tuple[str, bytes]:
    """dicomweb-client (JS; OHIF's upload calls its ``storeInstances``), src/message.js
    ``multipartEncode``: a GUID boundary, each part opened by CRLF, no CRLF after the close
    delimiter. Before 0.7 the parameters were unquoted; before 0.11.1 the buffer was sized one
    close delimiter per instance, so the body ends in NUL bytes (an epilogue)."""
    boundary = str(uuid.uuid4())
    close = f"\r\n--{boundary}--".encode()
    body = (
        b"".join(f"\r\n--{boundary}\r\n".encode() + DICOM_PART + b"\r\n" + data for data in instances) + close
    )
    if legacy:
        content_type = f"multipart/related; type=application/dicom; boundary={boundary}"
        return content_type, body + b"\0" * (len(close) * (len(instances) - 1))
    return f'multipart/related; type="application/dicom"; boundary="{boundary}"', body


def _dcm4che_stowrs(instances: list[bytes]) -> tuple[str, bytes]:
    """dcm4che's ``stowrs`` (StowRS.java): boundary ``myboundary``, type quoted, each part
    opened by CRLF, the close delimiter followed by CRLF."""
    body = b"".join(b"\r\n--myboundary\r\n" + DICOM_PART + b"\r\n" + data for data in instances)
    return (
        'multipart/related; type="application/dicom"; boundary=myboundary',
        body + b"\r\n--myboundary--\r\n",
    )


def _curl_form(instances: list[bytes]) -> tuple[str, bytes]:
    """``curl -H 'Content-Type: multipart/related; type="application/dicom"'
    -F 'file=@a.dcm;type=application/dicom'`` (as vendor tutorials do): curl keeps the given
    type, appends its boundary (24 dashes and 22 random characters, lib/mime.c) and adds a
    form-data Content-Disposition to each part."""
    boundary = "-" * 24 + "Xq3b9Lr2TzK8wPm4NcV7aY"
    parts = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file{n}"; filename="{n}.dcm"\r\n'.encode()
        + DICOM_PART
        + b"\r\n"
        + data
        + b"\r\n"
        for n, data in enumerate(instances)
    )
    return (
        f'multipart/related; type="application/dicom"; boundary={boundary}',
        parts + f"--{boundary}--\r\n".encode(),
    )


def _hand_written(
    instances: list[bytes],
    *,
    content_type: str,
    boundary: str = "DICOMwebBoundary",
    head: bytes = DICOM_PART,
    eol: bytes = b"\r\n",
) -> tuple[str, bytes]:
    """A body as a person writes it for ``curl --data-binary @body``: ``head`` on every part."""
    dash = b"--" + boundary.encode()
    parts = b"".join(dash + eol + head + eol + data + eol for data in instances)
    return content_type, parts + dash + b"--" + eol


SENDERS: dict[str, Callable[[list[bytes]], tuple[str, bytes]]] = {
    "orthanc-dicomweb-73-char-boundary": _orthanc,
    "dicomweb-client-python": _dicomweb_client_python,
    "dicomweb-client-js-ohif": lambda i: _dicomweb_client_js(i, legacy=False),
    "dicomweb-client-js-before-0.7-unquoted-nul-epilogue": lambda i: _dicomweb_client_js(i, legacy=True),
    "dcm4che-stowrs": _dcm4che_stowrs,
    "curl-form-with-content-type": _curl_form,
    "curl-single-quoted-type-and-boundary": lambda i: _hand_written(
        i, content_type="multipart/related; type='application/dicom'; boundary='DICOMwebBoundary'"
    ),
    "type-upper-case-unquoted": lambda i: _hand_written(
        i, content_type="multipart/related; type=Application/DICOM; boundary=DICOMwebBoundary"
    ),
    "type-with-transfer-syntax-inside": lambda i: _hand_written(
        i,
        content_type='multipart/related; type="application/dicom; transfer-syntax=1.2.840.10008.1.2.1"; '
        "boundary=DICOMwebBoundary",
    ),
    "no-type-parameter": lambda i: _hand_written(
        i, content_type="multipart/related; boundary=DICOMwebBoundary"
    ),
    "start-and-start-info": lambda i: _hand_written(
        i,
        content_type='multipart/related; type="application/dicom"; start="<part1@example>"; '
        'start-info="application/dicom"; boundary=DICOMwebBoundary',
        head=b"Content-ID: <part1@example>\r\n" + DICOM_PART,
    ),
    "charset-on-multipart-and-parts": lambda i: _hand_written(
        i,
        content_type='multipart/related; type="application/dicom"; charset=utf-8; boundary=DICOMwebBoundary',
        head=b"Content-Type: application/dicom; charset=binary\r\n",
    ),
    "part-transfer-syntax-parameter": lambda i: _hand_written(
        i,
        content_type='multipart/related; type="application/dicom"; boundary=DICOMwebBoundary',
        head=b"Content-Type: application/dicom; transfer-syntax=1.2.840.10008.1.2.1\r\n",
    ),
    "lf-only-line-ends": lambda i: _hand_written(
        i,
        content_type='multipart/related; type="application/dicom"; boundary=DICOMwebBoundary',
        head=b"Content-Type: application/dicom\n",
        eol=b"\n",
    ),
    "preamble-padding-epilogue": lambda i: (
        'multipart/related; type="application/dicom"; boundary=DICOMwebBoundary',
        b"This is a multi-part message in MIME format.\r\n"
        + b"".join(b"--DICOMwebBoundary \t\r\n" + DICOM_PART + b"\r\n" + d + b"\r\n" for d in i)
        + b"--DICOMwebBoundary--  \r\nsent by a script\r\n",
    ),
    "parts-without-headers": lambda i: _hand_written(
        i, content_type='multipart/related; type="application/dicom"; boundary=DICOMwebBoundary', head=b""
    ),
    "mime-headers-any-case": lambda i: _hand_written(
        i,
        content_type='multipart/related; type="application/dicom"; boundary=DICOMwebBoundary',
        head=b"MIME-Version: 1.0\r\ncontent-type: application/dicom\r\nCONTENT-TRANSFER-ENCODING: binary\r\n",
    ),
    "folded-part-header": lambda i: _hand_written(
        i,
        content_type='multipart/related; type="application/dicom"; boundary=DICOMwebBoundary',
        head=b"Content-Type: application/dicom;\r\n\ttransfer-syntax=1.2.840.10008.1.2.1\r\n",
    ),
    "space-before-colon": lambda i: _hand_written(
        i,
        content_type='multipart/related; type="application/dicom"; boundary=DICOMwebBoundary',
        head=b"Content-Type : application/dicom\r\n",
    ),
    "boundary-outside-rfc2046-characters": lambda i: _hand_written(
        i,
        content_type='multipart/related; type="application/dicom"; boundary="{{dicom*boundary}}"',
        boundary="{{dicom*boundary}}",
    ),
}


@pytest.mark.parametrize("sender", SENDERS.values(), ids=SENDERS.keys())
def test_stow_accepts_what_real_senders_send(
    stow: ModuleType, sender: Callable[[list[bytes]], tuple[str, bytes]]
) -> None:
    # Given two new instances, framed as this sender frames a STOW-RS request
    datasets = [make_dataset(), make_dataset()]
    content_type, body = sender([to_part10(ds) for ds in datasets])
    event = sample("stow-single-part.json")
    event["headers"]["content-type"] = content_type
    event["body"] = base64.b64encode(body).decode()
    # When the STOW handler receives it
    status, _, payload = invoke(stow, event)
    # Then both instances are stored
    assert status == 200, payload
    stored = {item["00081155"]["Value"][0] for item in payload["00081199"]["Value"]}
    assert stored == {ds.SOPInstanceUID for ds in datasets}


@pytest.mark.parametrize(
    ("content_type", "body", "status", "message"),
    [
        pytest.param(
            f'multipart/related; type="application/dicom"; boundary={"b" * 1001}',
            b"--" + b"b" * 1001 + b"\r\n\r\nx\r\n--" + b"b" * 1001 + b"--",
            400,
            "at most 1000",
            id="boundary-over-1000-characters",
        ),
        pytest.param(
            'multipart/related; type="application/dicom"; boundary=B',
            b"--B\r\nContent-Type: application/octet-stream\r\n\r\nx\r\n--B--",
            415,
            ";type=application/dicom",
            id="curl-form-without-part-type",
        ),
        pytest.param(
            "multipart/form-data; boundary=B",
            b'--B\r\nContent-Disposition: form-data; name="f"\r\n\r\nx\r\n--B--',
            415,
            'multipart/related; type="application/dicom"',
            id="curl-form-data",
        ),
        pytest.param(
            'multipart/related; type="application/dicom"; boundary=B',
            b"--B\r\nContent-Transfer-Encoding: base64\r\n\r\nAAAA\r\n--B--",
            415,
            "Content-Transfer-Encoding base64",
            id="base64-part",
        ),
        pytest.param(
            'multipart/related; type="application/dicom"; boundary=B',
            b"--B\r\n" + DICOM_PART + b"\r\nxx\r\n--B\r\n" + DICOM_PART + b"\r\nthe rest never came",
            400,
            "truncated",
            id="truncated-body",
        ),
        pytest.param(
            'multipart/related; type="application/dicom"; boundary=B',
            b"--B\r\nX-Pad: " + b"v" * 20000 + b"\r\n\r\nx\r\n--B--",
            400,
            "16384 bytes",
            id="part-headers-too-large",
        ),
        pytest.param(
            'multipart/related; type="application/dicom"; boundary=B',
            b"--B\r\nContent-Type: dicom\r\n\r\nx\r\n--B--",
            400,
            "Part 1",
            id="part-content-type-not-a-media-type",
        ),
    ],
)
def test_stow_refuses_what_would_harm_the_store_with_an_actionable_answer(
    stow: ModuleType, content_type: str, body: bytes, status: int, message: str
) -> None:
    # Given a request that cannot be stored safely as sent
    event = sample("stow-single-part.json")
    event["headers"]["content-type"] = content_type
    event["body"] = base64.b64encode(body).decode()
    # When the STOW handler receives it
    got, _, payload = invoke(stow, event)
    # Then the answer says what to change
    assert got == status, payload
    assert message in payload["message"]
