"""Rendered images and thumbnails against moto, through the render function's handler.

One moto account serves the module: a handful of pydicom's files (a CT, a 512x512 JPEG
2000 CT, an enhanced multi-frame JPEG 2000 MR, a JPEG colour cine, a palette image, a
1-bit SEG, a lossy 12-bit JPEG the codecs cannot decode) and generated series are stored
through STOW, then read back through ``functions/render`` (payload v2 events, as API
Gateway sends them). Decoding is counted at ``codecs.frame_array`` and
``codecs.dataset_frame_array``, the two places a frame becomes pixels, so the tests can
say how many frames an answer decoded (thumbnails kept in S3 decode none).
"""

from __future__ import annotations

import base64
import io
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlencode

import boto3
import numpy as np
import pydicom
import pytest
from PIL import Image, ImageSequence

from dicomweb_core import config
from dicomweb_core.dicom import codecs
from dicomweb_core.dicom.pixels import FrameImage
from dicomweb_core.index.models import SeriesItem, StudyItem
from dicomweb_core.render import pipeline, service
from dicomweb_core.render.service import MAX_ANIMATION_FRAMES
from dicomweb_core.render.thumbnails import PREFIX
from dicomweb_core.stow.service import StowService
from infra.datasets import dicom_files
from infra.datasets.generate import make_dataset, make_phi_sr, new_uid, to_part10
from infra.samtemplate import load_template
from tests.integration.test_delete import delete_event
from tests.lambda_harness import LambdaContext, load_handler, route_for
from tests.moto_stack import moto_account, provisioned, store_ok, stow_service

DOMAIN = "dicom.example.test"
FILES = (
    "CT_small.dcm",  # 128x128, signed 16-bit, rescale
    "693_J2KR.dcm",  # 512x512 CT, JPEG 2000 lossless
    "emri_small_jpeg_2k_lossless.dcm",  # enhanced MR, 10 frames, JPEG 2000
    "examples_ybr_color.dcm",  # US cine, 30 frames, JPEG baseline YBR_FULL_422
    "OBXXXX1A.dcm",  # PALETTE COLOR
    "liver.dcm",  # SEG, 3 frames, 1 bit (no frame index: read whole)
    "JPEG-lossy.dcm",  # 12-bit lossy JPEG: the codecs cannot decode it
    "MR_small.dcm",  # 64x64, a window of its own
)

pytestmark = [
    pytest.mark.filterwarnings("ignore:Invalid value for VR:UserWarning"),
    pytest.mark.filterwarnings("ignore:No application metrics to publish:UserWarning"),
]


# ---------------------------------------------------------------------- the environment
@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "")

    def image(self) -> Image.Image:
        return Image.open(io.BytesIO(self.body))

    def message(self) -> str:
        return self.body.decode()


@dataclass
class Stored:
    """A stored file: its UIDs and the pixels pydicom reads from the file itself."""

    study: str
    series: str
    sop: str
    dataset: pydicom.Dataset

    @property
    def path(self) -> str:
        return f"/studies/{self.study}/series/{self.series}/instances/{self.sop}"

    def expected(self, number: int = 1, window: Any = None) -> np.ndarray:
        """The frame through the pipeline, decoded from the whole file by pydicom (not by range)."""
        array, properties = codecs.dataset_frame_array(self.dataset, number - 1)
        return pipeline.to_display(FrameImage(number, array, properties, self.dataset), window)


