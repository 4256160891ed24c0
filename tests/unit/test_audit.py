"""Audit records (PS3.15 A.5): their shape, the event each request maps to, and where they go."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import boto3
import pytest

from dicomweb_core import audit
from dicomweb_core.group_scopes import customise, parse_group_scopes
from dicomweb_core.index.access import Index
from dicomweb_core.index.models import SeriesItem
from dicomweb_core.observability import logger
from infra.samtemplate import load_template
from tests.index_memory import MemoryItems


def http_event(route_key: str, *, claims: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    method, path = route_key.split(" ", 1)
    context: dict[str, Any] = {"http": {"method": method, "sourceIp": "10.1.2.3"}, "requestId": "req-1"}
    if claims is not None:
        context["authorizer"] = {"jwt": {"claims": claims, "scopes": ["dicomweb/read"]}}
    return {"routeKey": route_key, "rawPath": path, "requestContext": context, **extra}


@pytest.mark.parametrize("route", load_template().routes(), ids=lambda r: r.route_key)
def test_every_template_route_maps_to_a_dicom_audit_event(route: Any) -> None:
    event, action, event_type = audit.classify(route.method, route.route_key, 200)
    assert event in set(audit.AuditEvent)
    assert action in {"C", "R", "E", "D"}
    assert event_type is None
    assert audit.classify(route.method, route.route_key, 401)[0] is audit.AuditEvent.USER_AUTHENTICATION
    assert audit.classify(route.method, route.route_key, 403)[0] is audit.AuditEvent.SECURITY_ALERT


@pytest.mark.parametrize(
    ("route_key", "code", "action"),
    [
        ("POST /studies", "110104", "C"),
        ("GET /studies", "110112", "E"),
        ("GET /studies/{study}/series/{series}/instances", "110112", "E"),
        ("GET /studies/{study}/metadata", "110103", "R"),
        ("GET /studies/{study}/series/{series}/instances/{instance}/frames/{frames}", "110104", "R"),
        ("DELETE /studies/{study}", "110105", "D"),
        ("POST /admin/deidentify/studies/{study}", "110106", "E"),
    ],
)
def test_classification_follows_the_dicom_event_ids(route_key: str, code: str, action: str) -> None:
    event, found_action, _ = audit.classify(route_key.split(" ", maxsplit=1)[0], route_key, 200)
    assert (event.value[0], found_action) == (code, action)


def test_a_record_names_the_requestor_objects_and_outcome_but_no_secrets() -> None:
    event = http_event(
        "GET /studies/{study}/metadata",
        claims={"sub": "user-1", "client_id": "client-9", "username": "alice"},
        pathParameters={"study": "1.2.3"},
        headers={"authorization": "Bearer secret.token.value"},
        rawPath="/studies/1.2.3/metadata",
    )
    record = audit.http_message(event, 200, patient_of=lambda study: "PID-42")
    ident = record["EventIdentification"]
    assert ident["EventID"] == {
        "csd-code": "110103",
        "codeSystemName": "DCM",
        "originalText": "DICOM Instances Accessed",
    }
    assert ident["EventOutcomeIndicator"] == 0
    requestor = record["ActiveParticipant"][0]
    assert (requestor["UserID"], requestor["AlternativeUserID"]) == ("user-1", "client-9")
    assert requestor["NetworkAccessPointID"] == "10.1.2.3"
    ids = [
        (o["ParticipantObjectIDTypeCode"]["csd-code"], o["ParticipantObjectID"])
        for o in record["ParticipantObjectIdentification"]
    ]
    assert ids == [("2", "PID-42"), ("110180", "1.2.3")]
    assert "secret" not in json.dumps(record)


def test_the_research_store_never_names_a_patient() -> None:
    event = http_event(
        "GET /deid/studies/{study}", pathParameters={"study": "1.2.3"}, rawPath="/deid/studies/1.2.3"
    )
    record = audit.http_message(event, 200, patient_of=lambda study: "PID-42")
    assert "PID-42" not in json.dumps(record)
    assert record["Store"] == "deid"


def test_a_query_record_carries_the_query_base64() -> None:
    event = http_event("GET /studies", rawQueryString="PatientID=X&limit=5")
    record = audit.http_message(event, 200)
    (query,) = record["ParticipantObjectIdentification"]
    assert query["ParticipantObjectTypeCodeRole"] == 24
    assert query["ParticipantObjectQuery"] == "UGF0aWVudElEPVgmbGltaXQ9NQ=="


def test_server_errors_are_serious_failures() -> None:
    assert (
        audit.http_message(http_event("GET /studies"), 503)["EventIdentification"]["EventOutcomeIndicator"]
        == 8
    )


def test_the_wrapper_records_exactly_once_even_when_the_handler_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit.sinks, "sink", lambda: audit.FileSink(tmp_path / "audit.jsonl"))
    monkeypatch.setattr(audit.decorator, "_patient_of", lambda study: None)

    @audit.audited
    def crashing(event: dict[str, Any], context: Any) -> dict[str, Any]:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        crashing(http_event("GET /studies"), None)
    (line,) = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert json.loads(line)["EventIdentification"]["EventOutcomeIndicator"] == 8


def test_notes_are_per_request(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit.sinks, "sink", lambda: audit.FileSink(tmp_path / "audit.jsonl"))
    monkeypatch.setattr(audit.decorator, "_patient_of", lambda study: None)

    @audit.audited
    def storing(event: dict[str, Any], context: Any) -> dict[str, Any]:
        audit.note(audit.Subject(study=event["study"]))
        audit.note(audit.Subject(study=event["study"]))  # the same study twice: named once
        return {"statusCode": 200}

    storing({**http_event("POST /studies"), "study": "1.2.3"}, None)
    storing({**http_event("POST /studies"), "study": "1.2.4"}, None)
    first, second = (json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines())
    assert [o["ParticipantObjectID"] for o in first["ParticipantObjectIdentification"]] == ["1.2.3"]
    assert [o["ParticipantObjectID"] for o in second["ParticipantObjectIdentification"]] == ["1.2.4"]


def test_a_broken_sink_does_not_fail_the_request(monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken:
        def write(self, message: Any) -> None:
            raise OSError("disk full")

    monkeypatch.setattr(audit.sinks, "sink", Broken)
    audit.emit({"EventIdentification": {}})  # logged, not raised


@pytest.fixture
def function_log(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """What the functions' Powertools logger writes (to CloudWatch, in Lambda), as written."""
    buffer = io.StringIO()
    monkeypatch.setattr(logger.registered_handler, "stream", buffer)
    return buffer


