"""De-identification into the research store against moto: InstanceStored → DeidPipeline → /deid.

Resources come from template.yaml through the local runtime's provisioner: the primary
STOW commits to the index, its stream's InstanceStored reaches the bus (tests/streams.py),
the template's DeidRule queues it in DeidQueue, and the pipeline stores its copies through
a StowService bound to DeidBucket and DeidTable.
The pynamodb models serve one table at a time, so every step binds the table it reads
or writes.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any

import boto3
import pydicom
import pytest
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import SecondaryCaptureImageStorage, UltrasoundImageStorage

from dicomweb_core import config
from dicomweb_core.config import Settings
from dicomweb_core.hooks.deid.pipeline import DeidPipeline, Outcome, Rules
from dicomweb_core.hooks.deid.profile import Dates, Deidentifier, Options
from dicomweb_core.index.models import StudyItem
from dicomweb_core.index.table import use_by_default
from dicomweb_core.index.write_results import StoredObject
from dicomweb_core.index.writer import IndexWriter
from dicomweb_core.storage import ObjectReader, S3InstanceStore
from dicomweb_core.stow.service import StowService
from infra.datasets.generate import (
    STRUCTURED_PHI_VALUES,
    make_phi_gsps,
    make_phi_kos,
    make_phi_rich,
    make_phi_sr,
    new_uid,
    to_part10,
)
from infra.local.provision import Stack
from infra.samtemplate import load_template
from tests.faults import FAULTS, Crash, Faults
from tests.lambda_harness import LambdaContext, load_handler, sqs_record
from tests.moto_stack import provisioned, store_ok, stow_service
from tests.streams import deliver_stream, settle
from tests.write_invariants import check

ALL_MODALITIES = Rules(frozenset({"*"}), quarantine_burned_in=True)
PHI = (
    "Doe^Jane",
    "PID-12345",
    "ACC-998877",
    "St. Elsewhere",
    "Smith^Referring",
    "Jones^Operator",
    "Secret^Perf",
    "Head CT for",
    "221B Baker Street",
    "private PHI",
    "20240115",  # StudyDate (shifted under the Modified Dates option)
    "20240120",  # SeriesDate
    "19700101",  # PatientBirthDate
)


def phi_rich(*, study: str | None = None, modality: str = "CT", **attributes: Any) -> Dataset:
    return make_phi_rich(study=study, modality=modality, **attributes)


def original_uids(ds: Dataset) -> list[str]:
    return [
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
        ds.SOPInstanceUID,
        ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID,
    ]


def assert_no_phi(data: bytes, *, also: list[str], where: str) -> None:
    text = data.decode("latin-1")
    for value in (*PHI, *also):
        assert value not in text, f"{value!r} found in {where}"


@dataclass
class DeidEnv:
    stack: Stack
    primary: Settings
    research: Settings
    stow: StowService
    deidentifier: Deidentifier
    s3: Any
    sqs: Any

    @property
    def queue(self) -> str:
        return self.stack.physical_ids["DeidQueue"]

    def store(self, *datasets: Dataset) -> list[dict[str, Any]]:
        """STOW into the primary store; the InstanceStored events DeidRule queued, in order."""
        use_by_default(self.primary.table_name)
        outcome = self.stow.store_all([memoryview(to_part10(ds)) for ds in datasets], study=None)
        assert not outcome.failures, outcome.failures
        events = self.queued()
        by_sop = {e["detail"]["sopInstanceUID"]: e["detail"] for e in events}
        assert len(events) == len(datasets)
        return [by_sop[ds.SOPInstanceUID] for ds in datasets]

    def queued(self) -> list[dict[str, Any]]:
        """Drain DeidQueue: every event the template's rule delivered so far (once the
        streams delivered what was committed)."""
        deliver_stream(self.stack)
        found: list[dict[str, Any]] = []
        while True:
            messages = self.sqs.receive_message(QueueUrl=self.queue, MaxNumberOfMessages=10).get(
                "Messages", []
            )
            if not messages:
                return found
            for message in messages:
                found.append(json.loads(message["Body"]))
                self.sqs.delete_message(QueueUrl=self.queue, ReceiptHandle=message["ReceiptHandle"])

    def pipeline(self, rules: Rules = ALL_MODALITIES) -> DeidPipeline:
        research_store = S3InstanceStore(self.research.bucket_name)
        return DeidPipeline(
            source=ObjectReader(self.primary.bucket_name),
            deidentifier=self.deidentifier,
            stow=StowService(settings=self.research, store=research_store, index=IndexWriter()),
            quarantine=research_store,
            rules=rules,
        )

    def deidentify(self, detail: dict[str, Any], rules: Rules = ALL_MODALITIES) -> Outcome:
        use_by_default(self.research.table_name)
        return self.pipeline(rules).process(detail)

    def calls_of(self, faults: Faults, request: Callable[[], Any]) -> list[str]:
        """The AWS calls ``request`` makes, undisturbed."""
        with faults.armed():
            request()
        return list(faults.calls)

    def expected_copy(self, detail: dict[str, Any]) -> bytes:
        """The de-identified Part 10 bytes the event must produce (the profile is deterministic)."""
        source = ObjectReader(self.primary.bucket_name).read(
            detail["s3Key"], version_id=detail["s3VersionId"]
        )
        buffer = io.BytesIO()
        self.deidentifier.deidentify(pydicom.dcmread(io.BytesIO(source))).save_as(
            buffer, enforce_file_format=True
        )
        return buffer.getvalue()

    # ------------------------------------------------------------ the research store
    def research_study(self, original_study: str) -> StudyItem | None:
        settle()  # the research store's aggregates, as AggregatesFunction recounts them
        use_by_default(self.research.table_name)
        try:
            return StudyItem.get(*StudyItem.key(self.deidentifier.uid(original_study)), consistent_read=True)
        except StudyItem.DoesNotExist:
            return None

    def research_sop(self, original_sop: str) -> StoredObject | None:
        """What the research index names for the copy of ``original_sop``."""
        use_by_default(self.research.table_name)
        existing = IndexWriter().find(self.deidentifier.uid(original_sop))
        return existing.stored if existing is not None else None

    def research_copy(self, original_sop: str) -> Dataset:
        item = self.research_sop(original_sop)
        assert item is not None, "the copy is not indexed in the research table"
        body = self.s3.get_object(Bucket=self.research.bucket_name, Key=item.key, VersionId=item.version_id)[
            "Body"
        ].read()
        return pydicom.dcmread(io.BytesIO(body))

    def research_objects(self, prefix: str = "") -> dict[str, list[bytes]]:
        """Every version of every object in the research bucket, by key."""
        found: dict[str, list[bytes]] = {}
        pages = self.s3.get_paginator("list_object_versions").paginate(
            Bucket=self.research.bucket_name, Prefix=prefix
        )
        for page in pages:
            for version in page.get("Versions", []):
                body = self.s3.get_object(
                    Bucket=self.research.bucket_name, Key=version["Key"], VersionId=version["VersionId"]
                )["Body"].read()
                found.setdefault(version["Key"], []).append(body)
        return found

    def research_index_items(self) -> list[dict[str, Any]]:
        paginator = boto3.client("dynamodb").get_paginator("scan")
        return [
            item for page in paginator.paginate(TableName=self.research.table_name) for item in page["Items"]
        ]


def template_options(stack: Stack) -> Options:
    """The profile options DeidentifyFunction gets from the template's parameters."""
    environment = stack.function_environment(load_template().functions()["DeidentifyFunction"])
    names = [n for n in environment["DEID_OPTIONS"].split(",") if n and n != "none"]
    return Options(dates=Dates(environment["DEID_DATES"]), **dict.fromkeys(names, True))


