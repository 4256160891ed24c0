"""Retrievals larger than a function response: pre-built bundles and same-host redirects, against moto.

Series and instances of several MB (random pixel data, so nothing compresses or repeats)
are stored through STOW; the WADO handler answers 413 (with Retry-After) until the bundle
hook has built the bodies, then 303 to a presigned path on the API's own host.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import boto3
import numpy
import pytest

from dicomweb_core import config
from dicomweb_core.hooks import bundles
from dicomweb_core.hooks.bundles import MIN_PART, BundleBuilder, BundleComposer, ObjectRange
from dicomweb_core.index.models import SeriesItem, StudyItem
from dicomweb_core.storage import ObjectReader
from dicomweb_core.stow.service import StowService
from dicomweb_core.wado import media, prebuilt
from dicomweb_core.web.multipart import split_parts
from infra.datasets.generate import make_dataset, new_uid, to_part10
from infra.local.provision import Stack
from infra.samtemplate import load_template, object_routes
from tests.integration.test_wado_service import follow_presigned, wado_event
from tests.lambda_harness import LambdaContext, load_handler
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

    def get(self, path: str, accept: str | None = None) -> dict[str, Any]:
        response = self.wado.handler(
            wado_event(path, {"Accept": accept} if accept else None), LambdaContext("WadoFunction")
        )
        self.wado.metrics.clear_metrics()
        return response

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
def test_a_large_series_is_413_until_bundled_then_a_same_host_redirect(env: Env) -> None:
    # Given a 3-instance series of about 6 MB, too large for one function response
    study, series = new_uid(), new_uid()
    stored = [big_instance(study, series, n) for n in (1, 2, 3)]
    env.store(*stored)
    path = f"/studies/{study}/series/{series}"
    # When it is retrieved before the bundle hook ran, Then 413 says when to retry
    early = env.get(path, DICOM_MULTIPART)
    assert early["statusCode"] == 413
    assert early["headers"]["Retry-After"] == "60"
    # When the series became stable and the hook built its bundles
    version = SeriesItem.get(*SeriesItem.key(study, series)).version
    assert env.builder().build_series(study, series, version) == "built"
    assert env.builder().build_series(study, series, version) == "exists"
    # Then the retrieval redirects to the bundle on the API's host, and the bundle is the
    # exact multipart body: each part the stored instance (default syntax = stored here)
    for accept in (DICOM_MULTIPART, f"{DICOM_MULTIPART}; transfer-syntax=*", None):
        answer = env.get(path, accept)
        assert answer["statusCode"] == 303, accept
        assert answer["headers"]["Cache-Control"] == "no-store"
        content_type, body = env.follow(answer["headers"]["Location"])
        assert content_type.startswith("multipart/related") and 'type="application/dicom"' in content_type
        assert _parts(content_type, body) == stored


def test_study_bundles_are_built_on_study_stable(env: Env) -> None:
    study = new_uid()
    stored = [big_instance(study, new_uid(), n) for n in (1, 2, 3)]
    env.store(*stored)
    assert env.get(f"/studies/{study}", DICOM_MULTIPART)["statusCode"] == 413
    version = StudyItem.get(*StudyItem.key(study)).version
    assert env.builder().build_study(study, version) == "built"
    answer = env.get(f"/studies/{study}", DICOM_MULTIPART)
    content_type, body = env.follow(answer["headers"]["Location"])
    assert sorted(_parts(content_type, body)) == sorted(stored)


def test_a_single_series_study_is_served_by_its_series_bundle(env: Env) -> None:
    # Given a study of one large series whose series bundle was built
    study, series = new_uid(), new_uid()
    stored = [big_instance(study, series, n) for n in (1, 2, 3)]
    env.store(*stored)
    assert (
        env.builder().build_series(study, series, SeriesItem.get(*SeriesItem.key(study, series)).version)
        == "built"
    )
    keys_before = env.s3.list_objects_v2(Bucket=env.bucket, Prefix=f"bundles/{study}/").get("KeyCount")
    # When the study becomes stable, Then no second copy of the same body is written
    version = StudyItem.get(*StudyItem.key(study)).version
    assert env.builder().build_study(study, version) == "single-series"
    assert (
        env.s3.list_objects_v2(Bucket=env.bucket, Prefix=f"bundles/{study}/").get("KeyCount") == keys_before
    )
    # And the study's retrieval is the series' bundle, with every instance
    answer = env.get(f"/studies/{study}", DICOM_MULTIPART)
    assert answer["statusCode"] == 303
    assert f"bundles/{study}/{series}/" in answer["headers"]["Location"]
    content_type, body = env.follow(answer["headers"]["Location"])
    assert sorted(_parts(content_type, body)) == sorted(stored)


def test_a_stale_stable_event_builds_nothing(env: Env) -> None:
    study, series = new_uid(), new_uid()
    env.store(*(big_instance(study, series, n) for n in (1, 2, 3)))
    assert env.builder().build_series(study, series, "3-0") == "changed"
    assert env.get(f"/studies/{study}/series/{series}", DICOM_MULTIPART)["statusCode"] == 413


def test_small_series_get_no_bundle(env: Env) -> None:
    study, series = new_uid(), new_uid()
    env.store(to_part10(make_dataset(study=study, series=series)))
    version = SeriesItem.get(*SeriesItem.key(study, series)).version
    assert env.builder().build_series(study, series, version) == "small"


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
    # When asked for in multipart (dicomweb-client's retrieve_instance), after the hook ran
    version = SeriesItem.get(*SeriesItem.key(study, series)).version
    env.builder().build_series(study, series, version)
    multi = env.get(path, DICOM_MULTIPART)
    assert multi["statusCode"] == 303
    assert f"/bundles/{study}/{series}/{sop_uid}/" in multi["headers"]["Location"]
    content_type, body = env.follow(multi["headers"]["Location"])
    assert _parts(content_type, body) == [data]


def test_the_research_store_answers_413_with_guidance(env: Env) -> None:
    assert env.wado.SERVICES["/deid"].public_objects is False
    assert env.wado.SERVICES[""].public_objects is True


def test_default_syntax_bundles_are_added_only_when_some_instance_differs() -> None:
    class Item:
        def __init__(self, syntax: str) -> None:
            self.transfer_syntax_uid = syntax

    explicit, jpeg = media.EXPLICIT_VR_LITTLE_ENDIAN, "1.2.840.10008.1.2.4.50"
    assert bundles.syntaxes([Item(explicit)]) == [media.AS_STORED]  # type: ignore[list-item]
    assert bundles.syntaxes([Item(explicit), Item(jpeg)]) == [media.AS_STORED, explicit]  # type: ignore[list-item]
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


def test_a_new_series_version_replaces_the_old_bundles(env: Env) -> None:
    # Given a bundled series that then receives a late instance and is bundled again
    study, series = new_uid(), new_uid()
    env.store(*(big_instance(study, series, n) for n in (1, 2, 3)))
    first = SeriesItem.get(*SeriesItem.key(study, series)).version
    assert env.builder().build_series(study, series, first) == "built"
    env.store(big_instance(study, series, 4))
    second = SeriesItem.get(*SeriesItem.key(study, series)).version
    assert env.builder().build_series(study, series, second) == "built"
    # Then only the current version's bundles remain (current versions of the keys)
    keys = [
        o["Key"] for o in env.s3.list_objects_v2(Bucket=env.bucket, Prefix=f"bundles/{study}/")["Contents"]
    ]
    assert keys and all(f"/{second}/" in key for key in keys), keys
    # And the retrieval serves the four instances
    answer = env.get(f"/studies/{study}/series/{series}", DICOM_MULTIPART)
    content_type, body = env.follow(answer["headers"]["Location"])
    assert len(_parts(content_type, body)) == 4


# ------------------------------------------------------------------------ frames
OHIF_FRAMES = "multipart/related; type=application/octet-stream; transfer-syntax=*"


def _single_part(content_type: str, body: bytes) -> bytes:
    (part,) = _parts(content_type, body)
    return part


def test_a_large_frame_and_its_pixel_data_redirect_to_a_prebuilt_part(env: Env) -> None:
    # Given a single-frame native image of 10 MB (a large radiograph stored uncompressed)
    study, series = new_uid(), new_uid()
    ds = make_dataset(study=study, series=series, rows=2500, columns=2000)
    ds.PixelData = os.urandom(2500 * 2000 * 2)
    env.store(to_part10(ds))
    instance = f"/studies/{study}/series/{series}/instances/{ds.SOPInstanceUID}"
    # When OHIF asks for its frame before the series is stable, Then 413 with Retry-After
    early = env.get(f"{instance}/frames/1", OHIF_FRAMES)
    assert early["statusCode"] == 413 and early["headers"]["Retry-After"] == "60"
    # When the bundle hook has run
    env.builder().build_series(study, series, SeriesItem.get(*SeriesItem.key(study, series)).version)
    # Then the frame (as stored, and by default) and the pixel data bulk data all redirect to
    # one pre-built part that is exactly the pixel bytes
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


def test_a_large_compressed_frame_is_prebuilt_decompressed(env: Env) -> None:
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
    # When it is asked for uncompressed (the default) before and after the hook ran
    assert env.get(frame)["statusCode"] == 413
    # (a small series: no series bundle is needed, but its large decoded frame is)
    env.builder().build_series(study, series, SeriesItem.get(*SeriesItem.key(study, series)).version)
    answer = env.get(frame)
    # Then it redirects to the decompressed frame, pixel-exact with pydicom's decoding
    assert answer["statusCode"] == 303, answer.get("body")
    content_type, body = env.follow(answer["headers"]["Location"])
    assert _single_part(content_type, body) == expected
    # And as stored it is small enough to come directly
    assert env.get(frame, OHIF_FRAMES)["statusCode"] == 200
