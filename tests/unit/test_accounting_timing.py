"""Where an operation's time goes: the call counter's timing, the gateway's request records,
the split of a request's time, the cloud estimate, and the profile's components."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests

from infra.accounting.breakdown import Breakdown, breakdown
from infra.accounting.calls import CallCounter, Tally
from infra.accounting.gateway import GatewayRecord, GatewayRecorder, load_gateway_records
from infra.accounting.invocations import Invocation, load_invocations, request_id_of
from infra.accounting.latency import CloudLatencies, cloud_estimate
from infra.bench import breakdown as section
from infra.bench.spy import HANDLERS, RUNTIME, WORKERS, component, summarise
from infra.bench.versus_orthanc import BREAKDOWN_END, BREAKDOWN_START, Point, breakdown_block, with_breakdown
from infra.local.gateway import CorsPolicy, Gateway, make_server
from infra.samtemplate import Route


class Clock:
    """A clock the test moves by hand (seconds)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------- the counter's clock
def test_parallel_calls_count_once_in_the_wall_time_and_fully_in_their_sums() -> None:
    # Given a counter on a hand-moved clock
    clock = Clock()
    counter = CallCounter(clock=clock)
    with counter.operation("QIDO"):
        # When two calls overlap (0-10 ms and 4-12 ms) and a third runs alone (20-23 ms)
        first = counter.begin()
        clock.now += 0.004
        second = counter.begin()
        clock.now += 0.006
        counter.end(first, "dynamodb.Query", wire_ms=9.0)
        clock.now += 0.002
        counter.end(second, "dynamodb.Query", wire_ms=7.0)
        clock.now += 0.008
        third = counter.begin()
        clock.now += 0.003
        counter.end(third, "s3.GetObject")
    tally = counter.tallies["QIDO"]
    # Then each call's time is summed per operation, and the wall time counts overlaps once
    assert tally.call_ms == pytest.approx({"dynamodb.Query": 10.0 + 8.0, "s3.GetObject": 3.0})
    assert tally.wire_ms == pytest.approx({"dynamodb.Query": 16.0})
    assert tally.aws_ms == pytest.approx(12.0 + 3.0)


def test_a_call_left_open_is_closed_when_the_tallies_are_taken() -> None:
    # Given a call that began and never ended (it failed before it was sent)
    clock = Clock()
    counter = CallCounter(clock=clock)
    with counter.operation("GET"):
        counter.begin()
        clock.now += 0.005
    # When the invocation's tallies are taken
    taken = counter.take()
    # Then its time so far is counted, and the next operation starts with no call open
    assert taken["GET"].aws_ms == pytest.approx(5.0)
    with counter.operation("GET"):
        call = counter.begin()
        clock.now += 0.002
        counter.end(call, "dynamodb.GetItem")
    assert counter.take()["GET"].aws_ms == pytest.approx(2.0)


def test_times_survive_merging_and_json() -> None:
    a = Tally(call_ms={"dynamodb.Query": 2.0}, wire_ms={"dynamodb.Query": 1.5}, aws_ms=2.0, hook_ms=0.1)
    b = Tally(call_ms={"dynamodb.Query": 3.0, "s3.PutObject": 4.0}, aws_ms=6.0)
    a.merge(b)
    assert a.call_ms == {"dynamodb.Query": 5.0, "s3.PutObject": 4.0}
    assert (a.aws_ms, a.hook_ms) == (8.0, pytest.approx(0.1))
    again = Tally.from_json(a.to_json())
    assert (again.call_ms, again.wire_ms, again.aws_ms) == (a.call_ms, a.wire_ms, a.aws_ms)
    assert Tally.from_json({}).aws_ms == 0.0  # records written before the timing existed


@pytest.fixture
def counter(aws: None) -> Iterator[CallCounter]:
    counter = CallCounter()
    with counter.installed():
        yield counter


