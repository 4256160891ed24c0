"""The local runtime's HTTP edge: the object proxy's link checks, keep-alive, AUTH=off.

The object proxy stands in for CloudFront's bucket behaviors and S3's presigned-URL
check (SigV4 query authentication). moto verifies no signature, so the proxy must: a
link is served only when it carries the signature the runtime's own key gives for that
bucket, key and query, within its lifetime, and a path that could name another object
(dot segments, encoded separators) is refused before anything is fetched. The gateway
and the proxy run in this process on a real socket, against a moto server.
"""

from __future__ import annotations

import http.client
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import boto3
import pytest
import requests
from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from moto.server import ThreadedMotoServer

from dicomweb_core.storage import ObjectReader
from infra.local.gateway import CorsPolicy, Gateway, LinkSigningKey, ObjectProxy, make_server
from infra.local.moto_objects import read_object
from infra.local.serve import LocalStack, Options
from infra.samtemplate import load_template, object_routes

REGION = "us-east-1"
INSTANCES = "local-instancebucket"
RESEARCH = "local-deidbucket"
# Keys shaped as the store writes them (studies/{study}/series/{series}/instances/...).
INSTANCE = "studies/1.2.3/series/1.2.3.4/instances/1.2.3.4.5.dcm"
OTHER_INSTANCE = "studies/1.2.3/series/1.2.3.4/instances/1.2.3.4.6.dcm"
QUARANTINED = "quarantine/x.json"
PRIMARY_BYTES = bytes(range(256)) * 40 + b"\r\n\r\n\x00PRIMARY"
OTHER_BYTES = b"ANOTHER INSTANCE"
RESEARCH_BYTES = b"THE RESEARCH BUCKET"
KEEP_ALIVE_REQUESTS = 20
KEEP_ALIVE_ALLOWANCE_MS = 2.0


@dataclass
class Edge:
    """The moto endpoint, the runtime's link key and the gateway serving its object routes."""

    moto_url: str
    key: LinkSigningKey
    proxy: ObjectProxy
    base_url: str
    versions: dict[str, str]


