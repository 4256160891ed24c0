"""The change feed against moto: InstanceStored derived from the index tables' streams.

The invariant (docs/write-safety.md): a committed instance write always gets exactly one
``InstanceStored`` downstream, at least once: redeliveries carry the same ``writeKey``, which
is what consumers de-duplicate on. Resources come from template.yaml; the streams are read
by the local runtime's poller and handed to the change feed's code (tests/streams.py).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest
from pydicom.dataset import Dataset

from dicomweb_core import config
from dicomweb_core.changefeed.feed import ChangeFeed
from dicomweb_core.config import DuplicatePolicy, Settings
from dicomweb_core.index import writer
from dicomweb_core.index.table import use_by_default
from dicomweb_core.index.writer import IndexWriter
from dicomweb_core.stow.service import StowService
from infra.datasets.generate import make_dataset, new_uid, to_part10
from infra.local.provision import Stack
from infra.local.streams import StreamPoller, StreamPositions
from infra.local.workers import FunctionError
from infra.samtemplate import load_template
from tests.faults import Crash, Faults
from tests.lambda_harness import LambdaContext, load_handler
from tests.moto_stack import provisioned, stow_service
from tests.streams import FUNCTION, InProcess, deliver_stream, template_feed

TEMPLATE = load_template()


@dataclass
class Env:
    stack: Stack
    settings: Settings
    sqs: Any
    captured: str  # every InstanceStored on the bus, whatever its source

    def stow(self, *datasets: Dataset, policy: DuplicatePolicy = DuplicatePolicy.REJECT) -> list[str]:
        """One STOW request; the SOP Instance UIDs it acknowledged."""
        service = stow_service(replace(self.settings, duplicate_policy=policy))
        outcome = service.store_all([memoryview(to_part10(ds)) for ds in datasets], study=None)
        return [s.sop_instance_uid for s in outcome.stored]

    def published(self) -> list[dict[str, Any]]:
        """Drain the capture queue: the InstanceStored events on the bus so far."""
        found: list[dict[str, Any]] = []
        while messages := self.sqs.receive_message(QueueUrl=self.captured, MaxNumberOfMessages=10).get(
            "Messages", []
        ):
            for message in messages:
                found.append(json.loads(message["Body"]))
                self.sqs.delete_message(QueueUrl=self.captured, ReceiptHandle=message["ReceiptHandle"])
        return found

    def delivered(self, **options: Any) -> list[dict[str, Any]]:
        """Deliver the streams, then what reached the bus."""
        deliver_stream(self.stack, **options)
        return self.published()

    def object_of(self, sop: str) -> tuple[str, str | None, int]:
        existing = IndexWriter().find(sop)
        assert existing is not None, f"{sop} is not indexed"
        return existing.stored.key, existing.stored.version_id, existing.stored.size

    def dead_letters(self) -> list[dict[str, Any]]:
        queue = self.stack.physical_ids["ChangeFeedDeadLetterQueue"]
        messages = self.sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", [])
        return [json.loads(m["Body"]) for m in messages]


@pytest.fixture
def env(aws: None) -> Iterator[Env]:
    stack, settings = provisioned()
    sqs, events = boto3.client("sqs"), boto3.client("events")
    queue = sqs.create_queue(QueueName="instance-stored")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    bus = settings.event_bus_name
    events.put_rule(
        Name="stored", EventBusName=bus, EventPattern=json.dumps({"detail-type": ["InstanceStored"]})
    )
    events.put_targets(Rule="stored", EventBusName=bus, Targets=[{"Id": "q", "Arn": arn}])
    yield Env(stack, settings, sqs, queue)
    use_by_default(settings.table_name)


def details(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e["detail"] for e in events]


class RefusingEvents:
    """EventBridge in front of the real (moto) one, refusing as told on the n-th PutEvents call."""

    def __init__(self, *, call: int, refuse_entry: int | None = None, times: int = 1) -> None:
        self.real: Any = boto3.client("events")
        self.call, self.refuse_entry, self.times = call, refuse_entry, times
        self.calls = 0

    def put_events(self, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        self.calls += 1
        if self.calls < self.call or self.times == 0:
            return dict(self.real.put_events(Entries=Entries))
        self.times -= 1
        if self.refuse_entry is None:
            raise ConnectionError("EventBridge unreachable (injected)")
        accepted = [e for n, e in enumerate(Entries) if n != self.refuse_entry]
        self.real.put_events(Entries=accepted)
        results: list[dict[str, Any]] = [{"EventId": f"e{n}"} for n in range(len(Entries))]
        results[self.refuse_entry] = {"ErrorCode": "InternalFailure", "ErrorMessage": "injected"}
        return {"FailedEntryCount": 1, "Entries": results}


def stream_poller(env: Env, invoker: InProcess, *, positions: StreamPositions | None = None) -> StreamPoller:
    """The local runtime's poller on the primary index table's stream, with its template settings."""
    (source,) = [s for s in TEMPLATE.stream_sources() if s.table == "IndexTable" and s.function == FUNCTION]
    return StreamPoller(
        source,
        streams=env.stack.client("dynamodbstreams"),
        stream_arn=env.stack.attributes["IndexTable"]["StreamArn"],
        pool=invoker,
        positions=positions or StreamPositions(),
        region=env.stack.region,
        sqs=env.sqs,
        on_failure_url=env.stack.physical_ids["ChangeFeedDeadLetterQueue"],
        retry_after_s=0,
    )


# ---------------------------------------------------------------- one event per committed write


def test_each_committed_instance_is_announced_once_with_the_detail_consumers_read(env: Env) -> None:
    # Given a study with a CT series of three instances and an MR series of one, in one request
    study, ct, mr = new_uid(), new_uid(), new_uid()
    datasets = [make_dataset(study=study, series=ct, modality="CT") for _ in range(3)]
    datasets.append(make_dataset(study=study, series=mr, modality="MR"))
    assert len(env.stow(*datasets)) == 4
    # When the stream is delivered
    events = env.delivered()
    # Then there is one InstanceStored per instance, from the primary store's source
    assert Counter(e["detail"]["sopInstanceUID"] for e in events) == Counter(
        ds.SOPInstanceUID for ds in datasets
    )
    assert {(e["source"], e["detail-type"]) for e in events} == {("dicomweb", "InstanceStored")}
    # And each carries what STOW published before, naming the object the index names, and a write key
    by_sop = {d["sopInstanceUID"]: d for d in details(events)}
    for ds in datasets:
        key, version, size = env.object_of(ds.SOPInstanceUID)
        detail = by_sop[ds.SOPInstanceUID]
        assert detail == {
            "studyInstanceUID": study,
            "seriesInstanceUID": ds.SeriesInstanceUID,
            "sopInstanceUID": ds.SOPInstanceUID,
            "sopClassUID": ds.SOPClassUID,
            "modality": ds.Modality,
            "bucket": env.settings.bucket_name,
            "s3Key": key,
            "s3VersionId": version,
            "size": size,
            "writeKey": detail["writeKey"],
        }
        assert len(detail["writeKey"]) == 32
    assert len({d["writeKey"] for d in by_sop.values()}) == 4
    # And delivering again announces nothing more (the checkpoint moved past them)
    assert env.delivered() == []


def test_an_overwrite_is_a_new_write_and_an_identical_resend_is_none(env: Env) -> None:
    # Given a stored instance, announced
    original = make_dataset(ImageComments="original")
    env.stow(original, policy=DuplicatePolicy.OVERWRITE)
    (first,) = details(env.delivered())
    # When the very same bytes are sent again, then a corrected object under the same UIDs
    env.stow(original, policy=DuplicatePolicy.OVERWRITE)
    assert env.delivered() == []
    corrected = make_dataset(
        study=original.StudyInstanceUID,
        series=original.SeriesInstanceUID,
        sop=original.SOPInstanceUID,
        ImageComments="corrected",
    )
    assert env.stow(corrected, policy=DuplicatePolicy.OVERWRITE) == [original.SOPInstanceUID]
    # Then the overwrite is announced once, with the new object and a new write key
    (second,) = details(env.delivered())
    key, version, _ = env.object_of(original.SOPInstanceUID)
    assert (second["s3Key"], second["s3VersionId"]) == (key, version)
    assert second["s3Key"] != first["s3Key"] and second["writeKey"] != first["writeKey"]


def test_a_refused_or_failed_write_announces_nothing(env: Env, faults: Faults) -> None:
    # Given a stored instance (announced), a different object reusing its SOP Instance UID,
    # and an instance whose STOW dies just before its index transaction
    kept = make_dataset(PatientName="Kept^Patient")
    env.stow(kept)
    env.delivered()
    imposter = make_dataset(
        study=kept.StudyInstanceUID,
        series=kept.SeriesInstanceUID,
        sop=kept.SOPInstanceUID,
        PatientName="Other",
    )
    with faults.armed():
        env.stow(make_dataset())
    commit = faults.calls.index("TransactWriteItems")
    env.delivered()
    # When both are sent
    assert env.stow(imposter) == []
    with faults.armed("crash_before", at=commit), pytest.raises(Crash):
        env.stow(make_dataset())
    # Then neither is announced, and nothing was dead-lettered
    assert env.delivered() == []
    assert env.dead_letters() == []


def test_a_cancelled_transaction_streams_nothing_and_its_retry_is_announced_once(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a series, and a stale read that makes the next instance's first transaction
    # cancel after its SOP and instance items were applied (the series "appears" on retry)
    study, series = new_uid(), new_uid()
    env.stow(make_dataset(study=study, series=series))
    env.delivered()
    real_context = writer._context
    stale = {"left": 1}

    def stale_context(instance: Any, items: Any, deletions: int, **flags: bool) -> Any:
        context = real_context(instance, items, deletions, **flags)
        if stale["left"]:
            stale["left"] -= 1
            return replace(context, series_exists=False)
        return context

    monkeypatch.setattr(writer, "_context", stale_context)
    second = make_dataset(study=study, series=series)
    # When it is stored (cancelled once, then committed)
    assert env.stow(second) == [second.SOPInstanceUID]
    # Then it is announced exactly once: the cancelled attempt left nothing in the stream
    assert stale["left"] == 0
    assert [d["sopInstanceUID"] for d in details(env.delivered())] == [second.SOPInstanceUID]


def test_a_crash_right_after_the_commit_still_announces_the_instance(env: Env, faults: Faults) -> None:
    # Given a STOW whose process dies right after DynamoDB committed its transaction
    # (before it could answer, or publish anything)
    with faults.armed():
        env.stow(make_dataset())
    commit = faults.calls.index("TransactWriteItems")
    env.delivered()
    ds = make_dataset()

    def die() -> None:
        raise Crash("the process died after the commit")

    with faults.armed("run_after", at=commit, other=die), pytest.raises(Crash):
        env.stow(ds)
    # When the stream is delivered
    events = env.delivered()
    # Then the committed instance is announced, naming the object the index names
    (detail,) = details(events)
    assert detail["sopInstanceUID"] == ds.SOPInstanceUID
    assert (detail["s3Key"], detail["s3VersionId"], detail["size"]) == env.object_of(ds.SOPInstanceUID)
    # And the client's retry (identical bytes) is acknowledged without a second announcement
    assert env.stow(ds) == [ds.SOPInstanceUID]
    assert env.delivered() == []


# ---------------------------------------------------------------- at least once, in any order


def test_replayed_and_out_of_order_records_announce_each_write_under_one_key(env: Env) -> None:
    # Given two first stores and an overwrite, and the stream records Lambda delivered for them
    first, second = make_dataset(), make_dataset()
    env.stow(first, second, policy=DuplicatePolicy.OVERWRITE)
    env.stow(
        make_dataset(
            study=first.StudyInstanceUID,
            series=first.SeriesInstanceUID,
            sop=first.SOPInstanceUID,
            ImageComments="corrected",
        ),
        policy=DuplicatePolicy.OVERWRITE,
    )
    invoked = deliver_stream(env.stack, tables=("IndexTable",))
    once = details(env.published())
    records = [r for event in invoked.events for r in event["Records"]]
    assert len(once) == 3
    # When the records come again, duplicated and in reverse order (a replayed shard)
    result = template_feed(env.stack).handle([*reversed(records), *records[::2]])
    again = details(env.published())
    # Then every event is one of the three writes, identical to its first delivery under
    # its writeKey: consumers de-duplicating on writeKey see each write exactly once
    assert result.failed is None
    by_key = {d["writeKey"]: d for d in once}
    assert len(by_key) == 3
    assert all(by_key[d["writeKey"]] == d for d in again)
    assert {d["writeKey"] for d in again} == set(by_key)
    # And records that are not instance writes (counters, postings, the SOP item) announce nothing
    kinds = Counter(r["dynamodb"].get("NewImage", {}).get("kind", {}).get("S") for r in records)
    assert kinds["instance"] == 3 and sum(kinds.values()) > 3


def instance_records(invoked: InProcess) -> list[dict[str, Any]]:
    """The records of instance items among those Lambda delivered, in stream order."""
    return [
        r
        for event in invoked.events
        for r in event["Records"]
        if r["dynamodb"].get("NewImage", {}).get("kind", {}).get("S") == "instance"
    ]


@pytest.mark.parametrize("refuse_entry", [2, None], ids=["entry-refused", "call-failed"])
def test_a_put_events_failure_mid_batch_reports_the_first_record_not_published(
    env: Env, refuse_entry: int | None
) -> None:
    # Given a batch of 25 instance records (three PutEvents calls of at most ten entries),
    # and EventBridge refusing one entry of the second call, or failing the whole call
    env.stow(*[make_dataset() for _ in range(25)])
    records = instance_records(deliver_stream(env.stack, tables=("IndexTable",)))
    env.published()
    assert len(records) == 25
    feed = template_feed(env.stack, _client=RefusingEvents(call=2, refuse_entry=refuse_entry))
    # When the feed handles the batch
    first = feed.handle(records)
    # Then it reports the first record whose event is not on the bus: Lambda retries from there
    failed_at = 10 + (refuse_entry or 0)
    assert first.failed == records[failed_at]["dynamodb"]["SequenceNumber"]
    assert first.published == failed_at + (7 if refuse_entry is not None else 0)
    # And the retry from that record completes the batch: every write announced, at least once
    assert feed.handle(records[failed_at:]).failed is None
    published = Counter(d["writeKey"] for d in details(env.published()))
    assert len(published) == 25
    # (a call with a refused entry accepted the entries after it: those come twice)
    assert sum(n - 1 for n in published.values()) == (7 if refuse_entry is not None else 0)


class FailingOnce(InProcess):
    """The change feed, but its first invocation publishes only up to the k-th record and
    reports that one as failed (as a PutEvents failure there would)."""

    def __init__(self, feed: ChangeFeed, k: int) -> None:
        super().__init__(feed)
        self.k = k

    def invoke(self, event: Mapping[str, Any]) -> Any:
        if self.events:
            return super().invoke(event)
        self.events.append(dict(event))
        records = event["Records"]
        assert self.feed.handle(records[: self.k]).failed is None
        return {"batchItemFailures": [{"itemIdentifier": records[self.k]["dynamodb"]["SequenceNumber"]}]}


def test_the_mapping_retries_from_the_reported_record_only(env: Env) -> None:
    # Given stored instances, and a first invocation that reports its 5th record as failed
    datasets = [make_dataset() for _ in range(3)]
    env.stow(*datasets)
    invoker = FailingOnce(template_feed(env.stack), k=4)
    # When the stream is delivered
    stream_poller(env, invoker).drain()
    # Then the next invocation starts at the reported record, and nothing before it comes again
    reported = invoker.events[0]["Records"][4]["dynamodb"]["SequenceNumber"]
    assert invoker.events[1]["Records"][0]["dynamodb"]["SequenceNumber"] == reported
    later = [int(r["dynamodb"]["SequenceNumber"]) for e in invoker.events[1:] for r in e["Records"]]
    assert min(later) == int(reported)
    # And every instance is announced exactly once
    assert Counter(d["sopInstanceUID"] for d in details(env.published())) == Counter(
        ds.SOPInstanceUID for ds in datasets
    )


def test_a_function_error_is_bisected_down_to_the_record_that_fails(env: Env) -> None:
    # Given stored instances, one of whose records makes the function raise every time
    datasets = [make_dataset() for _ in range(3)]
    env.stow(*datasets)
    poison = make_dataset()
    env.stow(poison)
    env.stow(make_dataset())

    class Poisoned(InProcess):
        def invoke(self, event: Mapping[str, Any]) -> Any:
            for record in event["Records"]:
                image = record["dynamodb"].get("NewImage", {})
                if image.get("sop_uid", {}).get("S") == poison.SOPInstanceUID:
                    self.events.append(dict(event))
                    raise FunctionError("poisoned record (injected)")
            return super().invoke(event)

    invoker = Poisoned(template_feed(env.stack))
    # When the stream is delivered (BisectBatchOnFunctionError is on)
    stream_poller(env, invoker).drain()
    # Then the batch was halved until the poison record failed alone, which alone was given up
    (failure,) = env.dead_letters()
    info = failure["DDBStreamBatchInfo"]
    assert info["batchSize"] == 1
    assert failure["responseContext"]["functionError"] == "Unhandled"
    # And every other instance is announced
    announced = {d["sopInstanceUID"] for d in details(env.published())}
    assert poison.SOPInstanceUID not in announced
    assert {ds.SOPInstanceUID for ds in datasets} <= announced


def test_a_batch_that_keeps_failing_goes_to_the_dead_letter_queue_and_the_stream_moves_on(env: Env) -> None:
    # Given EventBridge failing every call for longer than the mapping's retries
    doomed = make_dataset()
    env.stow(doomed)
    (source,) = [s for s in TEMPLATE.stream_sources() if s.table == "IndexTable" and s.function == FUNCTION]
    events = RefusingEvents(call=1, times=source.maximum_retry_attempts + 1)
    # When the stream is delivered
    invoked = deliver_stream(env.stack, feed=template_feed(env.stack, _client=events), tables=("IndexTable",))
    # Then the batch was tried once and retried MaximumRetryAttempts times, then recorded in
    # the OnFailure queue with its shard and sequence range, as Lambda records it
    assert len(invoked.events) == source.maximum_retry_attempts + 1
    (failure,) = env.dead_letters()
    info = failure["DDBStreamBatchInfo"]
    assert failure["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert info["streamArn"] == env.stack.attributes["IndexTable"]["StreamArn"]
    sequence = [r["dynamodb"]["SequenceNumber"] for r in invoked.events[-1]["Records"]]
    assert (info["startSequenceNumber"], info["endSequenceNumber"]) == (sequence[0], sequence[-1])
    assert env.published() == []
    # And later writes are announced: the stream was not blocked
    later = make_dataset()
    env.stow(later)
    assert [d["sopInstanceUID"] for d in details(env.delivered(tables=("IndexTable",)))] == [
        later.SOPInstanceUID
    ]


# ---------------------------------------------------------------- the research store


def test_research_store_writes_are_announced_with_source_dicomweb_deid(env: Env) -> None:
    # Given a StowService bound to the research store (as de-identification stores its copies)
    research = replace(
        env.settings,
        table_name=env.stack.physical_ids["DeidTable"],
        bucket_name=env.stack.physical_ids["DeidBucket"],
        event_source="dicomweb.deid",
    )
    use_by_default(research.table_name)
    ds = make_dataset(modality="MR")
    stow = StowService.of(research)
    assert [s.sop_instance_uid for s in stow.store_all([memoryview(to_part10(ds))], study=None).stored] == [
        ds.SOPInstanceUID
    ]
    # When the streams are delivered
    (event,) = env.delivered()
    # Then its InstanceStored comes from dicomweb.deid and names the research bucket
    assert event["source"] == "dicomweb.deid"
    assert event["detail"]["bucket"] == research.bucket_name
    assert event["detail"]["modality"] == "MR"
    # And the primary store's rules (source dicomweb) do not take it
    deid_queue = env.stack.physical_ids["DeidQueue"]
    assert env.sqs.receive_message(QueueUrl=deid_queue).get("Messages", []) == []


# ---------------------------------------------------------------- the function and the template


@pytest.fixture
def changefeed(env: Env, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """functions/changefeed/app.py with the environment the template gives ChangeFeedFunction."""
    for name, value in env.stack.function_environment(TEMPLATE.functions()["ChangeFeedFunction"]).items():
        monkeypatch.setenv(name, value)
    config.settings.cache_clear()
    yield load_handler("ChangeFeedFunction")
    config.settings.cache_clear()


def test_the_handler_publishes_and_reports_an_unreadable_record(env: Env, changefeed: ModuleType) -> None:
    # Given the records of one stored instance, followed by one the feed cannot read
    ds = make_dataset()
    env.stow(ds)
    (instance,) = instance_records(deliver_stream(env.stack, tables=("IndexTable",)))
    env.published()
    broken = {
        **instance,
        "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/other/stream/x",
        "dynamodb": {**instance["dynamodb"], "SequenceNumber": "99999999999999999999999"},
    }
    # When the Lambda handler runs on them
    response = changefeed.handler({"Records": [instance, broken]}, LambdaContext("ChangeFeedFunction"))
    # Then the instance is announced and the other record is reported, to be retried from
    assert [d["sopInstanceUID"] for d in details(env.published())] == [ds.SOPInstanceUID]
    assert response == {"batchItemFailures": [{"itemIdentifier": "99999999999999999999999"}]}


def test_both_index_tables_stream_to_the_change_feed_with_an_alarmed_dead_letter_queue(env: Env) -> None:
    # Given the template's tables and stream sources
    tables = TEMPLATE.resources_of_type("AWS::DynamoDB::Table")
    sources = {s.table: s for s in TEMPLATE.stream_sources() if s.function == FUNCTION}
    # Then both index tables stream old and new images to ChangeFeedFunction from the start
    for table in ("IndexTable", "DeidTable"):
        assert tables[table]["Properties"]["StreamSpecification"] == {"StreamViewType": "NEW_AND_OLD_IMAGES"}
        source = sources[table]
        assert (source.function, source.starting_position) == ("ChangeFeedFunction", "TRIM_HORIZON")
        assert source.reports_failures and source.bisect_on_error and source.maximum_retry_attempts >= 0
        assert source.batch_size == 100 and source.on_failure == "ChangeFeedDeadLetterQueue"
    # And the dead-letter queue has an alarm on the stack's alarm topic
    alarms = [
        a["Properties"]
        for a in TEMPLATE.resources_of_type("AWS::CloudWatch::Alarm").values()
        if "ChangeFeedDeadLetterQueue" in json.dumps(a["Properties"].get("Dimensions", []))
    ]
    assert [a["AlarmActions"] for a in alarms] == [[{"Ref": "AlarmTopic"}]]
    # And each table's writes are announced with its store's source and bucket
    feed = template_feed(env.stack)
    ids = env.stack.physical_ids
    assert {t: (f.source, f.bucket) for t, f in feed.targets.items()} == {
        ids["IndexTable"]: ("dicomweb", ids["InstanceBucket"]),
        ids["DeidTable"]: ("dicomweb.deid", ids["DeidBucket"]),
    }


# ---------------------------------------------------------------- the local runtime's checkpoint


def stream_shard(env: Env) -> tuple[str, str]:
    arn = env.stack.attributes["IndexTable"]["StreamArn"]
    (shard,) = env.stack.client("dynamodbstreams").describe_stream(StreamArn=arn)["StreamDescription"][
        "Shards"
    ]
    return arn, shard["ShardId"]


def test_saved_positions_resume_without_replaying_old_records(env: Env, tmp_path: Path) -> None:
    # Given records delivered by a poller whose positions are saved (as `make serve` saves
    # them with its snapshot), while another consumer of the stream has not begun (so the
    # records stay in the stream)
    path = tmp_path / "stream-positions.json"
    env.stow(make_dataset(), make_dataset())
    before = StreamPositions(path)
    before.register("SlowerFunction", stream_shard(env)[0])
    stream_poller(env, InProcess(template_feed(env.stack)), positions=before).drain()
    before.save()
    assert len(env.published()) == 2
    # When a restarted runtime resumes from them, after one more instance was stored
    later = make_dataset()
    env.stow(later)
    invoker = InProcess(template_feed(env.stack))
    stream_poller(env, invoker, positions=StreamPositions(path, resume=True)).drain()
    # Then only the new records are delivered, and only the new instance is announced
    assert [d["sopInstanceUID"] for d in details(env.published())] == [later.SOPInstanceUID]
    delivered = [int(r["dynamodb"]["SequenceNumber"]) for e in invoker.events for r in e["Records"]]
    (saved,) = json.loads(path.read_text()).values()
    assert min(delivered) == int(saved) + 1


def test_records_every_consumer_passed_are_trimmed_from_the_stream(env: Env) -> None:
    # Given a stream delivered to its one consumer
    env.stow(make_dataset(), make_dataset())
    positions = StreamPositions()
    stream_poller(env, InProcess(template_feed(env.stack)), positions=positions).drain()
    arn, shard = stream_shard(env)
    done = positions.get("ChangeFeedFunction", arn, shard)
    assert done is not None
    # When the stream is read from its start (TRIM_HORIZON), as a new consumer would
    streams = env.stack.client("dynamodbstreams")
    iterator = streams.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON")
    records = streams.get_records(ShardIterator=iterator["ShardIterator"])["Records"]
    # Then the delivered records are gone (as DynamoDB trims a stream), so moto's state and
    # the local runtime's snapshot do not grow with them
    assert records == []
    # And a later write is numbered after them
    env.stow(make_dataset())
    iterator = streams.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON")
    records = streams.get_records(ShardIterator=iterator["ShardIterator"])["Records"]
    assert records and int(records[0]["dynamodb"]["SequenceNumber"]) == int(done) + 1
