"""The STOW Lambda handler on the sample events in events/ (the ones `sam local invoke` uses)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

from dicomweb_core import config
from dicomweb_core.index.models import StudyItem, bind_table, key_schema, secondary_indexes
from infra.local.provision import provision
from infra.samtemplate import REPO_ROOT, load_template
from tests.lambda_harness import LambdaContext, load_handler

EVENTS = REPO_ROOT / "events"


@pytest.fixture
def stow(aws: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    stack = provision(load_template(), endpoint_url=None, region="us-east-1", overrides={})
    spec = load_template().functions()["StowFunction"]
    for name, value in stack.function_environment(spec).items():
        monkeypatch.setenv(name, value)
    bind_table(stack.physical_ids["IndexTable"])
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


@pytest.mark.parametrize("name", sorted(load_template().resources_of_type("AWS::DynamoDB::Table")))
def test_index_models_match_the_template_table(name: str) -> None:
    # Given a table of the template (the primary index and the research store's index)
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
    assert all(
        g["Projection"]["ProjectionType"] == "ALL" for g in table["Properties"]["GlobalSecondaryIndexes"]
    )
