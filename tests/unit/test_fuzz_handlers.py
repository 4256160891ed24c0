"""Handler-level fuzzing (issue 5): the real STOW, QIDO and WADO Lambda handlers in moto.

Generated requests — hostile paths, query strings, headers and bodies — go to the
handlers as API Gateway payload v2 events (as in tests/integration/test_stow_handler.py),
against the template's resources provisioned in moto and a few stored instances. Every
answer must hold, whatever the request:

- no 5xx: a request the server cannot serve is the client's error (4xx), never a crash;
- no header injection: no response header value carries CR, LF or NUL, and only the
  headers the handlers set appear (no name made up from input);
- no path escape: every S3 key the handlers read or write is
  ``studies/<uid>/series/<uid>/instances/<uid>.{dcm,json}`` or the series metadata cache
  ``cache/metadata/<uid>/<uid>/...``, with valid UIDs (checked on every S3 call);
- bounded time: each request has a deadline.

Parser-level properties are in test_fuzz_parsers.py, one test per malicious input class
in test_malicious_inputs.py (which reuses :func:`deployed` from here).
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl, quote

import pytest
from botocore.client import BaseClient
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from moto import mock_aws

from dicomweb_core import audit, config, observability
from dicomweb_core.index.table import use_by_default
from infra.datasets.generate import make_dataset, to_part10
from infra.local.moto_atomic import serialise_dynamodb
from infra.local.provision import provision
from infra.samtemplate import load_template
from tests.lambda_harness import LambdaContext, load_handler, route_for
from tests.unit.test_fuzz_parsers import (
    BASES,
    FRAMING,
    STOW_TYPES,
    UID_RE,
    dicomweb_paths,
    header_values,
    hostile_text,
    mutated_part10,
    query_strings,
    valid_uids,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

DOMAIN = "dicom.example.test"
FUNCTIONS = ("StowFunction", "QidoFunction", "WadoFunction")
ALL_SCOPES = ("dicomweb/read", "dicomweb/write", "dicomweb/deid.read")
# Every header the handlers set; anything else would be a name built from input.
ALLOWED_HEADERS = frozenset(
    {
        "content-type",
        "warning",
        "cache-control",
        "etag",
        "content-encoding",
        "vary",
        "location",
        "retry-after",
    }
)
S3_KEY_RE = re.compile(
    rf"studies/{UID_RE}/series/{UID_RE}/instances/{UID_RE}/[0-9a-f]{{24}}\.(?:dcm|json)"
    rf"|cache/metadata/{UID_RE}/{UID_RE}/[0-9A-Za-z._-]+\.json\.gz"
)
BAD_HEADER_CHARS = re.compile(r"[\r\n\0]")
# The instances every deployment stores first (fixed UIDs: derandomized runs repeat exactly).
STUDY = "1.2.826.0.1.3680043.8.498.900001"
SERIES = "1.2.826.0.1.3680043.8.498.900002"
SOPS = ("1.2.826.0.1.3680043.8.498.900003", "1.2.826.0.1.3680043.8.498.900004")
DESCRIPTIONS = ("a" * 60, "CT CHEST ABDOMEN PELVIS WITH CONTRAST")

# Handlers run moto: fewer examples than the parsers, a deadline per request.
HANDLER = settings(
    max_examples=40,
    deadline=timedelta(seconds=3),
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass
class Answer:
    status: int
    headers: dict[str, list[str]]  # lower-cased names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class S3Watch:
    """Every S3 object key the handlers pass to an S3 API call, in order."""

    keys: list[tuple[str, str]] = field(default_factory=list)

    def install(self, patch: pytest.MonkeyPatch) -> None:
        original = BaseClient._make_api_call
        keys = self.keys

        def watched(client: Any, operation: str, params: Mapping[str, Any]) -> Any:
            if client.meta.service_model.service_name == "s3" and "Key" in params:
                keys.append((operation, str(params["Key"])))
            return original(client, operation, params)

        patch.setattr(BaseClient, "_make_api_call", watched)


@dataclass
class Deployment:
    handlers: dict[str, ModuleType]
    watch: S3Watch
    bucket: str
    table: str
    stored: list[tuple[str, str, str]] = field(default_factory=list)  # (study, series, sop)

    def call(
        self,
        method: str,
        raw_path: str,
        *,
        query: str = "",
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        function: str | None = None,
    ) -> Answer:
        """Invoke the function that serves ``method raw_path`` and check the answer's invariants."""
        request, routed = payload_v2_event(method, raw_path, query=query, headers=headers, body=body)
        name = function or routed
        module = self.handlers[name]
        before = len(self.watch.keys)
        response = module.handler(request, LambdaContext(name))
        observability.metrics.clear_metrics()  # metrics are disabled in tests; they would pile up
        answer = _answer(response)
        assert_safe(answer, f"{method} {raw_path!r} ?{query!r} {dict(headers or {})!r}")
        for operation, key in self.watch.keys[before:]:
            assert S3_KEY_RE.fullmatch(key), f"{operation} on S3 key {key!r} for {raw_path!r}"
        with contextlib.suppress(InvalidArgument):  # outside @given (fixture setup) there are no events
            event(f"{name}: {answer.status}")  # --hypothesis-show-statistics shows what was reached
        return answer

    def stow(self, body: bytes, content_type: str = "application/dicom", path: str = "/studies") -> Answer:
        return self.call("POST", path, headers={"content-type": content_type}, body=body)


