"""template.yaml: lint, validate, build and security invariants.

Everything is read from the template through infra.samtemplate, so adding a function,
route, bucket or table is checked without touching this file.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from dicomweb_core import audit
from dicomweb_core.observability import logger
from dicomweb_core.upload.declared import INGEST_PREFIX, QUARANTINE_PREFIX
from infra.samtemplate import REPO_ROOT, TEMPLATE_PATH, Route, load_template

VENV_BIN = Path(sys.executable).parent
# cfn-lint exit code is a bit mask: 2 errors, 4 warnings, 8 informational (1 is a crash).
CFN_LINT_ERROR_BITS = 1 | 2
READ_ONLY_VERBS = ("Get", "List", "Describe", "BatchGet", "Query", "Scan", "Head")
LAYER_CONTENTS = {
    "CoreLayer": ("dicomweb_core/__init__.py", "pydicom", "pynamodb", "aws_lambda_powertools"),
    "ImagingLayer": ("numpy", "pylibjpeg", "openjpeg", "libjpeg", "rle", "PIL"),
    "InferenceLayer": ("highdicom", "scipy"),
}
LAMBDA_UNZIPPED_LIMIT = 250 * 1024 * 1024  # function code and all its layers, unzipped
LAMBDA_SIZE_MARGIN = 20 * 1024 * 1024  # room for dependency upgrades before the limit bites
LAMBDA_EXTENSION_SUFFIX = ".cpython-312-x86_64-linux-gnu.so"

TEMPLATE = load_template()


def _tool(name: str) -> str:
    path = VENV_BIN / name
    assert path.is_file(), f"{name} is not installed next to {sys.executable}"
    return str(path)


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "SAM_CLI_TELEMETRY": "0",
        # The makefiles call python3 -m pip: use the venv's, which has pip and the shared cache.
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    return subprocess.run(
        args, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


# ---------------------------------------------------------------- lint, validate, build


def test_cfn_lint_reports_no_errors() -> None:
    # Given the template and cfn-lint from the venv
    cfn_lint = _tool("cfn-lint")

    # When it is linted
    result = _run(cfn_lint, "--", str(TEMPLATE_PATH))

    # Then no error is reported
    assert result.returncode & CFN_LINT_ERROR_BITS == 0, result.stdout + result.stderr


def test_sam_validate_lint_passes() -> None:
    # Given the template and the SAM CLI from the venv
    sam = _tool("sam")

    # When SAM validates it with its linter
    result = _run(sam, "validate", "--lint", "--template", str(TEMPLATE_PATH))

    # Then it is valid
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is a valid SAM Template" in result.stdout + result.stderr


@pytest.mark.slow
def test_sam_build_produces_functions_and_core_layer(tmp_path: Path) -> None:
    # Given the sources every function and layer is built from (missing ones fail, never skip)
    functions = TEMPLATE.functions()
    layers = TEMPLATE.layer_dirs()
    assert functions and layers
    for spec in functions.values():
        module = spec.handler.rsplit(".", 1)[0].replace(".", "/") + ".py"
        assert (spec.code_uri / module).is_file(), f"{spec.logical_id}: {module} missing in {spec.code_uri}"
    assert set(layers) == set(LAYER_CONTENTS), "every layer needs its expected contents listed here"
    assert (layers["CoreLayer"] / "python/dicomweb_core/__init__.py").is_file()
    build_dir = tmp_path / "build"

    # When sam build runs the makefiles into a temporary build dir
    result = _run(
        _tool("sam"),
        "build",
        "--template",
        str(TEMPLATE_PATH),
        "--build-dir",
        str(build_dir),
        "--cache-dir",
        str(tmp_path / "cache"),
        timeout=300,
    )

    # Then it succeeds
    assert result.returncode == 0, result.stdout + result.stderr
    assert (build_dir / "template.yaml").is_file()
    # And each function's artifact holds its handler module
    for name, spec in functions.items():
        module = spec.handler.rsplit(".", 1)[0].replace(".", "/") + ".py"
        assert (build_dir / name / module).is_file(), f"{name}: {module} not built"
    # And each layer holds dicomweb_core and its dependencies, built for Lambda's python3.12 x86_64
    for name in layers:
        python = build_dir / name / "python"
        for package in LAYER_CONTENTS[name]:
            assert (python / package).exists(), f"{name}: python/{package} not built"
        extensions = [p.name for p in python.rglob("*.so") if ".cpython-" in p.name]
        wrong = [so for so in extensions if not so.endswith(LAMBDA_EXTENSION_SUFFIX)]
        assert not wrong, f"{name}: extension modules not built for the Lambda runtime: {wrong}"
    # And no layer ships botocore (the runtime's is used), nor a second numpy or pydicom
    assert not any((build_dir / layer / "python/botocore").exists() for layer in layers)
    assert not (build_dir / "InferenceLayer/python/numpy").exists()
    assert not (build_dir / "InferenceLayer/python/pydicom").exists()
    # And every function with its layers fits Lambda's 250 MB unzipped limit
    for name, spec in functions.items():
        parts = [build_dir / name, *(build_dir / layer for layer in spec.layers)]
        size = sum(f.stat().st_size for part in parts for f in part.rglob("*") if f.is_file())
        assert size < LAMBDA_UNZIPPED_LIMIT - LAMBDA_SIZE_MARGIN, (
            f"{name}: {size / 1e6:.0f} MB with its layers"
        )


# ---------------------------------------------------------------- API auth and CORS


@pytest.mark.parametrize("route", TEMPLATE.routes(), ids=lambda r: r.route_key)
def test_every_route_has_an_authorizer_and_a_scope(route: Route) -> None:
    # Given a route of the HTTP API and the authorizers and OAuth scopes the template defines
    authorizers = TEMPLATE.http_api().get("Auth", {}).get("Authorizers", {})
    defined_scopes = {
        f"{server['Properties']['Identifier']}/{scope['ScopeName']}"
        for server in TEMPLATE.resources_of_type("AWS::Cognito::UserPoolResourceServer").values()
        for scope in server["Properties"].get("Scopes", [])
    }

    # When its authorization is read
    authorizer, scopes = route.authorizer, set(route.scopes)

    # Then it names a JWT authorizer of the API and at least one defined scope
    assert authorizer in authorizers, f"{route.route_key}: no authorizer"
    assert "JwtConfiguration" in authorizers[authorizer]
    assert scopes, f"{route.route_key}: no authorization scope"
    assert scopes <= defined_scopes, f"{route.route_key}: undefined scopes {scopes - defined_scopes}"


def test_the_api_has_routes() -> None:
    # Given / When the routes are read
    routes = TEMPLATE.routes()

    # Then there is at least one, and no method and path is declared twice
    assert routes
    assert len({r.route_key for r in routes}) == len(routes)


def test_cors_exposes_dicomweb_headers_and_allows_auth_headers() -> None:
    # Given the HTTP API's CORS configuration
    cors = TEMPLATE.http_api()["CorsConfiguration"]

    # When its header lists are read (header names are case-insensitive)
    exposed = {h.lower() for h in cors.get("ExposeHeaders", [])}
    allowed = {h.lower() for h in cors.get("AllowHeaders", [])}

    # Then the headers DICOMweb clients read are exposed and the request headers they send allowed
    assert {"warning", "etag", "content-location", "location"} <= exposed
    assert {"authorization", "accept", "content-type"} <= allowed
    # And the default origins are not a wildcard (requests carry bearer tokens)
    origins = cors["AllowOrigins"]
    if isinstance(origins, Mapping) and "Ref" in origins:
        origins = str(TEMPLATE.parameter_default(origins["Ref"])).split(",")
    assert "*" not in [o.strip() for o in _as_list(origins)]


# ---------------------------------------------------------------- data at rest


def _buckets() -> dict[str, Mapping[str, Any]]:
    return TEMPLATE.resources_of_type("AWS::S3::Bucket")


def _policy_statements_for(bucket: str) -> Iterator[Mapping[str, Any]]:
    for policy in TEMPLATE.resources_of_type("AWS::S3::BucketPolicy").values():
        props = policy["Properties"]
        if props["Bucket"] == {"Ref": bucket}:
            yield from _as_list(props["PolicyDocument"]["Statement"])


def _branches(value: Any) -> list[Any]:
    """Every value an ``Fn::If`` can take (the value itself when it is not one)."""
    if isinstance(value, Mapping) and "Fn::If" in value:
        _condition, when_true, when_false = value["Fn::If"]
        return [*_branches(when_true), *_branches(when_false)]
    return [value]


@pytest.mark.parametrize("name", sorted(_buckets()))
def test_bucket_is_versioned_encrypted_private_and_tls_only(name: str) -> None:
    # Given a bucket of the template
    props = _buckets()[name]["Properties"]

    # When its protection settings and bucket policy are read
    encryption = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    public_block = props["PublicAccessBlockConfiguration"]
    statements = list(_policy_statements_for(name))

    # Then it keeps versions, encrypts by default and blocks every kind of public access
    assert props["VersioningConfiguration"]["Status"] == "Enabled"
    assert encryption
    defaults = [d for rule in encryption for d in _branches(rule["ServerSideEncryptionByDefault"])]
    assert {d["SSEAlgorithm"] for d in defaults} == {"AES256", "aws:kms"}  # EncryptionKey's two choices
    assert all(d.get("KMSMasterKeyID") for d in defaults if d["SSEAlgorithm"] == "aws:kms")
    for flag in ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"):
        assert public_block.get(flag) is True, f"{name}: {flag} is not true"
    # And its policy denies any request made without TLS, on the bucket and its objects
    tls_denials = [
        s
        for s in statements
        if s["Effect"] == "Deny"
        and str(s.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport")).lower() == "false"
    ]
    assert tls_denials, f"{name}: no policy statement denies aws:SecureTransport=false"
    denial = tls_denials[0]
    assert denial["Principal"] == "*"
    assert "s3:*" in _as_list(denial["Action"])
    assert len(_as_list(denial["Resource"])) >= 2, "deny must cover the bucket and its objects"


@pytest.mark.parametrize("name", sorted(TEMPLATE.resources_of_type("AWS::DynamoDB::Table")))
def test_table_is_on_demand_with_pitr_and_encryption(name: str) -> None:
    # Given a DynamoDB table of the template
    props = TEMPLATE.resources_of_type("AWS::DynamoDB::Table")[name]["Properties"]

    # When its billing and protection settings are read
    billing = props.get("BillingMode")
    pitr = props.get("PointInTimeRecoverySpecification", {})
    sse = props.get("SSESpecification", {})

    # Then it is on demand, point-in-time recoverable and encrypted
    assert billing == "PAY_PER_REQUEST"
    assert pitr.get("PointInTimeRecoveryEnabled") is True
    assert sse.get("SSEEnabled") is True


# ---------------------------------------------------------------- least privilege


def _is_write(action: str) -> bool:
    verb = action.split(":", 1)[-1]
    return "*" in verb or not verb.startswith(READ_ONLY_VERBS)


@pytest.mark.parametrize("name", sorted(TEMPLATE.functions()))
def test_function_policies_scope_write_actions_to_resources(name: str) -> None:
    # Given a function's IAM policies
    props = TEMPLATE.resources[name]["Properties"]
    policies = _as_list(props.get("Policies", []))

    # When every inline statement is inspected
    statements = []
    for policy in policies:
        assert isinstance(policy, Mapping), f"{name}: managed policy {policy!r} is not resource-scoped"
        if "Statement" in policy:
            statements.extend(_as_list(policy["Statement"]))
        else:  # a SAM policy template, e.g. {DynamoDBCrudPolicy: {TableName: ...}}
            assert all(params for params in policy.values()), f"{name}: unscoped policy template {policy}"

    # Then no statement allows a write action on every resource
    for statement in statements:
        if statement.get("Effect") != "Allow":
            continue
        resources = _as_list(statement.get("Resource", "*"))
        writes = [a for a in _as_list(statement.get("Action", [])) if _is_write(a)]
        if "NotAction" in statement:  # allows everything but the listed actions
            writes.append(f"NotAction {statement['NotAction']}")
        assert resources, f"{name}: statement without resources: {statement}"
        assert not (writes and "*" in resources), f"{name}: {writes} allowed on Resource '*'"


def _statements(function: str) -> list[Mapping[str, Any]]:
    """Every IAM statement a function gets: inline ones and the stack's managed policies it references."""
    found: list[Mapping[str, Any]] = []
    for policy in _as_list(TEMPLATE.resources[function]["Properties"].get("Policies", [])):
        for branch in _branches(policy):
            if isinstance(branch, Mapping) and "Ref" in branch:
                referenced = TEMPLATE.resources.get(branch["Ref"])
                if referenced is not None and referenced["Type"] == "AWS::IAM::ManagedPolicy":
                    found.extend(_as_list(referenced["Properties"]["PolicyDocument"]["Statement"]))
            elif isinstance(branch, Mapping) and "Statement" in branch:
                found.extend(s for item in _as_list(branch["Statement"]) for s in _branches(item))
    return [s for s in found if isinstance(s, Mapping) and s.get("Effect") == "Allow"]