@pytest.fixture
def env(aws: None) -> Iterator[DeidEnv]:
    stack, primary = provisioned()
    research = replace(
        primary,
        table_name=stack.physical_ids["DeidTable"],
        bucket_name=stack.physical_ids["DeidBucket"],
        event_source="dicomweb.deid",
    )
    secret = boto3.client("secretsmanager").get_secret_value(SecretId=stack.physical_ids["DeidKeySecret"])
    deidentifier = Deidentifier(secret["SecretString"].encode(), template_options(stack))
    yield DeidEnv(
        stack,
        primary,
        research,
        stow_service(primary),
        deidentifier,
        boto3.client("s3"),
        boto3.client("sqs"),
    )
    use_by_default(primary.table_name)


def test_copy_is_stored_with_new_uids_and_no_phi(env: DeidEnv) -> None:
    # Given a PHI-rich CT stored in the primary store, announced on the bus and queued by DeidRule
    ds = phi_rich()
    (detail,) = env.store(ds)
    # When the pipeline processes the event
    outcome = env.deidentify(detail)
    # Then the copy is stored and indexed in the research store under new UIDs
    assert outcome.status == "stored"
    copy = env.research_copy(ds.SOPInstanceUID)
    assert copy.StudyInstanceUID == env.deidentifier.uid(ds.StudyInstanceUID)
    assert copy.SeriesInstanceUID == env.deidentifier.uid(ds.SeriesInstanceUID)
    assert copy.SOPInstanceUID == env.deidentifier.uid(ds.SOPInstanceUID)
    assert not set(original_uids(ds)) & {copy.StudyInstanceUID, copy.SeriesInstanceUID, copy.SOPInstanceUID}
    assert copy.PatientIdentityRemoved == "YES"
    assert copy.PatientID == env.deidentifier.pseudonym("PID-12345\0Doe^Jane")
    assert copy.file_meta.MediaStorageSOPInstanceUID == copy.SOPInstanceUID
    study = env.research_study(ds.StudyInstanceUID)
    assert study is not None
    assert (int(study.instance_count), int(study.series_count)) == (1, 1)
    # And no PHI is anywhere in the research bucket (instance, metadata document) or its index
    objects = env.research_objects()
    assert any(key.endswith(".dcm") for key in objects)
    assert any(key.endswith(".json") for key in objects)
    for key, versions in objects.items():
        for body in versions:
            assert_no_phi(body, also=original_uids(ds), where=key)
    assert_no_phi(
        json.dumps(env.research_index_items()).encode(), also=original_uids(ds), where="the research index"
    )
    # And the primary copy is untouched
    use_by_default(env.primary.table_name)
    primary = IndexWriter().find(ds.SOPInstanceUID)
    assert primary is not None
    original = env.s3.get_object(
        Bucket=env.primary.bucket_name, Key=primary.stored.key, VersionId=primary.stored.version_id
    )["Body"].read()
    assert original == to_part10(ds)