def payload_v2_event(
    method: str,
    raw_path: str,
    *,
    query: str = "",
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
    scopes: tuple[str, ...] = ALL_SCOPES,
) -> tuple[dict[str, Any], str]:
    """The event API Gateway sends for the request, and the function its route invokes.

    A path no template route matches would get API Gateway's own 404; it is still sent to
    the function a similar route would reach, to test the handler's own checks.
    """
    try:
        route = route_for(method, raw_path)
        route_key, function = route.route_key, route.function
        match = route.pattern.match(raw_path)
        parameters = match.groupdict() if match else {}
    except LookupError:
        route_key, parameters = f"{method} /{{proxy+}}", {}
        collection = raw_path.rstrip("/").rsplit("/", 1)[-1] in {"studies", "series", "instances"}
        function = "StowFunction" if method == "POST" else "QidoFunction" if collection else "WadoFunction"
    lowered = {k.lower(): v for k, v in (headers or {}).items()}
    lowered.setdefault("host", DOMAIN)
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": raw_path,
        "rawQueryString": query,
        "headers": lowered,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "fuzz",
            "domainName": DOMAIN,
            "domainPrefix": "dicom",
            "http": {
                "method": method,
                "path": raw_path,
                "protocol": "HTTP/1.1",
                "sourceIp": "192.0.2.10",
                "userAgent": "fuzz",
            },
            "requestId": "fuzz-request",
            "routeKey": route_key,
            "stage": "$default",
            "time": "23/Nov/2026:00:00:00 +0000",
            "timeEpoch": 1795392000000,
            "authorizer": {
                "jwt": {
                    "claims": {"scope": " ".join(scopes), "sub": "fuzz", "client_id": "fuzz"},
                    "scopes": list(scopes),
                }
            },
        },
        "isBase64Encoded": bool(body),
    }
    values: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        values[name] = f"{values[name]},{value}" if name in values else value
    if values:
        event["queryStringParameters"] = values
    if parameters:
        event["pathParameters"] = parameters
    if body:
        event["body"] = base64.b64encode(body).decode()
    return event, function


def _answer(response: Mapping[str, Any]) -> Answer:
    headers: dict[str, list[str]] = {}
    for name, value in (response.get("headers") or {}).items():
        headers.setdefault(name.lower(), []).extend(value if isinstance(value, list) else [str(value)])
    for name, values in (response.get("multiValueHeaders") or {}).items():
        headers.setdefault(name.lower(), []).extend(str(v) for v in values)
    assert not response.get("cookies"), response.get("cookies")
    raw = response.get("body") or ""
    body = base64.b64decode(raw) if response.get("isBase64Encoded") else str(raw).encode("utf-8")
    return Answer(int(response["statusCode"]), headers, body)