@dataclass
class World:
    handler: ModuleType
    delete: ModuleType
    stow: StowService
    s3: Any
    bucket: str
    files: dict[str, Stored]
    decoded: list[str] = field(default_factory=list)  # SOP Instance UIDs, one per frame decoded

    def get(self, path: str, accept: str | None = None, **query: str) -> Answer:
        headers = {"host": DOMAIN}
        if accept is not None:
            headers["accept"] = accept
        return self.request(path, headers, query)

    def get_conditional(self, path: str, etag: str, **query: str) -> Answer:
        """A GET with ``If-None-Match: etag`` (a client revalidating its cached copy)."""
        return self.request(path, {"host": DOMAIN, "if-none-match": etag}, query)

    def request(self, path: str, headers: dict[str, str], query: dict[str, str]) -> Answer:
        response = self.handler.handler(render_event(path, headers, query), LambdaContext("RenderFunction"))
        self.handler.metrics.clear_metrics()  # metrics are disabled in tests: nothing flushes them
        body = response.get("body") or ""
        raw = base64.b64decode(body) if response.get("isBase64Encoded") else body.encode()
        return Answer(int(response["statusCode"]), dict(response.get("headers") or {}), raw)

    def store(self, *payloads: bytes) -> None:
        store_ok(self.stow, *payloads)

    def keys(self, prefix: str) -> list[str]:
        listed = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=prefix)
        return [o["Key"] for o in listed.get("Contents", [])]


def render_event(path: str, headers: dict[str, str], query: dict[str, str]) -> dict[str, Any]:
    """A payload v2 event as the HTTP API sends it for a GET on one of the render routes."""
    route = route_for("GET", path)
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route.route_key,
        "rawPath": path,
        "rawQueryString": urlencode(query),
        "headers": headers,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "example",
            "domainName": DOMAIN,
            "http": {"method": "GET", "path": path, "protocol": "HTTP/1.1", "sourceIp": "192.0.2.10"},
            "requestId": "render-test",
            "routeKey": route.route_key,
            "stage": "$default",
            "authorizer": {"jwt": {"claims": {"scope": "dicomweb/read"}, "scopes": ["dicomweb/read"]}},
        },
        "isBase64Encoded": False,
    }
    if query:
        event["queryStringParameters"] = query
    return event


def _read(path: Path) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path)


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with moto_account(), pytest.MonkeyPatch.context() as patch:
        stack, settings = provisioned()
        template = load_template()
        for function in ("RenderFunction", "DeleteFunction"):
            for name, value in stack.function_environment(template.functions()[function]).items():
                patch.setenv(name, value)
        config.settings.cache_clear()
        stow = stow_service(settings)
        files = {}
        for name in FILES:
            path = dicom_files.test_file(name)
            store_ok(stow, path.read_bytes())
            ds = _read(path)
            files[name] = Stored(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds)
        built = World(
            load_handler("RenderFunction"),
            load_handler("DeleteFunction"),
            stow,
            boto3.client("s3"),
            settings.bucket_name,
            files,
        )
        for decoder in ("frame_array", "dataset_frame_array"):
            patch.setattr(codecs, decoder, _counted(getattr(codecs, decoder), built.decoded))
        yield built
    config.settings.cache_clear()


def _counted(decode: Callable[..., Any], log: list[str]) -> Callable[..., Any]:
    def counting(*args: Any) -> Any:
        dataset = args[-1] if isinstance(args[-1], pydicom.Dataset) else args[0]
        log.append(str(dataset.get("SOPInstanceUID", "?")))
        return decode(*args)

    return counting


def _series(world: World, count: int, *, study: str | None = None) -> tuple[str, str, list[str]]:
    """A stored series of ``count`` 32x32 CT instances, InstanceNumber 1..count (stored shuffled)."""
    study = study or new_uid()
    series = new_uid()
    sops = [new_uid() for _ in range(count)]
    datasets = []
    for number, sop in enumerate(sops, start=1):
        pixels = (np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * number) % 4096
        ds = make_dataset(study=study, series=series, sop=sop, rows=32, columns=32, InstanceNumber=number)
        ds.PixelData = pixels.tobytes()
        datasets.append(to_part10(ds))
    world.store(*reversed(datasets))
    return study, series, sops