def _actions(function: str, service: str) -> set[str]:
    return {
        action
        for statement in _statements(function)
        for action in _as_list(statement.get("Action", []))
        if action.startswith(f"{service}:")
    }


def test_the_query_function_cannot_read_objects() -> None:
    assert _actions("QidoFunction", "s3") == set()
    assert "dynamodb:Query" in _actions("QidoFunction", "dynamodb")  # the statements were read


def test_the_retrieve_function_cannot_write_or_delete_anything_but_audit_records() -> None:
    writes = {
        a
        for service in ("s3", "dynamodb", "sqs", "events")
        for a in _actions("WadoFunction", service)
        if _is_write(a)
    }
    # It only orders the bodies of large retrievals, on the bundle queue (wado/redirects.py)
    assert writes == {"sqs:SendMessage"}
    (ordering,) = [s for s in _statements("WadoFunction") if "sqs:SendMessage" in _as_list(s["Action"])]
    assert ordering["Resource"] == {"Fn::GetAtt": ["BundleQueue", "Arn"]}
    assert "s3:GetObject" in _actions("WadoFunction", "s3")  # the statements were read
    assert {a for a in _actions("WadoFunction", "logs") if _is_write(a)} == {
        "logs:CreateLogStream",
        "logs:PutLogEvents",
    }