def assert_safe(answer: Answer, request: str) -> None:
    """No 5xx, no header beyond the known ones, no CR/LF/NUL in any header value."""
    assert answer.status < 500, f"{answer.status} for {request}: {answer.body[:300]!r}"
    unexpected = set(answer.headers) - ALLOWED_HEADERS
    assert not unexpected, f"unexpected headers {unexpected} for {request}"
    for name, values in answer.headers.items():
        for value in values:
            assert not BAD_HEADER_CHARS.search(value), f"{name}: {value!r} for {request}"
    content_type = ",".join(answer.headers.get("content-type", []))
    if answer.status >= 400 and "json" in content_type:
        message = str(answer.json().get("message", ""))
        assert not BAD_HEADER_CHARS.search(message), f"{message!r} for {request}"


@contextmanager
def deployed() -> Iterator[Deployment]:
    """The template's resources in moto, the three API handlers loaded on them, a few instances
    stored through STOW, and every S3 key they use watched."""
    serialise_dynamodb()
    with mock_aws(), pytest.MonkeyPatch.context() as patch:
        deployment = _deploy(patch)
        yield deployment
        config.settings.cache_clear()
        audit.sink.cache_clear()


def _deploy(patch: pytest.MonkeyPatch) -> Deployment:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom and moto warnings while setting up
        template = load_template()
        stack = provision(template, endpoint_url=None, region="us-east-1", overrides={})
        for function in FUNCTIONS:
            for name, value in stack.function_environment(template.functions()[function]).items():
                patch.setenv(name, value)
        patch.delenv("AUDIT_LOG_GROUP", raising=False)  # audit records go to the function log
        audit.sink.cache_clear()
        use_by_default(stack.physical_ids["IndexTable"])
        config.settings.cache_clear()
        handlers = {function: load_handler(function) for function in FUNCTIONS}
        watch = S3Watch()
        watch.install(patch)
        deployment = Deployment(
            handlers, watch, stack.physical_ids["InstanceBucket"], stack.physical_ids["IndexTable"]
        )
        for number, (sop, description) in enumerate(zip(SOPS, DESCRIPTIONS, strict=True), 1):
            ds = make_dataset(
                study=STUDY,
                series=SERIES,
                sop=sop,
                PatientName="Aaaaaaaaaa^Aaaaaaaaaaaaaaa",
                StudyDescription=description,
                InstanceNumber=number,
            )
            answer = deployment.stow(to_part10(ds))
            assert answer.status == 200, answer.body
            deployment.stored.append((STUDY, SERIES, sop))
        # Warm every code path once, so the deadlines measure requests, not cold starts.
        study, series, sop = deployment.stored[0]
        deployment.call("GET", "/studies", query="PatientName=A*")
        deployment.call("GET", f"/studies/{study}/series/{series}/instances/{sop}/metadata")
        deployment.call("GET", f"/studies/{study}/series/{series}/instances/{sop}/frames/1")
    return deployment


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    with deployed() as built:
        yield built


# ---------------------------------------------------------------------- strategies
QIDO_ROUTES = [r.path for r in load_template().routes() if r.function == "QidoFunction"]
WADO_ROUTES = [r.path for r in load_template().routes() if r.function == "WadoFunction"]
STOW_ROUTES = [r.path for r in load_template().routes() if r.function == "StowFunction"]


@st.composite
def route_paths(draw: st.DrawFn, routes: list[str], deployment_uids: bool = True) -> str:
    """A template route with its parameters filled: stored UIDs, valid ones or hostile text."""
    route = draw(st.sampled_from(routes))
    stored = draw(st.sampled_from(STORED_SHAPES))

    def fill(found: re.Match[str]) -> str:
        name = found.group(1)
        if deployment_uids and name in stored and draw(st.integers(0, 9)) < 7:
            return stored[name]  # mostly the stored instance, so requests reach S3 and the codecs
        extra = st.sampled_from(["1", "2", "1,2", "0", "7FE00010", "00081140.0.00091010", "7FE00010.0"])
        value = draw(st.one_of(valid_uids, hostile_text, extra))
        return quote(value, safe=draw(st.sampled_from(["", ".,", "%"]))) if draw(st.booleans()) else value

    return re.sub(r"\{(\w+)\}", fill, route)