# ---------------------------------------------------------------------- routes
RENDER_PATHS = (
    "/studies/1.2/rendered",
    "/studies/1.2/series/1.3/rendered",
    "/studies/1.2/series/1.3/instances/1.4/rendered",
    "/studies/1.2/series/1.3/instances/1.4/frames/1,2/rendered",
    "/studies/1.2/thumbnail",
    "/studies/1.2/series/1.3/thumbnail",
    "/studies/1.2/series/1.3/instances/1.4/thumbnail",
    "/studies/1.2/series/1.3/instances/1.4/frames/1/thumbnail",
)


@pytest.mark.parametrize("path", RENDER_PATHS)
def test_every_rendered_and_thumbnail_path_reaches_the_render_function_alone(path: str) -> None:
    # Given the template's routes (which the local gateway matches in order)
    routes = load_template().routes()
    # When a rendered or thumbnail path is matched
    matching = [r for r in routes if r.method == "GET" and r.pattern.match(path)]
    # Then exactly one route serves it, the render function's, with the read scope
    assert [r.function for r in matching] == ["RenderFunction"]
    assert matching[0].scopes == ("dicomweb/read",)
    assert matching[0].authorizer is not None


# ---------------------------------------------------------------------- media types
@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, "image/jpeg"),
        ("image/jpeg", "image/jpeg"),
        ("*/*", "image/jpeg"),
        ("image/*", "image/jpeg"),
        ("image/png", "image/png"),
        ("image/gif", "image/gif"),
        ("image/webp, image/png;q=0.5", "image/png"),
    ],
)
def test_rendered_media_types(world: World, accept: str | None, expected: str) -> None:
    # Given a stored CT, When its rendered resource is asked for with an Accept
    answer = world.get(f"{world.files['CT_small.dcm'].path}/rendered", accept)
    # Then it is that media type, a decodable image of the instance's size
    assert answer.status == 200, answer.body[:200]
    assert answer.content_type == expected
    assert answer.image().format == expected.removeprefix("image/").upper()
    assert answer.image().size == (128, 128)


def test_what_cannot_be_rendered_as_asked_is_406_listing_the_media_types(world: World) -> None:
    # Given a stored CT, When it is asked for as DICOM or as video
    for accept in (
        "application/dicom",
        "video/mp4",
        "image/jpeg;q=0",
        'multipart/related; type="image/jpeg"',
    ):
        answer = world.get(f"{world.files['CT_small.dcm'].path}/rendered", accept)
        # Then 406 names what is available
        assert answer.status == 406, accept
        assert "image/jpeg" in answer.message() and "image/png" in answer.message()


def test_the_accept_query_parameter_overrides_the_header(world: World) -> None:
    path = f"{world.files['CT_small.dcm'].path}/rendered"
    answer = world.request(path, {"host": DOMAIN, "accept": "image/jpeg"}, {"accept": "image/png"})
    assert answer.content_type == "image/png"


# ---------------------------------------------------------------------- pixels
@pytest.mark.parametrize("name", ["CT_small.dcm", "693_J2KR.dcm", "OBXXXX1A.dcm", "MR_small.dcm"])
def test_a_rendered_png_is_the_pipelines_output_of_the_whole_file(world: World, name: str) -> None:
    # Given a stored instance (read back by range) and pydicom's decoding of the whole file
    stored = world.files[name]
    # When it is rendered losslessly
    answer = world.get(f"{stored.path}/rendered", "image/png")
    # Then the pixels are exactly the pipeline's output for pydicom's own decoding
    assert answer.status == 200
    assert np.array_equal(np.asarray(answer.image()), stored.expected())


def test_a_frame_of_a_multiframe_instance_decodes_that_frame_alone(world: World) -> None:
    # Given a 10-frame JPEG 2000 enhanced MR
    stored = world.files["emri_small_jpeg_2k_lossless.dcm"]
    world.decoded.clear()
    # When frame 7 is rendered
    answer = world.get(f"{stored.path}/frames/7/rendered", "image/png")
    # Then one frame was decoded, and it is frame 7, not another
    assert answer.status == 200
    assert world.decoded == [stored.sop]
    assert np.array_equal(np.asarray(answer.image()), stored.expected(7))
    assert not np.array_equal(stored.expected(7), stored.expected(1))