def test_only_the_de_identification_function_writes_to_the_research_store() -> None:
    research = ("DeidBucket", "DeidTable")
    for function in TEMPLATE.functions():
        for statement in _statements(function):
            actions = _as_list(statement.get("Action", []))
            if not any(_is_write(a) for a in actions):
                continue
            text = json.dumps(statement.get("Resource"))
            if function == "AggregatesFunction" and any(a.startswith("dynamodb:") for a in actions):
                # recounts in both index tables: it may update items, never put or delete one
                assert set(actions) <= {
                    "dynamodb:Query",
                    "dynamodb:GetItem",
                    "dynamodb:UpdateItem",
                    "sqs:SendMessage",
                }
                assert "DeidBucket" not in text
                continue
            if any(name in text for name in research):
                assert function == "DeidentifyFunction", f"{function} may write to the research store"


def test_the_audit_policy_only_appends_to_the_audit_group() -> None:
    (statement,) = TEMPLATE.resources["AuditWritePolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Action"] == ["logs:CreateLogStream", "logs:PutLogEvents"]
    assert "AuditLogGroup.Arn" in json.dumps(statement["Resource"])


# ---------------------------------------------------------------- observability
TRACER_CAPTURE_SETTINGS = ("POWERTOOLS_TRACER_CAPTURE_RESPONSE", "POWERTOOLS_TRACER_CAPTURE_ERROR")
JSON_FILTER_TERM = re.compile(r'\$\.(?P<path>[A-Za-z_][\w.]*)\s*(?P<op>!?=)\s*"(?P<value>[^"]*)"')