def test_a_lost_record_leaves_only_its_reference_in_the_function_log(
    aws: None, function_log: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a study-level search for a patient by name and ID, whose audit record names them
    query = "PatientName=Doe%5EJane&PatientID=PID-12345"
    event = http_event(
        "GET /studies/{study}/series",
        claims={"sub": "user-1", "client_id": "client-9"},
        pathParameters={"study": "1.2.826.0.1.3680043.2.1125.77"},
        rawPath="/studies/1.2.826.0.1.3680043.2.1125.77/series",
        rawQueryString=query,
    )
    message = audit.http_message(event, 200, patient_of=lambda study: "PID-12345")
    assert "PID-12345" in json.dumps(message)
    # And an audit log group that cannot be written to (here: it does not exist)
    monkeypatch.setattr(
        audit.sinks, "sink", lambda: audit.CloudWatchSink("missing", client=boto3.client("logs"))
    )

    # When the record is emitted
    audit.emit(message)

    # Then one error line names nothing the record is about: no patient, no query (plain,
    # decoded or base64), no UID, no user
    (line,) = function_log.getvalue().splitlines()
    encoded = base64.b64encode(query.encode()).decode()
    for secret in (
        "PID-12345",
        "Doe",
        "PatientName",
        query,
        encoded,
        "1.2.826.0.1.3680043.2.1125.77",
        "user-1",
    ):
        assert secret not in line, secret
    # And it references the record by request, event, action, outcome and time
    logged = json.loads(line)
    assert (logged["level"], logged["message"]) == ("ERROR", audit.AUDIT_WRITE_FAILED)
    assert logged["audit_reference"] == {
        "RequestID": "req-1",
        "Route": "GET /studies/{study}/series",
        "Store": "primary",
        "EventID": "110112",
        "EventActionCode": "E",
        "EventOutcomeIndicator": 0,
        "EventDateTime": message["EventIdentification"]["EventDateTime"],
    }
    assert logged["error"] == "ResourceNotFoundException: ResourceNotFoundException"


def test_a_failure_whose_error_quotes_the_record_does_not_leak_it(
    function_log: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a sink whose failure message repeats what it was given
    class Echoing:
        def write(self, message: Any) -> None:
            raise ValueError(f"cannot write {json.dumps(message)}")

    monkeypatch.setattr(audit.sinks, "sink", Echoing)
    event = http_event("GET /studies", rawQueryString="PatientName=Doe%5EJane")

    # When a record is emitted
    audit.emit(audit.http_message(event, 200))

    # Then the error is named but its message is not logged
    (line,) = function_log.getvalue().splitlines()
    assert json.loads(line)["error"] == "ValueError"
    assert "Doe" not in line and "UGF0aWVudE5hbWU" not in line


def test_cloudwatch_sink_writes_to_its_own_log_group(aws: None) -> None:
    logs = boto3.client("logs")
    logs.create_log_group(logGroupName="audit")
    sink = audit.CloudWatchSink("audit", client=logs)
    sink.write({"a": 1})
    sink.write({"b": 2})
    (stream,) = logs.describe_log_streams(logGroupName="audit")["logStreams"]
    events = logs.get_log_events(logGroupName="audit", logStreamName=stream["logStreamName"])["events"]
    assert [json.loads(e["message"]) for e in events] == [{"a": 1}, {"b": 2}]


def test_the_template_sends_audit_records_and_api_access_logs_to_one_retained_group() -> None:
    template = load_template()
    group = template.resources["AuditLogGroup"]
    assert group["DeletionPolicy"] == "Retain"
    assert group["Properties"]["RetentionInDays"] == {"Ref": "AuditLogRetentionDays"}
    assert template.global_function["Environment"]["Variables"]["AUDIT_LOG_GROUP"] == {"Ref": "AuditLogGroup"}
    access = template.http_api()["AccessLogSettings"]
    assert access["DestinationArn"] == {"Fn::GetAtt": ["AuditLogGroup", "Arn"]}
    assert "$context.authorizer.error" in access["Format"]
    for name in template.functions():
        policies = template.resources[name]["Properties"].get("Policies", [])
        emits = name not in {
            "StabilityFunction",
            "GroupScopesFunction",
            "SeriesMetadataFunction",
            "BundleFunction",
            "ChangeFeedFunction",  # announces commits; it reads no instance and no PHI
            "AggregatesFunction",  # recounts: reads keys and counts, no PHI
        }
        assert ({"Ref": "AuditWritePolicy"} in policies) is emits, name


# ---------------------------------------------------------------- groups → scopes
GROUP_SCOPES = load_template().resources["GroupScopesFunction"]["Properties"]["Environment"]["Variables"][
    "GROUP_SCOPES"
]


def pre_token_event(groups: list[str], scopes: list[str]) -> dict[str, Any]:
    return {
        "version": "2",
        "triggerSource": "TokenGeneration_HostedAuth",
        "request": {"groupConfiguration": {"groupsToOverride": groups}, "scopes": scopes},
        "response": {},
    }


def _override(event: dict[str, Any]) -> dict[str, list[str]]:
    return customise(event, parse_group_scopes(GROUP_SCOPES))["response"]["claimsAndScopeOverrideDetails"][
        "accessTokenGeneration"
    ]


def test_a_reader_keeps_read_and_gains_nothing_else() -> None:
    assert _override(pre_token_event(["readers"], ["openid", "dicomweb/read"])) == {
        "scopesToAdd": [],
        "scopesToSuppress": [],
    }


def test_a_user_in_no_group_loses_the_clients_dicomweb_scopes() -> None:
    assert _override(pre_token_event([], ["openid", "email", "dicomweb/read"])) == {
        "scopesToAdd": [],
        "scopesToSuppress": ["dicomweb/read"],
    }


def test_a_researcher_signing_in_through_the_viewer_gets_research_scope_only() -> None:
    assert _override(pre_token_event(["researchers"], ["openid", "dicomweb/read"])) == {
        "scopesToAdd": ["dicomweb/deid.read"],
        "scopesToSuppress": ["dicomweb/read"],
    }


def test_administrators_get_every_operational_scope() -> None:
    added = _override(pre_token_event(["administrators", "unknown-group"], ["openid"]))["scopesToAdd"]
    assert added == ["dicomweb/admin", "dicomweb/delete", "dicomweb/read", "dicomweb/write"]


def test_group_scopes_outside_the_resource_server_are_refused() -> None:
    with pytest.raises(ValueError, match="outside"):
        parse_group_scopes('{"readers": "aws.cognito.signin.user.admin"}')


def test_a_stow_record_names_each_instance_and_its_patient_without_an_index_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a STOW that stored three instances of one study, two of them in one series
    monkeypatch.setattr(audit.sinks, "sink", lambda: audit.FileSink(tmp_path / "audit.jsonl"))
    looked_up: list[str] = []
    monkeypatch.setattr(audit.decorator, "_patient_of", looked_up.append)

    @audit.audited
    def storing(event: dict[str, Any], context: Any) -> dict[str, Any]:
        for series, sop in (("1.2.3.1", "1.2.3.1.1"), ("1.2.3.1", "1.2.3.1.2"), ("1.2.3.2", "1.2.3.2.1")):
            audit.note(audit.Subject("1.2.3", series, sop, patient_id="PID-7"))
        return {"statusCode": 200}

    # When the request's record is written
    storing(http_event("POST /studies"), None)
    (line,) = (tmp_path / "audit.jsonl").read_text().splitlines()
    objects = json.loads(line)["ParticipantObjectIdentification"]
    # Then it names the patient once, the study once, and every instance stored in it
    assert [o["ParticipantObjectID"] for o in objects] == ["PID-7", "1.2.3"]
    assert objects[1]["ParticipantObjectDescription"] == {
        "instances": [
            {"series": "1.2.3.1", "instance": "1.2.3.1.1"},
            {"series": "1.2.3.1", "instance": "1.2.3.1.2"},
            {"series": "1.2.3.2", "instance": "1.2.3.2.1"},
        ]
    }
    # And the patient ID came from the instances, not from another read of the index
    assert looked_up == []


@pytest.mark.parametrize(("copied", "lookups"), [(True, []), (False, ["1.2.3"])])
def test_a_retrieval_record_takes_the_patient_from_the_series_item_it_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, copied: bool, lookups: list[str]
) -> None:
    # Given a series item holding its study's attributes (or, written before it did, not)
    monkeypatch.setattr(audit.sinks, "sink", lambda: audit.FileSink(tmp_path / "audit.jsonl"))
    looked_up: list[str] = []
    monkeypatch.setattr(audit.decorator, "_patient_of", lambda study: looked_up.append(study) or "PID-READ")
    study_attributes = {
        "00100020": {"vr": "LO", "Value": ["PID-7"]},
        "0020000D": {"vr": "UI", "Value": ["1.2.3"]},
    }
    index = Index(MemoryItems())
    index.items.save(
        SeriesItem(
            *SeriesItem.key("1.2.3", "1.2.3.1"),
            study_uid="1.2.3",
            series_uid="1.2.3.1",
            dicom_json=json.dumps(
                (study_attributes if copied else {}) | {"00080060": {"vr": "CS", "Value": ["CT"]}}
            ),
        )
    )

    @audit.audited
    def series_metadata(event: dict[str, Any], context: Any) -> dict[str, Any]:
        index.series("1.2.3", "1.2.3.1")
        return {"statusCode": 200}

    # When its metadata is retrieved
    series_metadata(
        http_event(
            "GET /studies/{study}/series/{series}/metadata",
            pathParameters={"study": "1.2.3", "series": "1.2.3.1"},
            rawPath="/studies/1.2.3/series/1.2.3.1/metadata",
        ),
        None,
    )
    # Then the record names the patient, read from that item: no read of the study item
    (line,) = (tmp_path / "audit.jsonl").read_text().splitlines()
    objects = json.loads(line)["ParticipantObjectIdentification"]
    assert objects[0]["ParticipantObjectID"] == ("PID-7" if copied else "PID-READ")
    assert looked_up == lookups