def every_uid(ds: Dataset) -> list[str]:
    """Every UID of the original that is not defined by the standard, at any depth."""
    found: list[str] = []

    def collect(_: Dataset, element: DataElement) -> None:
        if element.VR == "UI" and element.value:
            found.append(str(element.value))

    ds.walk(collect)
    return [uid for uid in found if not uid.startswith("1.2.840.10008.")]


STRUCTURED = {"comprehensive-sr": make_phi_sr, "gsps": make_phi_gsps, "key-object-selection": make_phi_kos}


@pytest.mark.parametrize("make", STRUCTURED.values(), ids=STRUCTURED.keys())
def test_structured_documents_reach_the_research_store_without_phi(
    env: DeidEnv, make: Callable[..., Dataset]
) -> None:
    # Given an SR, a presentation state or a key object selection (no pixels, so never
    # quarantined) with PHI in nested content items, staff codes, private blocks and the
    # original's retrieve URLs, stored in the primary store
    ds = make()
    (detail,) = env.store(ds)
    # When the pipeline processes its event with the template's options
    outcome = env.deidentify(detail)
    # Then the copy is stored, and no identifying value, original UID or URL of the
    # original is in any object of the research bucket (instance, metadata) or its index
    assert outcome.status == "stored"
    copy = env.research_copy(ds.SOPInstanceUID)
    assert copy.SOPClassUID == ds.SOPClassUID
    assert "ContentSequence" not in copy and "GraphicAnnotationSequence" not in copy
    also = every_uid(ds)
    objects = env.research_objects()
    assert any(key.endswith(".dcm") for key in objects)
    for key, versions in objects.items():
        for body in versions:
            assert_no_phi(body, also=[*STRUCTURED_PHI_VALUES, *also], where=key)
    assert_no_phi(
        json.dumps(env.research_index_items()).encode(),
        also=[*STRUCTURED_PHI_VALUES, *also],
        where="the research index",
    )


def test_research_events_do_not_loop_back_into_the_queue(env: DeidEnv) -> None:
    # Given a stored instance's event
    (detail,) = env.store(phi_rich())
    # When the pipeline stores the copy (which publishes InstanceStored as dicomweb.deid)
    assert env.deidentify(detail).status == "stored"
    # Then DeidRule (source dicomweb only) queues nothing for the copy
    assert env.queued() == []


