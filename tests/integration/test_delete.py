"""DELETE /studies/{study} against moto: tombstone, index, objects (recoverable), 410 afterwards."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import boto3
import pytest

from dicomweb_core import config
from dicomweb_core.hooks.series_metadata import SeriesMetadataBuilder
from dicomweb_core.index.models import DeletedStudyItem, IndexItem, SeriesItem, SopItem, study_pk
from dicomweb_core.storage import ObjectReader, S3InstanceStore
from dicomweb_core.stow.service import StowService
from infra.datasets.generate import make_dataset, new_uid, to_part10
from infra.local.provision import Stack
from infra.samtemplate import load_template
from tests.integration.test_wado_service import wado_event
from tests.lambda_harness import LambdaContext, load_handler, route_for
from tests.moto_stack import provisioned, store_ok, stow_service


def delete_event(path: str, scopes: tuple[str, ...] = ("dicomweb/delete",)) -> dict[str, Any]:
    route = route_for("DELETE", path)
    return {
        "version": "2.0",
        "routeKey": route.route_key,
        "rawPath": path,
        "rawQueryString": "",
        "headers": {"host": "dicom.example.test"},
        "pathParameters": {"study": path.rsplit("/", 1)[1]},
        "requestContext": {
            "http": {"method": "DELETE", "path": path, "sourceIp": "192.0.2.1"},
            "requestId": "delete-test",
            "routeKey": route.route_key,
            "stage": "$default",
            "authorizer": {"jwt": {"claims": {"sub": "admin", "client_id": "admin"}, "scopes": list(scopes)}},
        },
        "isBase64Encoded": False,
    }


@dataclass
class Env:
    stack: Stack
    stow: StowService
    delete: ModuleType
    wado: ModuleType
    s3: Any
    sqs: Any
    events_queue: str

    @property
    def bucket(self) -> str:
        return self.stow.settings.bucket_name

    def store(self, *payloads: bytes) -> None:
        store_ok(self.stow, *payloads)

    def delete_study(self, study: str, scopes: tuple[str, ...] = ("dicomweb/delete",)) -> int:
        response = self.delete.handler(
            delete_event(f"/studies/{study}", scopes), LambdaContext("DeleteFunction")
        )
        self.delete.metrics.clear_metrics()
        return int(response["statusCode"])

    def get(self, path: str) -> int:
        response = self.wado.handler(wado_event(path), LambdaContext("WadoFunction"))
        self.wado.metrics.clear_metrics()
        return int(response["statusCode"])

    def keys(self, prefix: str) -> list[str]:
        return [
            o["Key"] for o in self.s3.list_objects_v2(Bucket=self.bucket, Prefix=prefix).get("Contents", [])
        ]

    def published(self) -> list[dict[str, Any]]:
        found = []
        while messages := self.sqs.receive_message(QueueUrl=self.events_queue, MaxNumberOfMessages=10).get(
            "Messages", []
        ):
            for message in messages:
                found.append(json.loads(message["Body"]))
                self.sqs.delete_message(QueueUrl=self.events_queue, ReceiptHandle=message["ReceiptHandle"])
        return found


@pytest.fixture
def env(aws: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    stack, settings = provisioned()
    template = load_template()
    for function in ("WadoFunction", "DeleteFunction"):
        for name, value in stack.function_environment(template.functions()[function]).items():
            monkeypatch.setenv(name, value)
    config.settings.cache_clear()
    sqs, events = boto3.client("sqs"), boto3.client("events")
    url = sqs.create_queue(QueueName="deleted")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    bus = stack.physical_ids["EventBus"]
    events.put_rule(
        Name="deleted", EventBusName=bus, EventPattern=json.dumps({"detail-type": ["StudyDeleted"]})
    )
    events.put_targets(Rule="deleted", EventBusName=bus, Targets=[{"Id": "q", "Arn": arn}])
    yield Env(
        stack,
        stow_service(settings),
        load_handler("DeleteFunction"),
        load_handler("WadoFunction"),
        boto3.client("s3"),
        sqs,
        url,
    )
    config.settings.cache_clear()


def test_a_deleted_study_is_gone_from_index_and_storage_but_recoverable(env: Env) -> None:
    # Given a study of two series, one with its pre-built metadata document
    study, first, second = new_uid(), new_uid(), new_uid()
    datasets = [make_dataset(study=study, series=first), make_dataset(study=study, series=second)]
    env.store(*(to_part10(ds) for ds in datasets))
    version = SeriesItem.get(*SeriesItem.key(study, first)).version
    SeriesMetadataBuilder(ObjectReader(env.bucket), S3InstanceStore(env.bucket)).build(study, first, version)
    assert env.keys(f"cache/metadata/{study}/")
    # When it is deleted
    assert env.delete_study(study) == 204
    # Then only a tombstone is left of it in the index, and its SOP Instance UIDs are free
    remaining = list(IndexItem.query(study_pk(study)))
    assert [type(i) for i in remaining] == [DeletedStudyItem]
    assert remaining[0].instance_count == 2
    for ds in datasets:
        with pytest.raises(SopItem.DoesNotExist):
            SopItem.get(*SopItem.key(ds.SOPInstanceUID))
    # And no current object is left, but every version is kept (recoverable for the retention period)
    assert env.keys(f"studies/{study}/") == [] and env.keys(f"cache/metadata/{study}/") == []
    versions = env.s3.list_object_versions(Bucket=env.bucket, Prefix=f"studies/{study}/")
    assert len(versions["Versions"]) == 4  # two instances, two metadata documents
    assert len(versions["DeleteMarkers"]) == 4
    # And StudyDeleted was published
    (event,) = env.published()
    assert event["detail"] == {"studyInstanceUID": study, "instances": 2}


def test_retrieving_a_deleted_study_is_410_and_an_unknown_one_404(env: Env) -> None:
    study, series = new_uid(), new_uid()
    ds = make_dataset(study=study, series=series)
    env.store(to_part10(ds))
    assert env.delete_study(study) == 204
    for path in (
        f"/studies/{study}",
        f"/studies/{study}/metadata",
        f"/studies/{study}/series/{series}",
        f"/studies/{study}/series/{series}/metadata",
        f"/studies/{study}/series/{series}/instances/{ds.SOPInstanceUID}",
        f"/studies/{study}/series/{series}/instances/{ds.SOPInstanceUID}/frames/1",
    ):
        assert env.get(path) == 410, path
    assert env.get(f"/studies/{new_uid()}") == 404
    # And deleting again is 410, deleting what never existed 404
    assert env.delete_study(study) == 410
    assert env.delete_study(new_uid()) == 404


def test_a_deleted_study_can_be_stored_again(env: Env) -> None:
    study = new_uid()
    data = to_part10(make_dataset(study=study))
    env.store(data)
    assert env.delete_study(study) == 204
    env.store(data)
    assert env.get(f"/studies/{study}") == 200


def test_only_the_delete_scope_deletes(env: Env) -> None:
    study = new_uid()
    env.store(to_part10(make_dataset(study=study)))
    for scopes in (("dicomweb/read",), ("dicomweb/write",), ("dicomweb/deid.read",), ()):
        assert env.delete_study(study, scopes) == 403, scopes
    assert env.get(f"/studies/{study}") == 200
