"""Retrievals larger than a function response: bodies built when first asked for, and
same-host redirects, against moto.

Series and instances of several MB (random pixel data, so nothing compresses or repeats)
are stored through STOW. The WADO handler orders the body on the bundle queue and (with no
wait here) redirects the request to itself; BundleFunction's handler builds what the queue
holds; the request asked again is 303 to a presigned path on the API's own host.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import boto3
import numpy
import pytest

from dicomweb_core import config
from dicomweb_core.index.access import Index
from dicomweb_core.index.models import SeriesItem
from dicomweb_core.storage import ObjectReader
from dicomweb_core.stow.service import StowService
from dicomweb_core.wado import bundles, media, prebuilt
from dicomweb_core.wado.bundles import MIN_PART, BundleBuilder, BundleComposer, ObjectRange
from dicomweb_core.wado.orders import QueuedBundleOrders
from dicomweb_core.wado.prebuilt import BundleOrder
from dicomweb_core.wado.redirects import ORDERED_PARAMETER, WAIT_PARAMETER, WAIT_ROUNDS, LargeAnswers
from dicomweb_core.web.multipart import split_parts
from infra.datasets.generate import make_dataset, new_uid, to_part10
from infra.local.provision import Stack
from infra.samtemplate import load_template, object_routes
from tests.integration.test_wado_service import follow_presigned, wado_event
from tests.lambda_harness import LambdaContext, load_handler, sqs_record
from tests.moto_stack import provisioned, store_ok, stow_service

PUBLIC = "https://dicom.example.test"
DICOM_MULTIPART = 'multipart/related; type="application/dicom"'


def big_instance(study: str, series: str, number: int, *, frames: int = 1) -> bytes:
    ds = make_dataset(study=study, series=series, rows=1024, columns=1024, InstanceNumber=number)
    ds.NumberOfFrames = frames
    ds.PixelData = os.urandom(1024 * 1024 * 2 * frames)
    return to_part10(ds)


@dataclass
class Env:
    stack: Stack
    stow: StowService
    wado: ModuleType
    s3: Any

    @property
    def bucket(self) -> str:
        return self.stow.settings.bucket_name

    def store(self, *payloads: bytes) -> None:
        store_ok(self.stow, *payloads)

    @property
    def queue_url(self) -> str:
        return self.stack.physical_ids["BundleQueue"]

    def get(
        self, path: str, accept: str | None = None, query: dict[str, str] | None = None
    ) -> dict[str, Any]:
        response = self.wado.handler(
            wado_event(path, {"Accept": accept} if accept else None, query), LambdaContext("WadoFunction")
        )
        self.wado.metrics.clear_metrics()
        return response

    def orders(self) -> list[BundleOrder]:
        """The orders waiting on the bundle queue (left there)."""
        sqs = boto3.client("sqs")
        messages = sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10, VisibilityTimeout=0)
        return [BundleOrder.from_json(m["Body"]) for m in messages.get("Messages", [])]

    def fulfil(self) -> int:
        """Deliver every waiting order to BundleFunction's handler, as its event source
        mapping does (one record per batch); how many were delivered."""
        function = load_handler("BundleFunction")
        sqs = boto3.client("sqs")
        delivered = 0
        while messages := sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10).get(
            "Messages"
        ):
            for message in messages:
                record = sqs_record(message["MessageId"], json.loads(message["Body"]), queue="BundleQueue")
                answer = function.handler({"Records": [record]}, LambdaContext("BundleFunction"))
                assert answer == {"batchItemFailures": []}, answer
                function.metrics.clear_metrics()
                sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
                delivered += 1
        return delivered

    def bundle_keys(self, study: str) -> list[str]:
        listing = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=f"bundles/{study}/")
        return [o["Key"] for o in listing.get("Contents", [])]

    def builder(self) -> BundleBuilder:
        reader = ObjectReader(self.bucket)
        return BundleBuilder(composer=BundleComposer(self.bucket, reader))

    def follow(self, location: str) -> tuple[str, bytes]:
        """What CloudFront serves for a same-host presigned path: the object the path names."""
        assert location.startswith(PUBLIC + "/"), location
        return follow_presigned(self.s3, self.bucket, location)


@pytest.fixture
def env(aws: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    stack, settings = provisioned(base_url=PUBLIC)
    for name, value in stack.function_environment(load_template().functions()["WadoFunction"]).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PUBLIC_BASE_URL", PUBLIC)
    monkeypatch.setenv("BUNDLE_WAIT_SECONDS", "0")  # the test builds what was ordered, then asks again
    config.settings.cache_clear()
    yield Env(stack, stow_service(settings), load_handler("WadoFunction"), boto3.client("s3"))
    config.settings.cache_clear()


def _parts(content_type: str, body: bytes) -> list[bytes]:
    boundary = media_boundary(content_type)
    return [
        part.body.tobytes() if isinstance(part.body, memoryview) else bytes(part.body)
        for part in split_parts(body, boundary)
    ]


def media_boundary(content_type: str) -> str:
    return content_type.split("boundary=", 1)[1].strip('"')


# ------------------------------------------------------------------ composition
def test_the_composer_joins_bytes_and_object_ranges_exactly(env: Env) -> None:
    big, small = os.urandom(12 * 1024 * 1024), os.urandom(1024 * 1024)
    version = env.s3.put_object(Bucket=env.bucket, Key="studies/big.dcm", Body=big)["VersionId"]
    env.s3.put_object(Bucket=env.bucket, Key="studies/small.dcm", Body=small)
    segments: list[bundles.Segment] = [
        b"head",
        ObjectRange("studies/big.dcm", version, 0, len(big)),
        b"mid",
        ObjectRange("studies/small.dcm", None, 0, len(small)),
        ObjectRange("studies/big.dcm", version, 100, 100 + 2 * MIN_PART),
        b"tail",
    ]
    composer = BundleComposer(env.bucket, ObjectReader(env.bucket))
    written = composer.compose("bundles/test", segments, content_type="application/x-test")
    expected = b"head" + big + b"mid" + small + big[100 : 100 + 2 * MIN_PART] + b"tail"
    stored = env.s3.get_object(Bucket=env.bucket, Key="bundles/test")
    assert written == len(expected)
    assert stored["ContentType"] == "application/x-test"
    assert stored["Body"].read() == expected


# ---------------------------------------------------------------------- series
def _ordered(env: Env, path: str, accept: str | None = DICOM_MULTIPART) -> None:
    """Ask for ``path`` the first time: the body is ordered, and the request redirected to itself."""
    answer = env.get(path, accept)
    assert answer["statusCode"] == 303, answer.get("body")
    location = answer["headers"]["Location"]
    assert location.startswith(f"{PUBLIC}{path}?{WAIT_PARAMETER}=1&{ORDERED_PARAMETER}="), location
    assert answer["headers"]["Cache-Control"] == "no-store"


def test_a_large_series_is_built_when_first_asked_for_then_a_same_host_redirect(env: Env) -> None:
    # Given a 3-instance series of about 6 MB, too large for one function response
    study, series = new_uid(), new_uid()
    stored = [big_instance(study, series, n) for n in (1, 2, 3)]
    env.store(*stored)
    path = f"/studies/{study}/series/{series}"
    # Then nothing is built ahead of time
    assert env.bundle_keys(study) == []
    # When it is first retrieved, Then its body is ordered and the request redirected to itself
    _ordered(env, path)
    version = SeriesItem.get(*SeriesItem.key(study, series)).version
    assert env.orders() == [BundleOrder(version, media.AS_STORED, study, series)]
    # When BundleFunction has built it
    assert env.fulfil() == 1
    # Then the retrieval (the waiting round too) redirects to the body on the API's host, and
    # the body is the exact multipart response: each part the stored instance
    for accept, query in (
        (DICOM_MULTIPART, {WAIT_PARAMETER: "1"}),
        (f"{DICOM_MULTIPART}; transfer-syntax=*", None),
        (None, None),
    ):
        answer = env.get(path, accept, query)
        assert answer["statusCode"] == 303, accept
        assert answer["headers"]["Cache-Control"] == "no-store"
        assert answer["headers"]["Location"].startswith(f"{PUBLIC}/bundles/{study}/{series}/-/{version}/")
        content_type, body = env.follow(answer["headers"]["Location"])
        assert content_type.startswith("multipart/related") and 'type="application/dicom"' in content_type
        assert _parts(content_type, body) == stored
    # And nothing more was ordered; a repeated order builds nothing
    assert env.orders() == []
    assert env.builder().build(BundleOrder(version, media.AS_STORED, study, series)) == "exists"


def test_a_request_is_answered_once_its_body_is_built_within_the_wait(env: Env) -> None:
    # Given a large series, and a retrieve function that waits up to 10 s for a body
    study, series = new_uid(), new_uid()
    env.store(*(big_instance(study, series, n) for n in (1, 2, 3)))
    reader = ObjectReader(env.bucket)
    large = LargeAnswers(
        reader, Index(), public_objects=True, orders=QueuedBundleOrders(env.queue_url), wait_seconds=10
    )
    service = env.wado.SERVICES[""]
    service.large = large
    # When BundleFunction builds it while the request waits
    builder = threading.Timer(0.5, env.fulfil)
    builder.start()
    answer = env.get(f"/studies/{study}/series/{series}", DICOM_MULTIPART)
    builder.join()
    # Then the one request is redirected to the body
    assert answer["statusCode"] == 303
    assert f"/bundles/{study}/{series}/" in answer["headers"]["Location"]


def test_a_request_redirected_to_itself_orders_once_and_gives_up_after_the_last_round(env: Env) -> None:
    study, series = new_uid(), new_uid()
    env.store(*(big_instance(study, series, n) for n in (1, 2, 3)))
    path = f"/studies/{study}/series/{series}"
    version = SeriesItem.get(*SeriesItem.key(study, series)).version
    # When a waiting round comes back for the version its first round ordered
    answer = env.get(path, DICOM_MULTIPART, {WAIT_PARAMETER: "3", ORDERED_PARAMETER: version})
    # Then it orders nothing again, and sends the client to the next round
    next_round = urlencode({WAIT_PARAMETER: "4", ORDERED_PARAMETER: version})
    assert answer["headers"]["Location"] == f"{PUBLIC}{path}?{next_round}"
    assert env.orders() == []
    # And after the last round, 503 says to retry later
    answer = env.get(path, DICOM_MULTIPART, {WAIT_PARAMETER: str(WAIT_ROUNDS), ORDERED_PARAMETER: version})
    assert answer["statusCode"] == 503
    assert answer["headers"]["Retry-After"] == "30"
    assert "being built" in json.loads(answer["body"])["message"]


def test_a_round_orders_again_when_the_series_changed_since_its_order(env: Env) -> None:
    # Given a large series whose body was ordered (its first round), then one more instance
    # stored before BundleFunction read the order (the order is for a version that is gone)
    study, series = new_uid(), new_uid()
    env.store(*(big_instance(study, series, n) for n in (1, 2, 3)))
    path = f"/studies/{study}/series/{series}"
    first = env.get(path, DICOM_MULTIPART)
    ordered = parse_qs(urlsplit(first["headers"]["Location"]).query)[ORDERED_PARAMETER][0]
    env.store(big_instance(study, series, 4))
    assert env.fulfil() == 1 and env.bundle_keys(study) == []  # the stale order builds nothing
    # When the client comes back for its next round
    answer = env.get(path, DICOM_MULTIPART, {WAIT_PARAMETER: "1", ORDERED_PARAMETER: ordered})
    # Then the current version is ordered, and once built the round after finds it
    version = SeriesItem.get(*SeriesItem.key(study, series)).version
    assert version != ordered
    assert env.orders() == [BundleOrder(version, media.AS_STORED, study, series)]
    assert parse_qs(urlsplit(answer["headers"]["Location"]).query)[ORDERED_PARAMETER] == [version]
    assert env.fulfil() == 1
    done = env.get(path, DICOM_MULTIPART, {WAIT_PARAMETER: "2", ORDERED_PARAMETER: version})
    assert f"/bundles/{study}/{series}/-/{version}/" in done["headers"]["Location"]


def test_a_study_of_several_series_gets_its_own_body(env: Env) -> None:
    study = new_uid()
    stored = [big_instance(study, new_uid(), n) for n in (1, 2, 3)]
    env.store(*stored)
    _ordered(env, f"/studies/{study}")
    assert env.fulfil() == 1
    answer = env.get(f"/studies/{study}", DICOM_MULTIPART)
    assert f"/bundles/{study}/-/-/" in answer["headers"]["Location"]
    content_type, body = env.follow(answer["headers"]["Location"])
    assert sorted(_parts(content_type, body)) == sorted(stored)


def test_a_single_series_study_is_served_by_its_series_body(env: Env) -> None:
    # Given a study of one large series
    study, series = new_uid(), new_uid()
    stored = [big_instance(study, series, n) for n in (1, 2, 3)]
    env.store(*stored)
    # When the study and then the series are retrieved
    _ordered(env, f"/studies/{study}")
    assert env.fulfil() == 1
    study_answer = env.get(f"/studies/{study}", DICOM_MULTIPART)
    series_answer = env.get(f"/studies/{study}/series/{series}", DICOM_MULTIPART)
    # Then both are the series' one body, with every instance; no second copy exists
    assert (
        study_answer["headers"]["Location"].split("?")[0]
        == series_answer["headers"]["Location"].split("?")[0]
    )
    assert f"bundles/{study}/{series}/" in study_answer["headers"]["Location"]
    assert len(env.bundle_keys(study)) == 1
    content_type, body = env.follow(study_answer["headers"]["Location"])
    assert sorted(_parts(content_type, body)) == sorted(stored)


def test_an_order_for_an_old_version_builds_nothing(env: Env) -> None:
    study, series = new_uid(), new_uid()
    env.store(*(big_instance(study, series, n) for n in (1, 2, 3)))
    assert env.builder().build(BundleOrder("3-0", media.AS_STORED, study, series)) == "changed"
    assert env.bundle_keys(study) == []


# -------------------------------------------------------------------- instances
def test_a_large_multiframe_instance_redirects_single_part_and_multipart(env: Env) -> None:
    # Given a 12 MB multi-frame instance
    study, series = new_uid(), new_uid()
    data = big_instance(study, series, 1, frames=6)
    env.store(data)
    ds_path = f"/studies/{study}/series/{series}"
    sop = next(iter(env.s3.list_objects_v2(Bucket=env.bucket, Prefix=f"studies/{study}/")["Contents"]))["Key"]
    sop_uid = sop.split("/instances/", 1)[1].split("/", 1)[0]
    path = f"{ds_path}/instances/{sop_uid}"
    # When it is asked for as application/dicom, Then it redirects to the stored object itself
    single = env.get(path, "application/dicom")
    assert single["statusCode"] == 303
    content_type, body = env.follow(single["headers"]["Location"])
    assert body == data
    assert env.orders() == []
    # When asked for in multipart (dicomweb-client's retrieve_instance), once built
    _ordered(env, path)
    assert env.fulfil() == 1
    multi = env.get(path, DICOM_MULTIPART)
    assert multi["statusCode"] == 303
    assert f"/bundles/{study}/{series}/{sop_uid}/" in multi["headers"]["Location"]
    content_type, body = env.follow(multi["headers"]["Location"])
    assert _parts(content_type, body) == [data]


def test_the_research_store_answers_413_with_guidance(env: Env) -> None:
    assert env.wado.SERVICES["/deid"].public_objects is False
    assert env.wado.SERVICES["/deid"].large.orders is None
    assert env.wado.SERVICES[""].public_objects is True


def test_a_body_is_in_the_default_syntax_only_when_some_instance_differs() -> None:
    class Item:
        def __init__(self, syntax: str) -> None:
            self.transfer_syntax_uid = syntax

    explicit, jpeg = media.EXPLICIT_VR_LITTLE_ENDIAN, "1.2.840.10008.1.2.4.50"
    assert prebuilt.bundle_syntax(explicit, [Item(explicit)]) == media.AS_STORED  # type: ignore[list-item]
    assert prebuilt.bundle_syntax(explicit, [Item(jpeg)]) == explicit  # type: ignore[list-item]


def test_the_template_serves_presigned_paths_on_the_api_host() -> None:
    routes = {route.path_pattern: (route.bucket, route.methods) for route in object_routes(load_template())}
    read = frozenset({"GET", "HEAD"})
    assert routes["/studies/*.dcm"] == ("InstanceBucket", read)
    assert routes["/bundles/*"] == ("InstanceBucket", read)
    # and upload sessions' presigned PUTs (docs/upload-sessions.md) on the same host
    assert routes["/ingest/*"][0] == "InstanceBucket" and "PUT" in routes["/ingest/*"][1]
    assert set(routes) == {"/studies/*.dcm", "/bundles/*", "/ingest/*"}


def test_the_template_builds_bodies_only_on_order_and_expires_them() -> None:
    template = load_template()
    # Nothing but the retrieve function orders bodies: no event rule feeds the bundle queue
    rules = template.resources_of_type("AWS::Events::Rule")
    assert not any("BundleQueue" in json.dumps(rule) for rule in rules.values())
    wado = template.functions()["WadoFunction"].environment
    assert wado["BUNDLE_QUEUE_URL"] == {"Ref": "BundleQueue"}
    # And built bodies expire after BundleRetentionDays
    bucket = template.resources_of_type("AWS::S3::Bucket")["InstanceBucket"]
    (rule,) = [
        r for r in bucket["Properties"]["LifecycleConfiguration"]["Rules"] if r.get("Prefix") == "bundles/"
    ]
    assert rule["ExpirationInDays"] == {"Ref": "BundleRetentionDays"}


def test_a_new_series_version_replaces_the_old_bodies(env: Env) -> None:
    # Given a built series body; then the series receives a late instance and is asked for again
    study, series = new_uid(), new_uid()
    env.store(*(big_instance(study, series, n) for n in (1, 2, 3)))
    path = f"/studies/{study}/series/{series}"
    _ordered(env, path)
    assert env.fulfil() == 1
    env.store(big_instance(study, series, 4))
    second = SeriesItem.get(*SeriesItem.key(study, series)).version
    _ordered(env, path)
    assert env.fulfil() == 1
    # Then only the current version's body remains (current versions of the keys)
    keys = env.bundle_keys(study)
    assert keys and all(f"/{second}/" in key for key in keys), keys
    # And the retrieval serves the four instances
    answer = env.get(path, DICOM_MULTIPART)
    content_type, body = env.follow(answer["headers"]["Location"])
    assert len(_parts(content_type, body)) == 4


# ------------------------------------------------------------------------ frames
OHIF_FRAMES = "multipart/related; type=application/octet-stream; transfer-syntax=*"


def _single_part(content_type: str, body: bytes) -> bytes:
    (part,) = _parts(content_type, body)
    return part


def test_a_large_frame_and_its_pixel_data_redirect_to_one_built_part(env: Env) -> None:
    # Given a single-frame native image of 10 MB (a large radiograph stored uncompressed)
    study, series = new_uid(), new_uid()
    ds = make_dataset(study=study, series=series, rows=2500, columns=2000)
    ds.PixelData = os.urandom(2500 * 2000 * 2)
    env.store(to_part10(ds))
    instance = f"/studies/{study}/series/{series}/instances/{ds.SOPInstanceUID}"
    # When OHIF first asks for its frame, Then the frame's body is ordered
    _ordered(env, f"{instance}/frames/1", OHIF_FRAMES)
    assert env.fulfil() == 1
    # Then the frame (as stored, and by default) and the pixel data bulk data all redirect to
    # one built part that is exactly the pixel bytes
    for path, accept in (
        (f"{instance}/frames/1", OHIF_FRAMES),
        (f"{instance}/frames/1", None),
        (f"{instance}/bulkdata/7FE00010", None),
    ):
        answer = env.get(path, accept)
        assert answer["statusCode"] == 303, (path, accept, answer.get("body"))
        assert ".frame-1.multipart" in answer["headers"]["Location"]
        content_type, body = env.follow(answer["headers"]["Location"])
        assert 'type="application/octet-stream"' in content_type
        assert _single_part(content_type, body) == ds.PixelData
    assert env.orders() == []


def test_a_large_compressed_frame_is_built_decompressed(env: Env) -> None:
    # Given an RLE-compressed image that is small as stored but 6 MB decompressed
    from pydicom.uid import RLELossless

    study, series = new_uid(), new_uid()
    ds = make_dataset(study=study, series=series, rows=2048, columns=1536)
    rows = numpy.repeat(numpy.arange(2048, dtype=numpy.uint16)[:, None] * 7, 1536, axis=1)  # a ramp
    ds.PixelData = rows.tobytes()
    ds.compress(RLELossless, encoding_plugin="pydicom")
    expected = ds.pixel_array.tobytes()
    data = to_part10(ds)
    assert len(data) < 4_400_000 < len(expected)
    env.store(data)
    frame = f"/studies/{study}/series/{series}/instances/{ds.SOPInstanceUID}/frames/1"
    # When it is asked for uncompressed (the default)
    _ordered(env, frame, None)
    assert env.fulfil() == 1
    answer = env.get(frame)
    # Then it redirects to the decompressed frame, pixel-exact with pydicom's decoding
    assert answer["statusCode"] == 303, answer.get("body")
    content_type, body = env.follow(answer["headers"]["Location"])
    assert _single_part(content_type, body) == expected
    # And as stored it is small enough to come directly
    assert env.get(frame, OHIF_FRAMES)["statusCode"] == 200
