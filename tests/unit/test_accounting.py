"""Cost accounting: DynamoDB's published size and capacity rules, and the call-counting hook
against real calls (in-process moto, and a local-runtime worker against a moto server)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from infra.accounting.calls import NO_OPERATION, CallCounter
from infra.accounting.dynamodb import (
    IndexSchema,
    Snapshot,
    TableSchema,
    consumed_units,
    table_storage,
)
from infra.accounting.invocations import load_invocations, summary
from infra.accounting.itemsize import (
    attribute_size,
    batch_read_units,
    item_size,
    query_read_units,
    read_units,
    write_units,
)

KB = 1024


# ---------------------------------------------------------------- item sizes
@pytest.mark.parametrize(
    ("name", "value", "size"),
    [
        ("name", {"S": "Jane"}, 4 + 4),  # name bytes + UTF-8 bytes
        ("n", {"S": "Zoë"}, 1 + 4),  # ë is two bytes in UTF-8
        ("x", {"N": "123.45"}, 1 + 3 + 1),  # 5 significant digits: 3 bytes, plus 1
        ("x", {"N": "100"}, 1 + 1 + 1),  # trailing zeroes trimmed: one digit
        ("x", {"N": "0.001"}, 1 + 1 + 1),  # leading zeroes trimmed
        ("x", {"N": "-12345678901234567890"}, 1 + 10 + 1),
        ("b", {"B": b"\x00\x01\x02"}, 1 + 3),  # raw bytes, not the base64 text
        ("b", {"B": "AAEC"}, 1 + 3),  # the same value as it travels (base64)
        ("flag", {"BOOL": True}, 4 + 1),
        ("none", {"NULL": True}, 4 + 1),
        ("l", {"L": []}, 1 + 3),  # an empty list: 3 bytes of overhead
        ("l", {"L": [{"S": "ab"}, {"N": "1"}]}, 1 + 3 + (2 + 1) + (2 + 1)),  # +1 per element
        ("m", {"M": {"a": {"S": "x"}}}, 1 + 3 + (1 + 1 + 1)),  # nested names count
        ("s", {"SS": ["a", "bc"]}, 1 + 3),
    ],
)
def test_attribute_sizes_follow_the_developer_guide(name: str, value: dict[str, Any], size: int) -> None:
    assert attribute_size(name, value) == size


def test_an_item_is_the_sum_of_its_attributes() -> None:
    item = {"pk": {"S": "study#1"}, "count": {"N": "42"}, "tags": {"L": [{"S": "CT"}]}}
    assert item_size(item) == (2 + 7) + (5 + 2) + (4 + 3 + 2 + 1)
    assert item_size(item, ["pk"]) == 9


# ---------------------------------------------------------------- capacity units (worked examples)
@pytest.mark.parametrize(
    ("size", "transactional", "units"),
    [
        (int(1.6 * KB), False, 2),  # "put or delete an item of 1.6 KB ... rounds up to 2 KB"
        (3 * KB, False, 3),  # pricing page: "a standard write request of a 3 KB item ... three WCUs"
        (3 * KB, True, 6),  # "... a transactional write request of a 3 KB item ... six WCUs"
        (500, True, 2),  # transactions: "each item requires two WCUs" (500-byte items)
        (0, False, 1),  # a write always costs at least one unit
    ],
)
def test_write_units(size: int, transactional: bool, units: int) -> None:
    assert write_units(size, transactional=transactional) == units


def test_batch_write_rounds_each_item() -> None:
    # "if BatchWriteItem writes a 500 byte item and a 3.5 KB item, DynamoDB will calculate
    # the size as 5 KB (1 KB + 4 KB), not 4 KB"
    assert write_units(500) + write_units(int(3.5 * KB)) == 5


@pytest.mark.parametrize(
    ("size", "consistent", "transactional", "units"),
    [
        (int(3.5 * KB), True, False, 1),  # "an item that is 3.5 KB ... rounds ... to 4 KB"
        (int(3.5 * KB), False, False, 0.5),
        (10 * KB, True, False, 3),  # "an item of 10 KB ... to 12 KB"
        (8 * KB, True, False, 2),  # pricing page: strongly consistent read of an 8 KB item
        (8 * KB, False, False, 1),  # ... eventually consistent: one RCU
        (8 * KB, True, True, 4),  # ... transactional: four RCUs
        (0, True, False, 1),  # "a read ... on an item that does not exist" still costs
        (0, False, False, 0.5),
    ],
)
def test_read_units(size: int, consistent: bool, transactional: bool, units: float) -> None:
    assert read_units(size, consistent=consistent, transactional=transactional) == units


def test_batch_get_rounds_each_item_and_query_rounds_the_total() -> None:
    # BatchGetItem "reads a 1.5 KB item and a 6.5 KB item ... 12 KB (4 KB + 8 KB)"
    assert batch_read_units([int(1.5 * KB), int(6.5 * KB)], consistent=True) == 3
    # Query: "10 items whose combined size is 40.8 KB ... rounds ... to 44 KB"
    assert query_read_units([int(40.8 * KB)], consistent=True) == 11
    # "If a query returns 1500 items of 64 bytes each, the cumulative size is 96 KB"
    assert query_read_units([64] * 1500, consistent=True) == 24
    # GSI.html: 8 index entries of 2000 bytes, eventually consistent: 2 read units
    assert query_read_units([2000] * 8, consistent=False) == 2


# ---------------------------------------------------------------- index writes and storage
TABLE = TableSchema(
    name="t",
    key=("pk",),
    indexes=(
        IndexSchema("by_g", ("g",), "ALL"),
        IndexSchema("g_keys", ("g",), "KEYS_ONLY"),
    ),
)


def _item(pk: str, **attributes: str) -> dict[str, Any]:
    return {"pk": {"S": pk}, **{k: {"S": v} for k, v in attributes.items()}}


def _units(records: list[dict[str, Any]], before: list[Any], after: list[Any]) -> dict[str, float]:
    schemas = {"t": TABLE}
    units = consumed_units(
        records, [], schemas, before=Snapshot({"t": before}, schemas), after=Snapshot({"t": after}, schemas)
    )
    return dict(units.write)


def test_a_new_item_with_the_index_key_is_one_write_per_index() -> None:
    # Given a put of an item carrying the index key (GSI.html: "one write operation is
    # required to put the item into the index")
    item = _item("a", g="x", payload="p" * 1500)
    # When it is costed inside a transaction
    units = _units([{"op": "put", "table": "t", "tx": True, "ok": True, "item": item}], [], [item])
    # Then the table pays twice (prepare + commit), each index once, on the entry's size
    assert units == {"t": 4, "t/by_g": 2, "t/g_keys": 1}


def test_index_writes_follow_the_key_and_projection_rules() -> None:
    old = _item("a", g="x", note="1")
    moved, unindexed, renoted = _item("a", g="y", note="1"), _item("a", note="1"), _item("a", g="x", note="2")

    def update(after: dict[str, Any], touched: list[str]) -> dict[str, float]:
        record = {"op": "update", "table": "t", "tx": False, "ok": True, "key": {"pk": {"S": "a"}}}
        return _units([{**record, "touched": touched}], [old], [after])

    # A key changed from A to B: delete and put in each index
    assert update(moved, ["g"]) == {"t": 1, "t/by_g": 2, "t/g_keys": 2}
    # The index key removed: one write to delete the entry
    assert update(unindexed, ["g"]) == {"t": 1, "t/by_g": 1, "t/g_keys": 1}
    # Only a non-key attribute changed: the ALL index rewrites its entry, KEYS_ONLY does not
    assert update(renoted, ["note"]) == {"t": 1, "t/by_g": 1}
    # An item in no index before or after: the table alone
    assert _units(
        [{"op": "put", "table": "t", "tx": False, "ok": True, "item": _item("b")}], [], [_item("b")]
    ) == {"t": 1}


def test_a_delete_and_a_condition_check_are_sized_on_the_stored_item() -> None:
    stored = _item("a", g="x", payload="p" * 3000)
    records = [
        {"op": "delete", "table": "t", "tx": False, "ok": True, "key": {"pk": {"S": "a"}}},
        {"op": "check", "table": "t", "tx": True, "ok": True, "key": {"pk": {"S": "a"}}},
    ]
    assert _units(records[:1], [stored], []) == {"t": 3, "t/by_g": 3, "t/g_keys": 1}
    assert _units(records[1:], [stored], [stored]) == {"t": 6}


def test_storage_counts_every_index_copy_with_its_overhead() -> None:
    item = _item("a", g="x", payload="p" * 500)  # 3 + 2 + 507 = 512 bytes
    storage = table_storage([item, _item("b")], TABLE)
    assert (storage.items, storage.base) == (2, (512 + 100) + (3 + 100))
    assert storage.indexes == {"by_g": 512 + 100, "g_keys": (2 + 1) + (1 + 1) + 100}
    assert storage.total == storage.base + 612 + 105


# ---------------------------------------------------------------- the hook, against moto
@pytest.fixture
def counter(aws: None) -> Iterator[CallCounter]:
    counter = CallCounter()
    with counter.installed():
        yield counter


def _create_table(client: Any) -> None:
    client.create_table(
        TableName="t",
        BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "g", "AttributeType": "S"},
        ],
        GlobalSecondaryIndexes=[
            {
                "IndexName": "by_g",
                "KeySchema": [{"AttributeName": "g", "KeyType": "HASH"}],
                "Projection": {"ProjectionType": "ALL"},
            },
        ],
    )


def test_the_hook_counts_each_call_by_operation_with_its_units(counter: CallCounter) -> None:
    # Given clients created while the counter is installed
    dynamodb, s3, events, sqs = (boto3.client(s) for s in ("dynamodb", "s3", "events", "sqs"))
    with counter.operation("setup"):
        _create_table(dynamodb)
        s3.create_bucket(Bucket="objects")
        queue = sqs.create_queue(QueueName="q")["QueueUrl"]
    # When one "operation" stores an object, writes and reads the index, publishes an event
    with counter.operation("store"):
        s3.put_object(Bucket="objects", Key="a", Body=b"x" * 1000)
        dynamodb.put_item(TableName="t", Item=_item("a", g="x", payload="p" * 1500))
        dynamodb.transact_write_items(
            TransactItems=[
                {"Put": {"TableName": "t", "Item": _item("b", g="y")}},
                {
                    "Update": {
                        "TableName": "t",
                        "Key": {"pk": {"S": "a"}},
                        "UpdateExpression": "SET #n = :n",
                        "ExpressionAttributeNames": {"#n": "note"},
                        "ExpressionAttributeValues": {":n": {"S": "hello"}},
                    }
                },
            ]
        )
        dynamodb.get_item(TableName="t", Key={"pk": {"S": "a"}}, ConsistentRead=True)
        events.put_events(Entries=[{"Source": "s", "DetailType": "d", "Detail": "{}"}] * 2)
        sqs.send_message(QueueUrl=queue, MessageBody="m")
    s3.list_buckets()  # outside any operation

    # Then each call is counted once, under its operation
    store = counter.tallies["store"]
    assert store.calls == {
        "s3.PutObject": 1,
        "dynamodb.PutItem": 1,
        "dynamodb.TransactWriteItems": 1,
        "dynamodb.GetItem": 1,
        "events.PutEvents": 1,
        "sqs.SendMessage": 1,
    }
    assert store.by_service() == {"dynamodb": 3, "s3": 1, "events": 1, "sqs": 1}
    assert store.units == {"s3.put_bytes": 1000, "events.entries": 2, "events.billed": 2, "sqs.sent": 1}
    assert counter.tallies["setup"].calls["dynamodb.CreateTable"] == 1
    assert counter.tallies[NO_OPERATION].calls == {"s3.ListBuckets": 1}
    assert [(w["op"], w["tx"]) for w in store.writes] == [("put", False), ("put", True), ("update", True)]
    assert store.writes[2]["touched"] == ["note"]

    # And the units are computed from the items as moto stores them
    schema = TableSchema.from_description(dynamodb.describe_table(TableName="t")["Table"])
    items = dynamodb.scan(TableName="t")["Items"]
    snapshot = Snapshot({"t": items}, {"t": schema})
    units = consumed_units(store.writes, store.reads, {"t": schema}, before=Snapshot({}, {}), after=snapshot)
    big = item_size(next(i for i in items if i["pk"]["S"] == "a"))  # 1.5 KB and the note
    assert 1024 < big <= 2048
    # put "a" (2) + transactional put "b" (2) + transactional update "a" (2 x 2); index: "a" put
    # (2) and its note rewritten (2), "b" entered (1)
    assert units.write == {"t": 2 + 2 + 4, "t/by_g": 2 + 2 + 1}
    assert units.read == {"t": 1}


def test_the_hook_counts_a_real_stow_against_moto(counter: CallCounter) -> None:
    # Given the deployed stack's resources in moto, provisioned while counting
    from infra.datasets.generate import make_instance
    from tests.moto_stack import provisioned, store_ok, stow_service

    _stack, settings = provisioned()
    stow = stow_service(settings)
    # When one instance is stored through the STOW-RS service
    with counter.operation("STOW 1 instance"):
        store_ok(stow, make_instance())
    tally = counter.tallies["STOW 1 instance"]
    # Then the calls it made are counted: the object put in S3 and the index written
    assert tally.calls["s3.PutObject"] >= 1
    assert tally.units["s3.put_bytes"] > 0
    assert any(w["table"] == settings.table_name and w["ok"] for w in tally.writes)
    assert tally.by_service()["dynamodb"] >= 1


# ---------------------------------------------------------------- the local runtime's workers
APP = """
import boto3