@pytest.fixture(scope="module")
def edge() -> Iterator[Edge]:
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    moto_url = f"http://{host}:{port}"
    s3 = boto3.client("s3", endpoint_url=moto_url, region_name=REGION)
    for bucket in (INSTANCES, RESEARCH):
        s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=INSTANCES, VersioningConfiguration={"Status": "Enabled"})
    versions = {
        INSTANCE: s3.put_object(Bucket=INSTANCES, Key=INSTANCE, Body=PRIMARY_BYTES)["VersionId"],
        OTHER_INSTANCE: s3.put_object(Bucket=INSTANCES, Key=OTHER_INSTANCE, Body=OTHER_BYTES)["VersionId"],
    }
    s3.put_object(Bucket=RESEARCH, Key=QUARANTINED, Body=RESEARCH_BYTES)
    s3.put_object(Bucket=RESEARCH, Key=INSTANCE, Body=RESEARCH_BYTES)
    key = LinkSigningKey.generate(REGION)
    proxy = ObjectProxy(
        [(route.pattern, INSTANCES, route.methods) for route in object_routes(load_template())],
        moto_url,
        key=key,
        read=read_object,  # as make serve has it: GETs from moto's memory, checked first
    )
    gateway = Gateway(
        routes=load_template().routes(),
        functions={},
        authorizer=None,
        cors=CorsPolicy.from_template({}, origins=()),
        objects=proxy,
    )
    server = make_server(gateway, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Edge(moto_url, key, proxy, f"http://127.0.0.1:{server.server_address[1]}", versions)
    finally:
        server.shutdown()
        server.server_close()
        moto.stop()


Sign = Callable[..., str]


@pytest.fixture
def sign(edge: Edge, monkeypatch: pytest.MonkeyPatch) -> Sign:
    """A same-host link as a function worker makes it: the core's presigner, the worker's environment."""

    def signed(
        key: str = INSTANCE,
        *,
        bucket: str = INSTANCES,
        credentials: LinkSigningKey | None = None,
        expires_in: int = 300,
    ) -> str:
        monkeypatch.setenv("AWS_ENDPOINT_URL", edge.moto_url)
        for name, value in (credentials or edge.key).environment().items():
            monkeypatch.setenv(name, value)
        # A worker process starts with no boto3 session: credentials come from its environment.
        monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
        reader = ObjectReader(bucket)
        return reader.same_host_url(
            key,
            version_id=edge.versions.get(key) if bucket == INSTANCES else None,
            public_base_url=edge.base_url,
            expires_in=expires_in,
        )

    return signed


def presign_raw_path(edge: Edge, path: str) -> str:
    """A valid signature for a raw request path, made with the runtime's key by botocore's signer.

    The core never signs such paths; this shows that a path the proxy refuses is refused
    for what it is, not for its signature."""
    signer = S3SigV4QueryAuth(
        Credentials(edge.key.access_key_id, edge.key.secret_access_key), "s3", REGION, expires=300
    )
    request = AWSRequest(method="GET", url=f"{edge.moto_url}/{INSTANCES}{path}")
    signer.add_auth(request)
    return urlsplit(str(request.url)).query


def with_query(link: str, **changes: str | None) -> str:
    """The link with some query parameters replaced (None removes one)."""
    parts = urlsplit(link)
    parameters = dict(parse_qsl(parts.query, keep_blank_values=True))
    for name, value in changes.items():
        if value is None:
            del parameters[name]
        else:
            parameters[name] = value
    return parts._replace(query=urlencode(parameters)).geturl()


def get_raw(base_url: str, target: str) -> tuple[int, bytes]:
    """GET a request target exactly as written (requests would remove dot segments)."""
    parts = urlsplit(base_url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        connection.request("GET", target)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def s3_code(body: bytes) -> str:
    return body.split(b"<Code>", 1)[1].split(b"</Code>", 1)[0].decode()


# ---------------------------------------------------------------- valid links


def test_a_link_signed_by_a_function_is_served_byte_exact(edge: Edge, sign: Sign) -> None:
    # Given a same-host link to a stored instance, signed as a function worker signs it
    link = sign()
    assert link.startswith(f"{edge.base_url}/studies/")

    # When a client follows it on the API's host
    answer = requests.get(link, timeout=30)

    # Then the object comes back, byte for byte, with S3's headers
    assert answer.status_code == 200, answer.content
    assert answer.content == PRIMARY_BYTES
    assert answer.headers["content-length"] == str(len(PRIMARY_BYTES))
    assert "etag" in answer.headers


# ---------------------------------------------------------------- refused links


def test_a_forged_signature_is_refused(edge: Edge, sign: Sign) -> None:
    # Given a link whose signature was made up (moto itself would accept it)
    link = with_query(sign(), **{"X-Amz-Signature": "0" * 64})

    # When it is followed
    answer = requests.get(link, timeout=30)

    # Then S3's answer: 403 SignatureDoesNotMatch, and no object bytes
    assert answer.status_code == 403
    assert s3_code(answer.content) == "SignatureDoesNotMatch"
    assert PRIMARY_BYTES not in answer.content


def test_a_link_without_signature_is_refused(edge: Edge, sign: Sign) -> None:
    # Given a link stripped of its signature
    link = with_query(sign(), **{"X-Amz-Signature": None})

    # When it is followed, then it is refused as an unauthenticated request to a private bucket
    answer = requests.get(link, timeout=30)
    assert answer.status_code == 403
    assert s3_code(answer.content) == "AccessDenied"


def test_a_link_signed_with_another_key_is_refused(edge: Edge, sign: Sign) -> None:
    # Given a link signed with the credentials anyone can use against moto (the old fixed key)
    link = sign(credentials=LinkSigningKey("local", "local", REGION))

    # When it is followed, then its signature does not match the runtime's key
    answer = requests.get(link, timeout=30)
    assert answer.status_code == 403
    assert s3_code(answer.content) == "SignatureDoesNotMatch"


def test_a_link_for_another_access_key_is_refused(edge: Edge, sign: Sign) -> None:
    # Given a link naming another access key id
    link = sign(credentials=LinkSigningKey.generate(REGION, access_key_id="someone-else"))

    # When it is followed, then S3's answer for an unknown key
    answer = requests.get(link, timeout=30)
    assert answer.status_code == 403
    assert s3_code(answer.content) == "InvalidAccessKeyId"


def test_a_signature_for_one_object_does_not_open_another(edge: Edge, sign: Sign) -> None:
    # Given a valid link to one instance
    link = urlsplit(sign(INSTANCE))

    # When its query is replayed on another instance's path
    other_path = urlsplit(sign(OTHER_INSTANCE)).path
    answer = requests.get(f"{edge.base_url}{other_path}?{link.query}", timeout=30)

    # Then the signature does not cover it
    assert answer.status_code == 403
    assert s3_code(answer.content) == "SignatureDoesNotMatch"
    assert OTHER_BYTES not in answer.content


def test_a_signature_for_another_bucket_does_not_open_this_one(edge: Edge, sign: Sign) -> None:
    # Given a link signed for the same key in the research bucket (same path on the API host)
    link = sign(INSTANCE, bucket=RESEARCH)

    # When it is followed on the instance route
    answer = requests.get(link, timeout=30)

    # Then it is refused: the proxy checks it for the bucket the route serves
    assert answer.status_code == 403
    assert s3_code(answer.content) == "SignatureDoesNotMatch"


@pytest.mark.parametrize(
    ("parameter", "value"),
    [
        ("X-Amz-Expires", "604800"),  # a longer life
        ("X-Amz-Date", (datetime.now(UTC) + timedelta(days=1)).strftime("%Y%m%dT%H%M%SZ")),
        ("versionId", "another-version"),
    ],
)
def test_a_tampered_parameter_breaks_the_signature(
    edge: Edge, sign: Sign, parameter: str, value: str
) -> None:
    # Given a valid link with one signed parameter changed
    link = with_query(sign(), **{parameter: value})

    # When it is followed, then the signature no longer matches
    answer = requests.get(link, timeout=30)
    assert answer.status_code == 403
    assert s3_code(answer.content) == "SignatureDoesNotMatch"


def test_an_expired_link_is_refused(edge: Edge, sign: Sign) -> None:
    # Given a valid link with a five-minute life
    parts = urlsplit(sign(expires_in=300))

    # When it is presented five minutes and one second later
    later = ObjectProxy(
        edge.proxy.routes,
        edge.moto_url,
        key=edge.key,
        clock=lambda: datetime.now(UTC) + timedelta(seconds=301),
    )
    refused = later.serve("GET", parts.path, parts.query)

    # Then S3's answer for an expired link; the same link is good before that
    assert refused is not None
    assert refused.status == 403
    assert s3_code(refused.body) == "AccessDenied"
    assert b"Request has expired" in refused.body
    served = edge.proxy.serve("GET", parts.path, parts.query)
    assert served is not None
    assert (served.status, served.body) == (200, PRIMARY_BYTES)


@pytest.mark.parametrize(
    "path",
    [
        f"/bundles/../../{RESEARCH}/{QUARANTINED}",
        f"/bundles/%2e%2e/%2E%2E/{RESEARCH}/{QUARANTINED}",
        f"/bundles/.%2e/%2e./{RESEARCH}/{QUARANTINED}",
        f"/bundles/..%2f..%2f{RESEARCH}%2F{QUARANTINED}",
        f"/bundles/..%5c..%5c{RESEARCH}/{QUARANTINED}",
        f"/bundles/%252e%252e/%252e%252e/{RESEARCH}/{QUARANTINED}",
        f"/studies/../../{RESEARCH}/{INSTANCE}",
        "/studies/./1.2.3/series/1.2.3.4/instances/1.2.3.4.5.dcm",
        "/studies//1.2.3/series/1.2.3.4/instances/1.2.3.4.5.dcm",
        "/bundles/%00/x",
    ],
)
def test_a_path_that_could_name_another_object_is_refused_before_any_fetch(
    edge: Edge, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    # Given a path on an object route that leaves its segment, even with a valid signature for it
    query = presign_raw_path(edge, path)
    fetched: list[Any] = []
    monkeypatch.setattr("infra.local.gateway.requests.request", lambda *a, **k: fetched.append(a))

    # When it is requested exactly as written
    served = edge.proxy.serve("GET", path, query)

    # Then it is refused as an unparseable URI, and nothing was fetched from the store
    assert served is not None
    assert served.status == 400
    assert s3_code(served.body) == "InvalidURI"
    assert fetched == []


def test_dot_segments_on_the_wire_reach_no_other_bucket(edge: Edge) -> None:
    # Given the review's request: a forged link whose path climbs out of the bucket
    target = f"/bundles/../../{RESEARCH}/{QUARANTINED}?" + urlencode(
        {
            "X-Amz-Signature": "forged",
            "X-Amz-Date": datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ"),
            "X-Amz-Expires": "300",
        }
    )

    # When it is sent as written through the gateway's socket
    status, body = get_raw(edge.base_url, target)

    # Then it is refused and the other bucket's object stays unread
    assert status == 400
    assert RESEARCH_BYTES not in body


# ---------------------------------------------------------------- keep-alive


def _timed_get(connection: http.client.HTTPConnection) -> float:
    started = time.perf_counter()
    connection.request("GET", "/no-such-route")
    response = connection.getresponse()
    response.read()
    assert response.status == 404
    return (time.perf_counter() - started) * 1000


def test_a_kept_alive_request_is_as_fast_as_one_on_a_new_connection(edge: Edge) -> None:
    # Given the gateway and a client that reuses one connection (as every HTTP client does)
    parts = urlsplit(edge.base_url)
    kept = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    _timed_get(kept)  # the connection is open and warm

    # When the same unrouted GET is sent 20 times on it, and 20 times on new connections
    kept_alive = [_timed_get(kept) for _ in range(KEEP_ALIVE_REQUESTS)]
    kept.close()
    fresh = []
    for _ in range(KEEP_ALIVE_REQUESTS):
        connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
        fresh.append(_timed_get(connection))
        connection.close()

    # Then the kept-alive request costs no more than a new connection's (no Nagle/delayed-ACK
    # stall of ~40 ms between a response's head and its body)
    assert statistics.median(kept_alive) <= statistics.median(fresh) + KEEP_ALIVE_ALLOWANCE_MS, (
        f"keep-alive median {statistics.median(kept_alive):.2f} ms,"
        f" new-connection median {statistics.median(fresh):.2f} ms"
    )


# ---------------------------------------------------------------- AUTH=off


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "192.0.2.10", "dicom.example.test"])
def test_auth_off_is_refused_on_a_host_others_can_reach(
    host: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Given `make serve AUTH=off HOST=<host>`
    monkeypatch.setenv("AUTH", "off")
    monkeypatch.setenv("HOST", host)

    # When the options are parsed, then the runtime exits before starting, saying why
    with pytest.raises(SystemExit) as exited:
        Options.parse([])
    assert exited.value.code == 2
    assert "AUTH=off" in capsys.readouterr().err
    # and a stack built without the command line refuses the same options
    options = Options(host=host, port=0, local_dir=tmp_path, auth=False, load=None, cors_origins=())
    with pytest.raises(ValueError, match="loopback host only"):
        LocalStack(options)


@pytest.mark.parametrize(
    ("host", "auth"),
    [("127.0.0.1", "off"), ("::1", "off"), ("localhost", "off"), ("0.0.0.0", "on")],
)
def test_auth_off_on_loopback_and_auth_on_anywhere_are_allowed(
    host: str, auth: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a loopback host without the authorizer, or any host with it
    monkeypatch.delenv("AUTH", raising=False)
    monkeypatch.delenv("HOST", raising=False)

    # When the options are parsed, then they stand
    options = Options.parse(["--host", host, "--auth", auth])
    assert (options.host, options.auth) == (host, auth == "on")


def test_objects_read_from_motos_memory_are_what_s3_answers(edge: Edge) -> None:
    # Given the bucket as moto's server holds it
    s3 = boto3.client("s3", endpoint_url=edge.moto_url, region_name=REGION)
    bucket = "memory-reads"
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    old = s3.put_object(Bucket=bucket, Key="a/b.dcm", Body=b"old", ContentType="application/dicom")
    new = s3.put_object(Bucket=bucket, Key="a/b.dcm", Body=b"new", ContentType="application/dicom")
    s3.put_object(Bucket=bucket, Key="gone.dcm", Body=b"x")
    s3.delete_object(Bucket=bucket, Key="gone.dcm")
    # When objects are read from memory
    current = read_object(bucket, "a/b.dcm", None)
    earlier = read_object(bucket, "a/b.dcm", old["VersionId"])
    # Then each is the version S3 serves, with S3's headers
    answer = s3.get_object(Bucket=bucket, Key="a/b.dcm")
    assert current is not None and current.body == b"new" == answer["Body"].read()
    assert current.headers["etag"] == answer["ETag"] == new["ETag"]
    assert current.headers["content-type"] == answer["ContentType"] == "application/dicom"
    assert current.headers["x-amz-version-id"] == new["VersionId"]
    assert earlier is not None and earlier.body == b"old"
    # And what S3 would refuse is left to S3's own answer over HTTP
    assert read_object(bucket, "gone.dcm", None) is None  # a delete marker: 404
    assert read_object(bucket, "never.dcm", None) is None
    assert read_object("no-such-bucket", "a/b.dcm", None) is None
    assert read_object(bucket, "a/b.dcm", "no-such-version") is None