def test_real_calls_are_timed_with_their_body_reads_and_presigning_is_not_a_call(
    counter: CallCounter,
) -> None:
    # Given an object in S3, with a client created while the counter is installed
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="objects")
    s3.put_object(Bucket="objects", Key="k", Body=b"x" * 100_000)
    counter.take()
    # When one operation signs a link (never sent), then gets the object and reads its body
    with counter.operation("GET"):
        s3.generate_presigned_url("get_object", Params={"Bucket": "objects", "Key": "k"})
        body = s3.get_object(Bucket="objects", Key="k")["Body"]
        time.sleep(0.01)  # the handler's own work between the call and the read
        assert len(body.read()) == 100_000
    tally = counter.take()["GET"]
    # Then the call and the read of its body are timed as the call, the pause is not, and
    # the link left no call open
    assert tally.calls == {"s3.GetObject": 1}
    assert set(tally.call_ms) == {"s3.GetObject"}
    assert 0 < tally.wire_ms["s3.GetObject"] <= tally.call_ms["s3.GetObject"]
    assert tally.aws_ms == pytest.approx(tally.call_ms["s3.GetObject"])  # the pause is not in it


# ---------------------------------------------------------------- the gateway's records
class SlowFunction:
    """A function pool stand-in whose handler takes a few milliseconds."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def invoke(self, event: dict[str, Any]) -> dict[str, Any]:
        self.events.append(event)
        time.sleep(0.02)
        return {"statusCode": 200, "headers": {"content-type": "application/json"}, "body": "[]"}


def test_the_gateway_records_each_request_with_its_invocation(tmp_path: Path) -> None:
    # Given a gateway that records its requests into a directory
    function = SlowFunction()
    route = Route("POST", "/studies", "StowFunction", (), None)
    recorder = GatewayRecorder(tmp_path)
    gateway = Gateway(
        routes=[route],
        functions={"StowFunction": function},  # type: ignore[dict-item]
        authorizer=None,
        cors=CorsPolicy.from_template({}, origins=()),
        on_request=recorder,
    )
    server = make_server(gateway, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        # When a client posts a body, and asks for a path no route serves
        base = f"http://127.0.0.1:{server.server_address[1]}"
        since = time.time()
        assert requests.post(f"{base}/studies", data=b"x" * 1000, timeout=10).status_code == 200
        assert requests.get(f"{base}/nowhere", timeout=10).status_code == 404
    finally:
        server.shutdown()
        server.server_close()
    # Then each request has a record; the invoked one names its function and the event's id
    posted, missed = load_gateway_records(tmp_path, since=since)
    assert (posted.method, posted.path, posted.status, posted.function) == (
        "POST",
        "/studies",
        200,
        "StowFunction",
    )
    assert posted.request_id == request_id_of(function.events[0])
    assert 20.0 <= posted.invoke_ms <= posted.total_ms
    assert (posted.request_bytes, posted.response_bytes) == (1000, 2)
    assert (missed.status, missed.function, missed.invoke_ms) == (404, None, 0.0)
    assert load_invocations(tmp_path) == []  # the gateway's records are not read as invocations


# ---------------------------------------------------------------- a request's time, split
def _invocation(
    request_id: str | None, duration_ms: float, tally: Tally, function: str = "QidoFunction"
) -> Invocation:
    return Invocation(function, "GET /studies", 0, 1000.0, duration_ms, True, tally, request_id)


def test_a_request_splits_into_client_gateway_exchange_own_code_and_aws_calls() -> None:
    # Given two client calls of 30 ms, each one request whose handler ran 20 ms, 14 of them
    # in two DynamoDB queries (one ms of bookkeeping), and a hook that ran meanwhile
    tally = Tally(
        calls=Counter({"dynamodb.Query": 2}),
        call_ms={"dynamodb.Query": 15.0},
        wire_ms={"dynamodb.Query": 12.0},
        aws_ms=14.0,
        hook_ms=1.0,
    )
    gateway = [
        GatewayRecord("GET", "/studies", 200, 1000.0, 27.0, "QidoFunction", f"r{i}", 23.0, 0, 500)
        for i in range(2)
    ]
    invocations = [
        _invocation("r0", 20.0, tally),
        _invocation("r1", 20.0, tally),
        _invocation(None, 40.0, Tally(), function="AggregatesFunction"),
    ]
    # When the window's records are split
    split = breakdown([30.0, 30.0], gateway, invocations)
    # Then the parts add up to what the client measured, per request
    assert split.requests == 1.0
    assert (split.gateway_ms, split.exchange_ms, split.own_ms, split.aws_ms) == (4.0, 3.0, 5.0, 14.0)
    assert split.client_side_ms == pytest.approx(30.0 - 27.0)
    assert split.server_ms == pytest.approx(27.0)
    assert split.calls == {"dynamodb.Query": 2.0}
    assert split.by_service() == {"dynamodb": (2.0, 15.0)}
    assert split.background == {"AggregatesFunction": (0.5, 20.0)}
    assert split.summary().startswith("30.0 ms per request, of which 2 DynamoDB calls took 15.0 ms")


def test_an_object_link_served_by_the_gateway_is_gateway_time() -> None:
    gateway = [GatewayRecord("GET", "/bundles/x", 200, 1000.0, 8.0, response_bytes=9_000_000)]
    split = breakdown([20.0], gateway, [])
    assert (split.gateway_ms, split.proxied, split.proxied_bytes, split.client_side_ms) == (
        8.0,
        1.0,
        9e6,
        12.0,
    )


def test_nothing_measured_is_refused() -> None:
    with pytest.raises(ValueError, match="no client operation"):
        breakdown([], [], [])


# ---------------------------------------------------------------- the cloud path's estimate
def test_the_cloud_estimate_prices_the_same_calls_at_the_assumed_latencies() -> None:
    # Given a request that made 2 queries in parallel (10 ms of wall for 20 summed) and a
    # PutObject of 0.9 MB, in a 512 MB function whose own code took 4 ms
    measured = Breakdown(
        operations=1,
        client_ms=40.0,
        requests=1.0,
        gateway_ms=2.0,
        exchange_ms=1.0,
        own_ms=4.0,
        aws_ms=15.0,
        hook_ms=0.0,
        calls={"dynamodb.Query": 2.0, "s3.PutObject": 1.0},
        call_ms={"dynamodb.Query": 20.0, "s3.PutObject": 10.0},
        units={"s3.put_bytes": 900_000.0},
        handler_ms={"QidoFunction": 19.0},
        request_bytes=1_000_000.0,
        response_bytes=0.0,
    )
    latencies = CloudLatencies(request_ms=10.0, payload_mb_s=50.0, s3_mb_s=90.0)
    # When it is priced for the cloud
    cloud = cloud_estimate(measured, {"QidoFunction": 512}, latencies)
    # Then the client keeps its time, the API adds its overhead and the body's transfer,
    # the own code runs at a 512 MB share of a vCPU, and the calls overlap as they did
    assert cloud.client_side_ms == pytest.approx(40.0 - 22.0)
    assert cloud.api_ms == pytest.approx(10.0 + 1.0 / 50.0 * 1000)
    assert cloud.own_ms == pytest.approx(4.0 * 1769 / 512)
    assert cloud.aws_ms == pytest.approx((2 * 8.0 + 30.0 + 0.9 / 90.0 * 1000) * 15.0 / 30.0)
    assert cloud.objects_ms == 0.0
    assert cloud.total_ms == pytest.approx(
        cloud.client_side_ms + cloud.api_ms + cloud.own_ms + cloud.aws_ms + cloud.objects_ms
    )


# ---------------------------------------------------------------- the profile's components
RUNTIME_PROCESS = 'process 1:"python -c spawn_main"'
WORKER_PROCESS = 'process 2:"python -c spawn_main"'
RAW = "\n".join(
    [
        f"{RUNTIME_PROCESS};run (werkzeug/serving.py:1);dispatch (moto/core/responses.py:2);"
        "query (moto/dynamodb/models/table.py:3) 30",
        f"{RUNTIME_PROCESS};run (werkzeug/serving.py:1);query (moto/dynamodb/responses.py:5);"
        "dumps (json/__init__.py:6) 20",
        f"{RUNTIME_PROCESS};run (werkzeug/serving.py:1);read (socketserver.py:9) 10",
        f"{RUNTIME_PROCESS};_serve (infra/local/gateway.py:658) 10",
        f"{RUNTIME_PROCESS};poll (infra/local/streams.py:70);call (botocore/client.py:1) 5",
        f"{RUNTIME_PROCESS};{WORKER_PROCESS};_worker_main (infra/local/workers.py:100);"
        "handler (dicomweb_core/entry/api.py:45);search (dicomweb_core/qido/service.py:3);"
        "_make_api_call (botocore/client.py:1051) 40",
        f"{RUNTIME_PROCESS};{WORKER_PROCESS};_worker_main (infra/local/workers.py:100);"
        "handler (dicomweb_core/entry/api.py:45);search (dicomweb_core/qido/service.py:3);"
        "loads (json/__init__.py:2) 60",
    ]
)


def test_profile_samples_are_summed_by_component_in_percent_of_a_core() -> None:
    shares = summarise(RAW, seconds=1.0, rate_hz=200)
    assert shares[RUNTIME] == pytest.approx(
        {
            "moto: backend": 15.0,
            "moto: requests and answers": 10.0,
            "moto: HTTP server and dispatch": 5.0,
            "gateway": 5.0,
            "pollers": 2.5,
        }
    )
    assert shares[WORKERS] == pytest.approx({"AWS SDK": 20.0, "our code": 30.0})
    assert shares[HANDLERS] == pytest.approx({"API": 50.0})


def test_an_unknown_stack_is_other() -> None:
    assert component(["main (tool.py:1)"], worker=False) == "other"
    assert component(["main (tool.py:1)"], worker=True) == "other"


# ---------------------------------------------------------------- the document's block
def test_the_where_the_time_goes_block_survives_a_rewrite_of_the_document() -> None:
    block = f"{BREAKDOWN_START}\n## Where the time goes\n\n| a | b |\n{BREAKDOWN_END}"
    document = with_breakdown("# Benchmark\n\ntable\n", block)
    assert document == f"# Benchmark\n\ntable\n\n{block}\n"
    assert breakdown_block(document) == block
    newer = block.replace("| a | b |", "| c | d |")
    assert breakdown_block(with_breakdown(document, newer)) == newer
    assert breakdown_block("# no block here") == ""


def test_saved_figures_give_the_same_section_again(tmp_path: Path) -> None:
    # Given a row and a profile as a run saves them
    measured = breakdown(
        [12.0],
        [GatewayRecord("GET", "/studies", 200, 1000.0, 10.0, "QidoFunction", "r", 9.0)],
        [
            _invocation(
                "r",
                8.0,
                Tally(calls=Counter({"dynamodb.Query": 1}), call_ms={"dynamodb.Query": 6.0}, aws_ms=6.0),
            ),
            _invocation(None, 3.0, Tally(), function="AggregatesFunction"),
        ],
    )
    latencies = CloudLatencies()
    cloud = cloud_estimate(measured, {"QidoFunction": 512}, latencies)
    rows = [section.Row(Point("qido_patient", 100), measured, cloud, 1.0, orthanc=2.0, side_by_side=8.0)]
    profiles = [
        section.Profile(
            Point("qido_patient", 100), 3.0, {RUNTIME: {"gateway": 5.0}, WORKERS: {}, HANDLERS: {}}
        )
    ]
    config = section.Config.of(quick=True)
    path = tmp_path / "breakdown.json"
    section.save(path, rows, config, 60.0, profiles)
    # When they are loaded again
    loaded, again, took_s, found = section.load(path, latencies)
    # Then the section drawn from them is the one drawn from the run
    assert (again, took_s, found) == (config, 60.0, profiles)
    assert loaded[0].measured == measured
    first = section.report(rows, config, took_s=60.0, latencies=latencies, profiles=profiles)
    assert section.report(loaded, again, took_s=took_s, latencies=latencies, profiles=found) == first
    assert "| QIDO-RS PatientID, 100 studies | 12.0 ms |" in first
    assert "2.0 ms" in section.cloud_table(rows)  # Orthanc's figure beside the estimate