def handler(event, context):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="worker-bucket")
    s3.put_object(Bucket="worker-bucket", Key="k", Body=b"abc")
    return {"statusCode": 200}
"""


def test_a_worker_records_the_calls_of_each_invocation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moto.server import ThreadedMotoServer

    from infra.local.workers import FunctionConfig, FunctionPool

    # Given a function whose handler makes two S3 calls, in a worker with counting on
    code = tmp_path / "code"
    code.mkdir()
    (code / "app.py").write_text(APP)
    records = tmp_path / "calls"
    monkeypatch.setenv("COUNT_BACKEND_CALLS", str(records))
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    config = FunctionConfig(
        name="Probe",
        handler="app.handler",
        code_dir=code,
        layer_dirs=(),
        environment={
            "AWS_ENDPOINT_URL": f"http://{host}:{port}",
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "AWS_DEFAULT_REGION": "us-east-1",
        },
        timeout=30,
        memory_mb=256,
    )
    pool = FunctionPool(config, max_concurrency=1, init_timeout=60)
    try:
        # When it is invoked as an API route and then by a queue
        pool.invoke({"routeKey": "POST /studies", "rawPath": "/studies"})
        pool.invoke({"Records": [{"eventSourceARN": "arn:aws:sqs:us-east-1:1:hooks"}] * 3})
    finally:
        pool.close()
        moto.stop()

    # Then one record per invocation says what triggered it and which calls it made
    invocations = load_invocations(records)
    assert [(i.function, i.trigger, i.messages, i.ok) for i in invocations] == [
        ("Probe", "POST /studies", 0, True),
        ("Probe", "sqs:hooks", 3, True),
    ]
    for invocation in invocations:
        assert invocation.tally.calls == {"s3.CreateBucket": 1, "s3.PutObject": 1}
        assert invocation.tally.units == {"s3.put_bytes": 3}
        assert invocation.duration_ms > 0
    assert "| Probe | `POST /studies` | 1 |" in summary(invocations)
    assert all(json.loads(line) for line in next(records.glob("Probe-*.jsonl")).read_text().splitlines())
