"""Study and series aggregates off the write path (dicomweb_core.index.aggregates), against moto.

The write path commits only the instance's own items; AggregatesFunction recounts the studies
and series from the table's stream. These tests show the counts converge exactly whatever
the stream does (records repeated, reordered, a failing batch retried), and that writers
racing into one study never put a shared item in their transactions once it exists.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from pynamodb.connection.base import Connection

from dicomweb_core.config import Settings
from dicomweb_core.index.aggregates import Aggregates, touched_in
from dicomweb_core.index.models import SeriesItem, SopItem, StudyItem
from infra.datasets.generate import make_instance, new_uid
from infra.local.provision import Stack
from tests.moto_stack import provisioned, stow_service
from tests.streams import settle


@dataclass
class Env:
    stack: Stack
    settings: Settings

    def store(self, *payloads: bytes) -> None:
        outcome = stow_service(self.settings).store_all([memoryview(p) for p in payloads], study=None)
        assert not outcome.failures, outcome.failures

    def stream_records(self) -> list[dict[str, Any]]:
        """Every record on the index table's stream, as Lambda would hand them over."""
        streams = boto3.client("dynamodbstreams")
        arn = self.stack.attributes["IndexTable"]["StreamArn"]
        records: list[dict[str, Any]] = []
        for shard in streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]:
            iterator = streams.get_shard_iterator(
                StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"]
            page = streams.get_records(ShardIterator=iterator, Limit=1000)
            records += [{**r, "eventSourceARN": arn} for r in page["Records"]]
        return records


@pytest.fixture
def env(aws: None) -> Iterator[Env]:
    stack, settings = provisioned()
    yield Env(stack, settings)


def aggregates(study: str) -> tuple[int, int, list[str], dict[str, int]]:
    item = StudyItem.get(*StudyItem.key(study), consistent_read=True)
    series = {
        s.series_uid: int(s.instance_count)
        for s in SeriesItem.query(StudyItem.key(study)[0], SeriesItem.sk.startswith("SERIES#"))
    }
    return int(item.instance_count), int(item.series_count), sorted(item.modalities or ()), series


def two_series_study(env: Env) -> tuple[str, str, str]:
    study, ct, mr = new_uid(), new_uid(), new_uid()
    env.store(*[make_instance(study=study, series=ct, modality="CT", InstanceNumber=n) for n in range(5)])
    env.store(*[make_instance(study=study, series=mr, modality="MR", InstanceNumber=n) for n in range(3)])
    return study, ct, mr


def test_counts_converge_from_the_stream(env: Env) -> None:
    # Given a study of a 5-instance CT series and a 3-instance MR series
    study, ct, mr = two_series_study(env)
    # When the aggregates function has read the stream
    settle(env.stack)
    # Then the study and each series count exactly what was stored
    assert aggregates(study) == (8, 2, ["CT", "MR"], {ct: 5, mr: 3})


def test_repeated_and_reordered_records_set_the_same_counts(env: Env) -> None:
    # Given the stream records of a two-series study, and a recount from them in order
    study, ct, mr = two_series_study(env)
    records = env.stream_records()
    recount = Aggregates()
    recount.recount(touched_in(records))
    expected = aggregates(study)
    # When the same records come again: reversed, shuffled, repeated, and a stale part last
    shuffled = records * 3
    random.Random(7).shuffle(shuffled)
    for batch in ([*reversed(records)], shuffled, records[:2]):
        recount.recount(touched_in(batch))
        # Then every recount leaves the exact counts
        assert aggregates(study) == expected == (8, 2, ["CT", "MR"], {ct: 5, mr: 3})


class FailingOnce(Aggregates):
    """A recount whose first update fails, as a throttled or interrupted invocation would."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    def _update(self, *args: Any, **kwargs: Any) -> None:
        if not self.failed:
            self.failed = True
            raise RuntimeError("injected: the function died mid-batch")
        super()._update(*args, **kwargs)


def test_a_batch_that_fails_midway_is_retried_and_converges(env: Env) -> None:
    # Given a stored study and a recount that dies on its first write
    study, ct, mr = two_series_study(env)
    failing = FailingOnce()
    # When the stream is delivered to it (the poller retries the batch, as Lambda does)
    settle(env.stack, aggregates=failing)
    # Then the failure happened, and the retried batch left the exact counts
    assert failing.failed
    assert aggregates(study) == (8, 2, ["CT", "MR"], {ct: 5, mr: 3})


def test_a_new_series_changes_the_study_aggregates(env: Env) -> None:
    # Given a settled study
    study, ct, mr = two_series_study(env)
    settle(env.stack)
    before = StudyItem.get(*StudyItem.key(study), consistent_read=True).version
    # When an SR series is added and the stream delivered
    sr = new_uid()
    env.store(make_instance(study=study, series=sr, modality="SR"))
    settle(env.stack)
    # Then the study counts it, lists its modality, and has a new content version
    assert aggregates(study) == (9, 3, ["CT", "MR", "SR"], {ct: 5, mr: 3, sr: 1})
    assert StudyItem.get(*StudyItem.key(study), consistent_read=True).version != before


def _own(pk: str, sk: str) -> bool:
    """An item only one instance's writes touch: its SOP claim or its instance item."""
    return pk.startswith("SOP#") or sk.startswith("INSTANCE#")


class WriteLog:
    """The items each PutItem and TransactWriteItems call names (a hook on pynamodb's calls)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[tuple[str, str, str]]]] = []
        self._lock = threading.Lock()

    def __call__(self, operation: str, params: dict[str, Any]) -> None:
        if operation == "PutItem":
            items = [("Put", params["Item"]["pk"]["S"], params["Item"]["sk"]["S"])]
        else:
            items = []
            for entry in params.get("TransactItems", []):
                ((action, body),) = entry.items()
                key = body.get("Key") or {"pk": body["Item"]["pk"], "sk": body["Item"]["sk"]}
                items.append((action, key["pk"]["S"], key["sk"]["S"]))
        with self._lock:
            self.calls.append((operation, items))

    def of(self, operation: str) -> list[list[tuple[str, str, str]]]:
        return [items for called, items in self.calls if called == operation]


def test_sixteen_writers_into_one_new_study_share_no_item(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given 16 writers, each with 8 instances of one new study (two series)
    study, series = new_uid(), [new_uid(), new_uid()]
    batches = [
        [make_instance(study=study, series=series[n % 2], InstanceNumber=w * 8 + n) for n in range(8)]
        for w in range(16)
    ]
    log = WriteLog()
    original = Connection._make_api_call

    def recorded(self: Any, operation: str, operation_kwargs: dict[str, Any], *a: Any, **k: Any) -> Any:
        if operation in ("PutItem", "TransactWriteItems"):
            log(operation, operation_kwargs)
        return original(self, operation, operation_kwargs, *a, **k)

    monkeypatch.setattr(Connection, "_make_api_call", recorded)
    # When they all store at once
    barrier = threading.Barrier(16)
    errors: list[BaseException] = []

    def writer(payloads: list[bytes]) -> None:
        try:
            barrier.wait()
            env.store(*payloads)
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(batch,)) for batch in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    # Then every instance is stored once
    puts = [pk_sk for (pk_sk,) in log.of("PutItem")]
    sops = {pk for _, pk, _ in puts if pk.startswith("SOP#")}
    assert len(sops) == 128
    assert all(SopItem.get(pk, "SOP").study_uid == study for pk in sops)
    # And every write outside a transaction names one instance's own item (its SOP claim
    # or its instance item), so it can conflict with no other writer
    assert all(_own(pk, sk) for _, pk, sk in puts)
    # And the only transactions create the study or a series, with their first instance
    transactions = log.of("TransactWriteItems")
    assert all(any(sk == "STUDY" or sk.startswith("SERIES#") for _, _, sk in call) for call in transactions)
    creators = {
        sk for call in transactions for action, pk, sk in call if action == "Put" and not _own(pk, sk)
    }
    assert creators <= {"STUDY", *(f"SERIES#{s}" for s in series)}
    committed_alone = [sk for _, _, sk in puts if sk.startswith("INSTANCE#")]
    assert len(committed_alone) >= 128 - len(transactions)
    # And once the stream is read the counts are exact
    settle(env.stack)
    assert aggregates(study) == (128, 2, ["CT"], {series[0]: 64, series[1]: 64})