def test_a_frame_list_rendered_as_jpeg_is_its_first_frame_and_as_gif_an_animation(world: World) -> None:
    stored = world.files["emri_small_jpeg_2k_lossless.dcm"]
    # When a frame list is rendered as PNG, Then it is the first listed frame
    first = world.get(f"{stored.path}/frames/4,2,9/rendered", "image/png")
    assert np.array_equal(np.asarray(first.image()), stored.expected(4))
    # When as GIF, Then each listed frame in the order listed
    animation = world.get(f"{stored.path}/frames/4,2,9/rendered", "image/gif")
    frames = [np.asarray(f.convert("L")) for f in ImageSequence.Iterator(animation.image())]
    assert [np.array_equal(f, stored.expected(n)) for f, n in zip(frames, (4, 2, 9), strict=True)] == [
        True,
        True,
        True,
    ]


def test_a_cine_instance_as_gif_is_animated_at_its_frame_time(world: World) -> None:
    # Given a 30-frame colour ultrasound cine (JPEG baseline, YBR_FULL_422)
    stored = world.files["examples_ybr_color.dcm"]
    # When the instance is rendered as GIF
    answer = world.get(f"{stored.path}/rendered", "image/gif")
    # Then it is a looping animation of every frame at the instance's Frame Time (33.333 ms, in
    # GIF's 10 ms steps; the GIF writer merges identical consecutive frames, adding their times)
    image = answer.image()
    assert answer.status == 200 and image.format == "GIF"
    assert image.info.get("loop") == 0
    durations = [frame.info["duration"] for frame in ImageSequence.Iterator(image)]
    assert 25 <= len(durations) <= 30
    assert sum(durations) == 30 * 30
    # And as JPEG the instance is its first frame, in colour
    still = world.get(f"{stored.path}/rendered")
    assert still.image().mode == "RGB" and still.image().size == (320, 240)


def test_an_animation_longer_than_the_bound_is_413_before_decoding(world: World) -> None:
    # Given a series with more instances than one animation holds
    study, series, _ = _series(world, MAX_ANIMATION_FRAMES + 1)
    world.decoded.clear()
    # When the series is rendered as GIF
    answer = world.get(f"/studies/{study}/series/{series}/rendered", "image/gif")
    # Then 413 says what to ask instead, and nothing was decoded
    assert answer.status == 413
    assert "frames" in answer.message()
    assert world.decoded == []
    # And as JPEG it is the series' first instance
    assert world.get(f"/studies/{study}/series/{series}/rendered").status == 200


# ---------------------------------------------------------------------- parameters
def test_viewport_fits_the_region_within_the_viewport(world: World) -> None:
    stored = world.files["CT_small.dcm"]
    path = f"{stored.path}/rendered"
    full = stored.expected()
    # When only the size is given, Then the whole image is scaled to fit, aspect kept
    assert world.get(path, "image/png", viewport="64,32").image().size == (32, 32)
    assert world.get(path, "image/png", viewport="512,512").image().size == (512, 512)
    # When a region is given, Then that region is cropped, then fitted (64x128 into 100x100)
    assert world.get(path, "image/png", viewport="100,100,0,0,64,128").image().size == (50, 100)
    same = world.get(path, "image/png", viewport="32,32,10,20,32,32")
    assert np.array_equal(np.asarray(same.image()), full[20:52, 10:42])
    # When the region's width and height are negative, Then it is flipped both ways
    flipped = world.get(path, "image/png", viewport="128,128,0,0,-128,-128")
    assert np.array_equal(np.asarray(flipped.image()), full[::-1, ::-1])
    # When sx, sy, sw, sh are left empty, Then they take their defaults
    defaults = world.get(path, "image/png", viewport="128,128,,,,")
    assert np.array_equal(np.asarray(defaults.image()), full)