@pytest.mark.parametrize("name", sorted(TEMPLATE.functions()))
def test_no_function_captures_responses_or_errors_into_traces(name: str) -> None:
    # Given a function's environment (Globals merged with its own)
    environment = TEMPLATE.functions()[name].environment

    # Then Powertools' Tracer puts neither its responses nor its errors (PHI) in X-Ray
    assert {setting: environment.get(setting) for setting in TRACER_CAPTURE_SETTINGS} == dict.fromkeys(
        TRACER_CAPTURE_SETTINGS, "false"
    )


def _filter_matches(pattern: str, line: str) -> bool:
    """CloudWatch Logs JSON filter pattern semantics for ``{ $.a = "x" && $.b != "y" }``
    (``*`` a wildcard); any other syntax fails the test rather than being ignored."""
    body = pattern.strip()
    assert body.startswith("{") and body.endswith("}"), f"not a JSON filter pattern: {pattern}"
    record = json.loads(line)
    for term in body[1:-1].split("&&"):
        found = JSON_FILTER_TERM.fullmatch(term.strip())
        assert found is not None, f"unsupported filter term {term!r} in {pattern}"
        value: Any = record
        for key in found["path"].split("."):
            value = value.get(key) if isinstance(value, Mapping) else None
        expected = ".*".join(re.escape(part) for part in found["value"].split("*"))
        equal = isinstance(value, str) and re.fullmatch(expected, value) is not None
        if equal is (found["op"] == "!="):
            return False
    return True