STORED_SHAPES = [
    {"study": STUDY, "series": SERIES, "instance": sop, "frames": "1", "path": "7FE00010"} for sop in SOPS
]

accept_values = st.one_of(
    st.sampled_from(
        [
            "application/dicom+json",
            "multipart/related; type=application/dicom; transfer-syntax=*",
            'multipart/related; type="application/octet-stream"; transfer-syntax=*',
            "multipart/related; type=application/dicom+xml",
            "application/dicom; transfer-syntax=1.2.840.10008.1.2",
            "image/png, application/dicom",
            "*/*;q=0",
            "application/json\r\nSet-Cookie: session=1",
            "application/dicom+json\r\nX-Injected: 1",
            "text/html\n\nbody",
        ]
    ),
    header_values,
)
request_headers = st.fixed_dictionaries(
    {},
    optional={
        "accept": accept_values,
        "if-none-match": st.one_of(st.sampled_from(['"x"', "*", 'W/"x"\r\nX-Injected: 1']), hostile_text),
        "accept-encoding": st.sampled_from(["gzip", "identity", "gzip\r\nX: 1"]),
    },
)


# ---------------------------------------------------------------------- QIDO
PLAUSIBLE_TERMS = [
    "PatientName=A*",
    "PatientName=aaaaaaaaaa",
    "PatientName=*a?a*",
    "StudyDescription=*a*",
    "StudyDescription=CT*",
    "StudyDate=20240102",
    "StudyDate=20240101-20240131",
    "StudyTime=1000-1100",
    "ModalitiesInStudy=CT",
    "Modality=CT,MR",
    "PatientID=PID-1",
    "AccessionNumber=ACC*",
    f"StudyInstanceUID={STUDY}",
    f"SeriesInstanceUID={SERIES}",
    f"SOPInstanceUID={SOPS[0]}",
    "InstanceNumber=1",
    "SeriesNumber=1",
    "limit=1",
    "offset=1",
    "includefield=all",
    "includefield=00081030,PatientAge",
    "fuzzymatching=true",
]
plausible_queries = st.lists(st.sampled_from(PLAUSIBLE_TERMS), max_size=4, unique=True).map("&".join)


@HANDLER
@given(route_paths(QIDO_ROUTES), st.one_of(plausible_queries, query_strings()), request_headers)
@example("/studies", "PatientName=%0D%0ASet-Cookie:%20a%3Db", {"accept": "application/dicom+json\r\nX: 1"})
@example("/studies", "limit=%C2%B2", {})
@example("/studies", "StudyDescription=" + "*a" * 30 + "b", {})
@example("/studies", "PatientName=" + "*a" * 30 + "b", {})
@example("/studies", "limit=5000", {})
@example("/studies/..%2F..%2Fetc/series", "", {})
def test_qido_never_answers_5xx_or_injects_headers(
    deployment: Deployment, path: str, query: str, headers: dict[str, str]
) -> None:
    deployment.call("GET", path, query=query, headers=headers)


# ---------------------------------------------------------------------- WADO
@HANDLER
@given(route_paths(WADO_ROUTES), request_headers, st.sampled_from(["", "accept=application/dicom%0D%0AX:1"]))
@example("/studies/%2e%2e/series/%2e%2e/instances/%2e%2e", {}, "")
@example("/studies/1.2.3%00/metadata", {}, "")
@example("/deid/studies/../../studies", {}, "")
def test_wado_never_answers_5xx_escapes_its_keys_or_injects_headers(
    deployment: Deployment, path: str, headers: dict[str, str], query: str
) -> None:
    deployment.call("GET", path, headers=headers, query=query)