def test_window_replaces_the_instances_own(world: World) -> None:
    from dicomweb_core.render.parameters import Window, WindowFunction

    stored = world.files["MR_small.dcm"]
    for text, window in (
        ("600,1200", Window(600, 1200)),
        ("600,1200,linear-exact", Window(600, 1200, WindowFunction.LINEAR_EXACT)),
        ("600,300,SIGMOID", Window(600, 300, WindowFunction.SIGMOID)),
    ):
        answer = world.get(f"{stored.path}/rendered", "image/png", window=text)
        assert np.array_equal(np.asarray(answer.image()), stored.expected(window=window)), text
    assert not np.array_equal(stored.expected(window=Window(600, 1200)), stored.expected())


def test_quality_trades_size_for_fidelity(world: World) -> None:
    path = f"{world.files['693_J2KR.dcm'].path}/rendered"
    low, high = world.get(path, quality="10"), world.get(path, quality="95")
    assert low.status == high.status == 200
    assert len(low.body) < len(high.body)


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("query", "says"),
    [
        ({"window": "40,0"}, "width"),
        ({"window": "40,0,linear-exact"}, "greater than 0"),
        ({"window": "40,0.5"}, "at least 1"),
        ({"window": "40,-5,sigmoid"}, "greater than 0"),
        ({"window": "forty,400"}, "decimal"),
        ({"window": "40,400,cubic"}, "linear"),
        ({"window": "40"}, "center,width"),
        ({"window": "nan,400"}, "decimal"),
        ({"viewport": "0,0"}, "vw"),
        ({"viewport": "100000,100000"}, "4096"),
        ({"viewport": "512"}, "vw,vh"),
        ({"viewport": "512,512,0,0"}, "vw,vh"),
        ({"viewport": "64,64,0,0,0,10"}, "sw"),
        ({"viewport": "64,64,-1,0,10,10"}, "sx"),
        ({"viewport": "64,64,500,0,10,10"}, "outside the image"),
        ({"viewport": "a,b"}, "integer"),
        ({"quality": "0"}, "1 to 100"),
        ({"quality": "101"}, "1 to 100"),
        ({"quality": "high"}, "integer"),
        ({"annotation": "patient"}, "annotation"),
    ],
)
def test_malformed_parameters_are_400_with_a_message(world: World, query: dict[str, str], says: str) -> None:
    # When a rendered CT is asked for with a malformed parameter
    started = time.monotonic()
    answer = world.get(f"{world.files['CT_small.dcm'].path}/rendered", **query)
    # Then 400 says what is allowed, at once
    assert answer.status == 400, (query, answer.body[:200])
    assert says in answer.message()
    assert time.monotonic() - started < 5


def test_a_frame_past_the_end_is_400_as_in_wado(world: World) -> None:
    stored = world.files["emri_small_jpeg_2k_lossless.dcm"]
    for suffix in ("rendered", "thumbnail"):
        answer = world.get(f"{stored.path}/frames/11/{suffix}")
        assert answer.status == 400
        assert "Frame 11 does not exist: the instance has 10 frame(s)." in answer.message()
    # And without a frame index (the whole object is read), the same
    answer = world.get(f"{world.files['liver.dcm'].path}/frames/4/rendered")
    assert answer.status == 400 and "3 frame(s)" in answer.message()