def _function_log_lines(monkeypatch: pytest.MonkeyPatch, write: Callable[[], object]) -> list[str]:
    """The JSON lines the functions' Powertools logger writes while ``write`` runs."""
    buffer = io.StringIO()
    monkeypatch.setattr(logger.registered_handler, "stream", buffer)
    write()
    return buffer.getvalue().splitlines()


def test_lost_audit_records_are_counted_in_every_auditing_function_and_alarmed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given the line a function logs when its audit record cannot be written
    class Broken:
        def write(self, message: Any) -> None:
            raise OSError("audit group unreachable")

    monkeypatch.setattr(audit.sinks, "sink", Broken)
    (lost,) = _function_log_lines(
        monkeypatch,
        lambda: audit.emit(
            audit.record(audit.AuditEvent.QUERY, action="E", outcome=0, requestor=audit.SYSTEM)
        ),
    )
    # And other error and audit lines from the same functions
    others = _function_log_lines(
        monkeypatch,
        lambda: (
            logger.error("audit record could not be built in full"),
            logger.info(audit.AUDIT_WRITE_FAILED),
            logger.error("unexpected error"),
        ),
    )
    assert len(others) == 3

    # When the template's metric filters are read
    alarm = TEMPLATE.resources["AuditWriteFailureAlarm"]["Properties"]
    counted: set[str] = set()
    for name, metric_filter in TEMPLATE.resources_of_type("AWS::Logs::MetricFilter").items():
        props = metric_filter["Properties"]
        (transformation,) = props["MetricTransformations"]
        if (transformation["MetricNamespace"], transformation["MetricName"]) != (
            alarm["Namespace"],
            alarm["MetricName"],
        ):
            continue
        # Then each matches exactly that line, and counts it once
        assert _filter_matches(props["FilterPattern"], lost), name
        assert not any(_filter_matches(props["FilterPattern"], line) for line in others), name
        assert transformation["MetricValue"] == "1"
        counted.add(props["LogGroupName"]["Ref"])

    # And every function that writes audit records has its log group counted
    auditing = {
        props["LoggingConfig"]["LogGroup"]["Ref"]
        for props in (TEMPLATE.resources[name]["Properties"] for name in TEMPLATE.functions())
        if {"Ref": "AuditWritePolicy"} in props.get("Policies", [])
    }
    assert auditing and auditing <= counted, auditing - counted
    # And the first lost record raises the alarm
    assert (alarm["Statistic"], alarm["Threshold"], alarm["ComparisonOperator"]) == (
        "Sum",
        0,
        "GreaterThanThreshold",
    )
    assert alarm["AlarmActions"] == [{"Ref": "AlarmTopic"}]