BULK_PIECES = ["7FE00010", "7fe00010", "00081140", "00091010", "0", "1", "-1", "+1", "9" * 20, "-0000001"]


@HANDLER
@given(st.lists(st.one_of(st.sampled_from(BULK_PIECES), hostile_text), min_size=1, max_size=5).map(".".join))
@example("..%2F..%2Fetc%2Fpasswd")
@example("-0000001")
@example("00081140.-1.00091010")
def test_bulkdata_element_paths_answer_a_value_or_404(deployment: Deployment, element_path: str) -> None:
    # Given the stored instance and any bulk data element path (tags and item numbers)
    study, series, sop = deployment.stored[0]
    path = f"/studies/{study}/series/{series}/instances/{sop}/bulkdata/{element_path}"
    # When it is retrieved / Then the value, or a 4xx (and only the instance's own key is read)
    deployment.call("GET", path)


# ---------------------------------------------------------------------- STOW
@st.composite
def stow_bodies(draw: st.DrawFn) -> tuple[str, bytes]:
    """A Content-Type and body: framing junk, Part 10 payloads (mutated or not), or both."""
    content_type = draw(st.one_of(st.sampled_from(STOW_TYPES), header_values))
    payload = draw(mutated_part10())
    kind = draw(st.sampled_from(["intact", "single", "multipart", "junk"]))
    if kind == "intact":  # a valid instance: the write path (S3 keys, index) is exercised too
        return "application/dicom", draw(st.sampled_from(BASES))
    if kind == "single":
        return "application/dicom", payload
    if kind == "multipart":
        part_type = draw(st.sampled_from(["application/dicom", "application/dicom+json", ""]))
        head = f"Content-Type: {part_type}\r\n".encode() if part_type else b""
        body = b"--B\r\n" + head + b"\r\n" + payload + b"\r\n--B--\r\n"
        return 'multipart/related; type="application/dicom"; boundary=B', body
    pieces = st.lists(st.one_of(st.sampled_from(FRAMING), st.binary(max_size=16)), max_size=30)
    return content_type, draw(pieces.map(b"".join))


@settings(HANDLER, max_examples=50)
@given(st.one_of(st.just("/studies"), route_paths(STOW_ROUTES, deployment_uids=False)), stow_bodies())
def test_stow_never_answers_5xx_or_stores_outside_valid_keys(
    deployment: Deployment, path: str, request: tuple[str, bytes]
) -> None:
    content_type, body = request
    answer = deployment.stow(body, content_type, path)
    # Then refusals are 4xx; a Store Instances Response is 200, 202 or 409 (PS3.18 §10.5.3)
    assert answer.status in (200, 202, 409) or 400 <= answer.status < 500


# ---------------------------------------------------------------------- any path, any method
@settings(HANDLER, max_examples=60)
@given(
    st.sampled_from(["GET", "POST"]),
    st.one_of(dicomweb_paths(), st.text(max_size=80).map(lambda p: "/" + p)),
    st.sampled_from(["", "/deid"]),
)
@example("GET", "/studies/1.2.3/series/1.2.4/instances/1.2.5/bulkdata/..%2F..%2Fetc%2Fpasswd", "")
@example("POST", "/studies/%2e%2e", "")
@example("POST", "/studies/1.2.3%00", "")
@example("GET", "/studies/1.2.3\r\nX-Injected: 1/metadata", "")
@example("GET", '/studies/1.2"3', "")  # API Gateway routes it to WADO; Powertools matches no route
@example("GET", "/studies/1.2.3/series/\u20ac", "")
def test_any_raw_path_is_answered_without_5xx(
    deployment: Deployment, method: str, path: str, root: str
) -> None:
    # Given any raw path, sent to the function API Gateway (or a similar route) would invoke
    raw_path = root + path
    answer = deployment.call(
        method,
        raw_path,
        headers={"content-type": "application/dicom"},
        body=b"" if method == "GET" else b"not dicom",
    )
    # Then it is answered like any request: a 4xx unless it names a real resource
    assert answer.status < 500