def test_replayed_event_stores_nothing_new(env: DeidEnv) -> None:
    # Given an event that was processed once
    ds = phi_rich()
    (detail,) = env.store(ds)
    assert env.deidentify(detail).status == "stored"
    before = env.research_objects()
    first = env.research_copy(ds.SOPInstanceUID)
    # When the same event is delivered again (at-least-once delivery)
    outcome = env.deidentify(detail)
    # Then it succeeds, with the same bytes, no new object versions and unchanged counts
    assert outcome.status == "stored"
    assert env.research_objects() == before
    assert all(len(versions) == 1 for versions in before.values())
    assert env.research_copy(ds.SOPInstanceUID) == first
    study = env.research_study(ds.StudyInstanceUID)
    assert study is not None
    assert (int(study.instance_count), int(study.series_count)) == (1, 1)


def test_two_instances_of_a_study_map_to_one_research_study(env: DeidEnv) -> None:
    # Given two instances of one study in two series
    study = new_uid()
    first, second = phi_rich(study=study), phi_rich(study=study, modality="MR")
    details = env.store(first, second)
    # When both events are processed
    assert [env.deidentify(d).status for d in details] == ["stored", "stored"]
    # Then one research study holds both, with both series and modalities counted
    research = env.research_study(study)
    assert research is not None
    assert (int(research.instance_count), int(research.series_count)) == (2, 2)
    assert set(research.modalities or ()) == {"CT", "MR"}
    copies = [env.research_copy(first.SOPInstanceUID), env.research_copy(second.SOPInstanceUID)]
    assert {c.StudyInstanceUID for c in copies} == {env.deidentifier.uid(study)}
    assert len({c.PatientID for c in copies}) == 1
    assert len({c.StudyDate for c in copies}) == 1  # one shift per patient
    assert copies[0].StudyDate != first.StudyDate


def test_modality_rules_skip_unselected_modalities(env: DeidEnv) -> None:
    # Given rules selecting CT only, and an MR instance's event
    ds = phi_rich(modality="MR")
    (detail,) = env.store(ds)
    # When the pipeline processes it
    outcome = env.deidentify(detail, Rules(frozenset({"CT"}), quarantine_burned_in=True))
    # Then it is skipped: nothing in the research bucket or index
    assert outcome.status == "skipped"
    assert env.research_objects() == {}
    assert env.research_sop(ds.SOPInstanceUID) is None


@pytest.mark.parametrize(
    ("sop_class", "modality", "reason"),
    [
        (UltrasoundImageStorage, "US", "modality US"),
        (SecondaryCaptureImageStorage, "OT", "secondary capture"),
    ],
    ids=["ultrasound", "secondary-capture"],
)
def test_text_prone_instances_without_burned_in_no_are_quarantined(
    env: DeidEnv, sop_class: str, modality: str, reason: str
) -> None:
    # Given an instance whose pixels may carry burned-in text (BurnedInAnnotation absent)
    ds = phi_rich(modality=modality, SOPClassUID=sop_class)
    (detail,) = env.store(ds)
    # When the pipeline processes it
    outcome = env.deidentify(detail)
    # Then it is quarantined with a reason record, and nothing is published or indexed
    assert outcome.status == "quarantined"
    assert reason in outcome.reason
    objects = env.research_objects()
    assert objects, "no quarantine record"
    assert all(key.startswith("quarantine/") and key.endswith(".json") for key in objects)
    ((record_body,),) = objects.values()
    record = json.loads(record_body)
    assert reason in record["reason"]
    assert record["source"]["s3Key"] == detail["s3Key"]
    assert record["source"]["s3VersionId"] == detail["s3VersionId"]
    assert env.research_sop(ds.SOPInstanceUID) is None
    assert env.research_study(ds.StudyInstanceUID) is None


def test_ultrasound_with_burned_in_annotation_no_is_stored(env: DeidEnv) -> None:
    # Given an ultrasound that declares BurnedInAnnotation NO
    ds = phi_rich(modality="US", SOPClassUID=UltrasoundImageStorage, BurnedInAnnotation="NO")
    (detail,) = env.store(ds)
    # When the pipeline processes it
    outcome = env.deidentify(detail)
    # Then it is de-identified and stored like any other instance, not quarantined
    assert outcome.status == "stored"
    assert env.research_objects("quarantine/") == {}
    copy = env.research_copy(ds.SOPInstanceUID)
    assert copy.Modality == "US"
    assert copy.PatientIdentityRemoved == "YES"


# ---------------------------------------------------------------- the Lambda handler