def test_hooks_are_bounded_and_dead_lettered_with_alarms() -> None:
    for source in TEMPLATE.queue_sources():
        props = TEMPLATE.resources[source.function]["Properties"]
        (event,) = [e for e in props["Events"].values() if e["Type"] == "SQS"]
        assert event["Properties"]["ScalingConfig"]["MaximumConcurrency"] == {"Ref": "HookMaximumConcurrency"}
        queue = event["Properties"]["Queue"]["Fn::GetAtt"][0]
        dlq = TEMPLATE.resources[queue]["Properties"]["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0]
        alarms = [
            a
            for a in TEMPLATE.resources_of_type("AWS::CloudWatch::Alarm").values()
            if dlq in json.dumps(a["Properties"].get("Dimensions", []))
        ]
        assert alarms, f"{queue}: its dead-letter queue {dlq} has no alarm"
        assert alarms[0]["Properties"]["AlarmActions"] == [{"Ref": "AlarmTopic"}]
    assert "5xx" in json.dumps(TEMPLATE.resources["Api5xxAlarm"]["Properties"]["Metrics"])


def test_user_pool_mfa_and_threat_protection_are_parameters() -> None:
    pool = TEMPLATE.resources["UserPool"]["Properties"]
    assert pool["MfaConfiguration"] == {"Ref": "MfaConfiguration"}
    assert set(TEMPLATE.parameters["MfaConfiguration"]["AllowedValues"]) == {"OFF", "OPTIONAL", "ON"}
    assert pool["UserPoolAddOns"]["Fn::If"][0] == "IsPlusTier"
    assert pool["LambdaConfig"]["PreTokenGenerationConfig"]["LambdaVersion"] == "V2_0"
    assert pool["Policies"]["PasswordPolicy"]["MinimumLength"] >= 12


def test_uploads_reach_the_ingest_queue_and_nothing_abandoned_stays() -> None:
    # Given the bucket that upload sessions write into
    bucket = TEMPLATE.resources["InstanceBucket"]["Properties"]
    (notification,) = bucket["NotificationConfiguration"]["QueueConfigurations"]
    rules = {rule["Id"]: rule for rule in bucket["LifecycleConfiguration"]["Rules"]}

    # Then every object created under the session prefix goes to the ingest queue,
    assert notification["Event"] == "s3:ObjectCreated:*"
    assert notification["Filter"]["S3Key"]["Rules"] == [{"Name": "prefix", "Value": INGEST_PREFIX}]
    assert notification["Queue"] == {"Fn::GetAtt": ["IngestQueue", "Arn"]}
    # uploads and quarantined objects expire, and incomplete multipart uploads are aborted
    assert rules["ExpireAbandonedUploads"]["Prefix"] == INGEST_PREFIX
    assert rules["ExpireQuarantine"]["Prefix"] == QUARANTINE_PREFIX
    assert rules["AbortIncompleteUploads"]["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] == 1
    # and the ingest function reads the queue that has a dead-letter queue
    events = TEMPLATE.resources["IngestFunction"]["Properties"]["Events"]
    assert events["Queue"]["Properties"]["Queue"] == {"Fn::GetAtt": ["IngestQueue", "Arn"]}
    assert "RedrivePolicy" in TEMPLATE.resources["IngestQueue"]["Properties"]