def test_sources_too_large_to_render_are_413_before_any_pixel_is_read(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a bound on source frames just below 128x128
    world.decoded.clear()
    with monkeypatch.context() as patch:
        patch.setattr(service, "MAX_FRAME_PIXELS", 128 * 128 - 1)
        frame = world.get(f"{world.files['CT_small.dcm'].path}/rendered")
    # And a bound on instances read whole below a 3-frame SEG's size (it has no frame index)
    with monkeypatch.context() as patch:
        patch.setattr(service, "MAX_WHOLE_OBJECT", len(world.files["liver.dcm"].dataset.PixelData))
        whole = world.get(f"{world.files['liver.dcm'].path}/rendered")
    # Then each is 413 with what to do instead, and nothing was decoded
    assert frame.status == 413 and "128 by 128" in frame.message()
    assert whole.status == 413 and "read whole" in whole.message()
    assert world.decoded == []


def test_pixels_the_codecs_cannot_decode_are_406_with_what_works(world: World) -> None:
    answer = world.get(f"{world.files['JPEG-lossy.dcm'].path}/rendered")
    assert answer.status == 406
    assert "cannot be rendered" in answer.message() and "transfer-syntax=*" in answer.message()


def test_a_one_bit_segmentation_renders_black_and_white(world: World) -> None:
    stored = world.files["liver.dcm"]
    answer = world.get(f"{stored.path}/frames/2/rendered", "image/png")
    assert answer.status == 200
    pixels = np.asarray(answer.image())
    assert set(np.unique(pixels)) <= {0, 255}
    assert np.array_equal(pixels == 255, stored.dataset.pixel_array[1] == 1)


def test_an_sr_has_no_rendered_representation(world: World) -> None:
    # Given a stored SR (no pixel data), alone in its study
    sr = make_phi_sr()
    world.store(to_part10(sr))
    path = f"/studies/{sr.StudyInstanceUID}/series/{sr.SeriesInstanceUID}/instances/{sr.SOPInstanceUID}"
    # Then rendering it, its series, its study or their thumbnails is 406 with a message
    for resource in (
        f"{path}/rendered",
        f"{path}/thumbnail",
        f"/studies/{sr.StudyInstanceUID}/series/{sr.SeriesInstanceUID}/rendered",
        f"/studies/{sr.StudyInstanceUID}/thumbnail",
    ):
        answer = world.get(resource)
        assert answer.status == 406, resource
        assert "pixel data" in answer.message()


def test_unknown_resources_are_404(world: World) -> None:
    assert world.get(f"/studies/{new_uid()}/rendered").status == 404
    assert world.get(f"/studies/{new_uid()}/thumbnail").status == 404
    stored = world.files["CT_small.dcm"]
    assert world.get(f"/studies/{stored.study}/series/{new_uid()}/thumbnail").status == 404
    assert (
        world.get(f"/studies/{stored.study}/series/{stored.series}/instances/{new_uid()}/rendered").status
        == 404
    )


# ---------------------------------------------------------------------- thumbnails
def test_a_series_thumbnail_is_its_middle_instance_kept_in_s3_and_renewed_with_the_series(
    world: World,
) -> None:
    # Given a series of five instances (stored in reverse order)
    study, series, sops = _series(world, 5)
    path = f"/studies/{study}/series/{series}/thumbnail"
    world.decoded.clear()
    # When OHIF asks for its thumbnail
    first = world.get(path, "image/jpeg", viewport="64,64")
    # Then it is a JPEG within the viewport, of the middle instance by InstanceNumber
    assert first.status == 200 and first.content_type == "image/jpeg"
    assert first.image().size == (64, 64)
    assert world.decoded == [sops[2]]
    assert first.headers["Cache-Control"] == "private, no-cache"
    # And it is kept in S3 under the series' current version
    version = SeriesItem.get(*SeriesItem.key(study, series)).version
    (key,) = world.keys(f"{PREFIX}/{study}/{series}/")
    assert f"/{version}/" in key
    # When it is asked for again, Then it comes from S3, nothing is decoded
    world.decoded.clear()
    again = world.get(path, "image/jpeg", viewport="64,64")
    assert again.body == first.body and world.decoded == []
    # And a client that has it revalidates with 304
    assert world.get_conditional(path, again.headers["ETag"], viewport="64,64").status == 304
    # When an instance joins the series, Then the thumbnail is made again for the new version
    ds = make_dataset(study=study, series=series, rows=32, columns=32, InstanceNumber=6)
    world.store(to_part10(ds))
    renewed = world.get(path, "image/jpeg", viewport="64,64")
    assert renewed.headers["ETag"] != first.headers["ETag"]
    assert world.decoded == [sops[2]]  # six instances: the third is still the middle one
    assert len(world.keys(f"{PREFIX}/{study}/{series}/")) == 2
    assert world.get_conditional(path, first.headers["ETag"], viewport="64,64").status == 200


def test_a_study_thumbnail_is_the_middle_of_its_largest_series(world: World) -> None:
    # Given a study with a series of two and a series of three instances (and an SR)
    study, _, _ = _series(world, 2)
    _, _, sops = _series(world, 3, study=study)
    world.store(to_part10(make_phi_sr(study=study)))
    world.decoded.clear()
    # When its thumbnail is asked for
    answer = world.get(f"/studies/{study}/thumbnail")
    # Then it is the middle instance of the three, fitted in 128x128 by default
    assert answer.status == 200 and answer.content_type == "image/jpeg"
    assert answer.image().size == (128, 128)
    assert world.decoded == [sops[1]]
    assert world.keys(f"{PREFIX}/{study}/-/-/-/{StudyItem.get(*StudyItem.key(study)).version}/")


def test_an_instance_thumbnail_is_its_middle_frame(world: World) -> None:
    stored = world.files["emri_small_jpeg_2k_lossless.dcm"]
    world.decoded.clear()
    answer = world.get(f"{stored.path}/thumbnail", "image/png")
    # Then frame 5 of 10, decoded alone, fitted in 128x128; immutable (the instance's checksum)
    assert answer.status == 200
    assert world.decoded == [stored.sop]
    expected = Image.fromarray(stored.expected(5)).resize(
        (128, 128), Image.Resampling.LANCZOS, reducing_gap=3.0
    )
    assert np.array_equal(np.asarray(answer.image()), np.asarray(expected))
    assert "immutable" in answer.headers["Cache-Control"]
    # And a frame's thumbnail is that frame; a frame list's, its middle listed frame
    frame = world.get(f"{stored.path}/frames/2/thumbnail", "image/png", viewport="64,64")
    assert frame.status == 200 and frame.image().size == (64, 64)
    assert world.keys(f"{PREFIX}/{stored.study}/{stored.series}/{stored.sop}/frame-2/")
    listed = world.get(f"{stored.path}/frames/9,3,1/thumbnail", "image/png", viewport="64,64")
    assert listed.status == 200
    assert world.keys(f"{PREFIX}/{stored.study}/{stored.series}/{stored.sop}/frame-3/")


def test_a_deleted_study_loses_its_thumbnails(world: World) -> None:
    # Given a study whose thumbnail is kept
    study, series, _ = _series(world, 1)
    assert world.get(f"/studies/{study}/series/{series}/thumbnail").status == 200
    assert world.keys(f"{PREFIX}/{study}/")
    # When the study is deleted
    response = world.delete.handler(delete_event(f"/studies/{study}"), LambdaContext("DeleteFunction"))
    world.delete.metrics.clear_metrics()
    assert response["statusCode"] == 204
    # Then its thumbnails are gone with it, and asking again is 410
    assert world.keys(f"{PREFIX}/{study}/") == []
    assert world.get(f"/studies/{study}/series/{series}/thumbnail").status == 410


def test_rendered_answers_revalidate_with_304_before_decoding(world: World) -> None:
    stored = world.files["693_J2KR.dcm"]
    path = f"{stored.path}/rendered"
    first = world.get(path)
    assert "immutable" in first.headers["Cache-Control"]
    world.decoded.clear()
    assert world.get_conditional(path, first.headers["ETag"]).status == 304
    assert world.decoded == []
    # And another representation has another validator
    assert world.get(path, quality="50").headers["ETag"] != first.headers["ETag"]