@pytest.fixture
def deidentify(env: DeidEnv, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """functions/deidentify/app.py with the environment the template gives DeidentifyFunction."""
    spec = load_template().functions()["DeidentifyFunction"]
    for name, value in env.stack.function_environment(spec).items():
        monkeypatch.setenv(name, value)
    config.settings.cache_clear()
    module = load_handler("DeidentifyFunction")
    use_by_default(env.research.table_name)  # TABLE_NAME names DeidTable in this function
    yield module
    config.settings.cache_clear()


def test_handler_reports_only_the_record_whose_source_is_missing(
    env: DeidEnv, deidentify: ModuleType
) -> None:
    # Given a batch with a good InstanceStored event and one whose source object does not exist
    ds = phi_rich()
    (detail,) = env.store(ds)
    event = {"version": "0", "source": "dicomweb", "detail-type": "InstanceStored", "detail": detail}
    missing = {
        **event,
        "detail": {
            **detail,
            "s3Key": f"studies/{new_uid()}/series/{new_uid()}/instances/{new_uid()}.dcm",
            "s3VersionId": None,
        },
    }
    batch = {"Records": [sqs_record("good", event), sqs_record("missing", missing)]}
    # When the handler runs on the batch
    use_by_default(env.research.table_name)
    response = deidentify.handler(batch, LambdaContext("DeidentifyFunction"))
    # Then only the missing one is reported as failed, and the good one is in the research store
    assert response == {"batchItemFailures": [{"itemIdentifier": "missing"}]}
    copy = env.research_copy(ds.SOPInstanceUID)
    assert copy.PatientIdentityRemoved == "YES"
    # And the handler derived the same UIDs as any other holder of the key
    assert copy.SOPInstanceUID == env.deidentifier.uid(ds.SOPInstanceUID)


def test_handler_succeeds_for_a_good_batch(env: DeidEnv, deidentify: ModuleType) -> None:
    # Given a batch of one good event
    ds = phi_rich()
    (detail,) = env.store(ds)
    event = {"version": "0", "source": "dicomweb", "detail-type": "InstanceStored", "detail": detail}
    # When the handler runs
    use_by_default(env.research.table_name)
    response = deidentify.handler(
        {"Records": [sqs_record("only", event)]}, LambdaContext("DeidentifyFunction")
    )
    # Then nothing is reported failed and the copy is indexed
    assert response == {"batchItemFailures": []}
    assert env.research_sop(ds.SOPInstanceUID) is not None


@pytest.mark.slow  # sweeps every AWS call of the request: minutes against moto
def test_deidentification_survives_any_fault_at_any_step(env: DeidEnv, faults: Faults) -> None:
    (sample,) = env.store(phi_rich())
    shape = env.calls_of(faults, lambda: env.deidentify(sample))
    leaks = False
    acknowledged: dict[str, list[bytes]] = {}
    for fault in FAULTS:
        for step, operation in enumerate(shape):
            # Given an InstanceStored event, and a fault at one step of de-identifying it
            ds = phi_rich()
            (detail,) = env.store(ds)
            try:
                with faults.armed(fault, at=step):
                    first = env.deidentify(detail).status
            except (Crash, Exception):
                first = "failed"
            leaks |= first != "stored"
            # When the queue delivers the event again (SQS retries until it succeeds)
            if first != "stored":
                assert env.deidentify(detail).status == "stored", (fault, step, operation)
            # Then the research store holds exactly the deterministic copy, intact
            copy = env.research_copy(ds.SOPInstanceUID)
            acknowledged[copy.SOPInstanceUID] = [env.expected_copy(detail)]
            use_by_default(env.research.table_name)
            check(env.s3, env.research.bucket_name, acknowledged=acknowledged, leaks=leaks)


@pytest.mark.parametrize(
    ("modalities", "queued"),
    [("*", {"CT", "MR", "SR"}), ("MR,SR", {"MR", "SR"}), ("none", set())],
)
def test_the_rule_selects_the_modalities_to_deidentify(aws: None, modalities: str, queued: set[str]) -> None:
    # Given the stack deployed with DeidModalities set
    stack, settings = provisioned(parameters={"DeidModalities": modalities})
    sqs = boto3.client("sqs")
    # When a CT, an MR and an SR are stored and their commits announced
    store_ok(stow_service(settings), *(to_part10(phi_rich(modality=m)) for m in ("CT", "MR", "SR")))
    deliver_stream(stack)
    # Then DeidRule queued exactly the selected modalities: the function is not invoked for
    # the others ("none" disables the rule: requested de-identification only)
    messages = sqs.receive_message(QueueUrl=stack.physical_ids["DeidQueue"], MaxNumberOfMessages=10)
    found = {json.loads(m["Body"])["detail"]["modality"] for m in messages.get("Messages", [])}
    assert found == queued
