"""Pixel correctness of rendering: each pipeline stage against a NumPy reference and pydicom.

The references below are written from the standard's formulas (PS3.3 C.11.1 modality LUT,
C.11.2.1.2 window functions, C.11.2.1.1 VOI LUT, C.7.6.3.1.2 MONOCHROME1 and YBR_FULL,
C.7.6.3.1.5 palette colour) with plain NumPy; each case also checks the result against
pydicom's own helper where one exists. The data are pydicom's bundled test files (and
pydicom-data): a signed CT with rescale, an MR with its own window, a Modality LUT
Sequence, a VOI LUT Sequence, MONOCHROME1 radiographs, palette colour (plain and
segmented), YBR, planar RGB, 16-bit RGB, an enhanced multi-frame with functional groups,
a 1-bit SEG and JPEG 2000. Parameter parsing, the viewport's geometry, encoding and
reading one frame by range are checked here too.
"""

from __future__ import annotations

import copy
import io
import json
import warnings
from collections.abc import Iterator
from functools import cache
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageSequence
from pydicom.dataset import Dataset
from pydicom.pixels import pixel_array
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_windowing

from dicomweb_core.dicom import codecs
from dicomweb_core.dicom.frames import MAX_READ_GAP, frame_index
from dicomweb_core.dicom.pixels import FrameImage, InstancePixels
from dicomweb_core.errors import BadRequest, NotAcceptable
from dicomweb_core.render import pipeline
from dicomweb_core.render.images import RenderedType, encode, fitted, picture
from dicomweb_core.render.parameters import RenderParameters, Viewport, Window, WindowFunction
from dicomweb_core.storage import ObjectReader
from infra.datasets import dicom_files


@cache
def _dataset(name: str) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(dicom_files.test_file(name))


def render(name: str, number: int = 1, window: Window | None = None) -> np.ndarray:
    """The pipeline's output for frame ``number`` of a bundled file, decoded by pydicom."""
    ds = _dataset(name)
    array, properties = codecs.dataset_frame_array(ds, number - 1)
    return pipeline.to_display(FrameImage(number, array, properties, ds), window)


def stored(name: str, number: int = 1) -> np.ndarray:
    """The stored values of a frame (pydicom's ``pixel_array``, raw: no colour conversion)."""
    return pixel_array(_dataset(name), index=number - 1, raw=True)


# ---------------------------------------------------------------------- the references
def eight_bits(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def reference_rescale(values: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """PS3.3 C.11.1.1.2: output units = m * SV + b."""
    return values.astype(np.float64) * slope + intercept


def reference_lut(values: np.ndarray, descriptor: list[int], data: Any) -> np.ndarray:
    """A LUT of PS3.3 C.11.1.1.1: entries from the first mapped value, clamped at both ends."""
    entries = descriptor[0] or 65536
    table = np.frombuffer(data, "<u2") if isinstance(data, bytes) else np.asarray(data)
    return table[np.clip(values.astype(np.int64) - descriptor[1], 0, entries - 1)].astype(np.float64)


def reference_window(x: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 (linear), C.11.2.1.3.2 (linear exact), C.11.2.1.3.1 (sigmoid), to 0-255."""
    x = x.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if function == "LINEAR":
            low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
            inside = ((x - (center - 0.5)) / (width - 1) + 0.5) * 255
        elif function == "LINEAR_EXACT":
            low, high = center - width / 2, center + width / 2
            inside = ((x - center) / width + 0.5) * 255
        else:
            return 255 / (1 + np.exp(-4 * (x - center) / width))
    return np.where(x <= low, 0.0, np.where(x > high, 255.0, inside))


def reference_min_max(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return (x - x.min()) / (x.max() - x.min()) * 255


def reference_ybr_full_to_rgb(ybr: np.ndarray) -> np.ndarray:
    """PS3.3 C.7.6.3.1.2, YBR_FULL (the inverse of its RGB to YCbCr equations)."""
    y, cb, cr = (ybr[..., k].astype(np.float64) for k in range(3))
    red = y + 1.402 * (cr - 128)
    green = y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128)
    blue = y + 1.772 * (cb - 128)
    return np.stack([red, green, blue], axis=-1)


# ---------------------------------------------------------------------- modality and VOI LUT
def test_signed_ct_rescale_then_min_max_when_it_has_no_window() -> None:
    # Given CT_small: signed 16-bit, Rescale Slope 1 and Intercept -1024, no window
    ds = _dataset("CT_small.dcm")
    values = reference_rescale(stored("CT_small.dcm"), float(ds.RescaleSlope), float(ds.RescaleIntercept))
    assert stored("CT_small.dcm").dtype == np.int16 and ds.PixelRepresentation == 1
    # Then the frame is its rescaled values from their minimum (black) to maximum (white)
    assert np.array_equal(render("CT_small.dcm"), eight_bits(reference_min_max(values)))
    # And the rescale is pydicom's
    assert np.array_equal(apply_modality_lut(stored("CT_small.dcm"), ds), values)


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
@pytest.mark.parametrize(("center", "width"), [(40.0, 400.0), (-600.0, 1500.0), (0.0, 1.0), (100.5, 2.5)])
def test_the_requests_window_follows_ps33(function: str, center: float, width: float) -> None:
    # Given CT_small's rescaled values and a window asked for
    ds = _dataset("CT_small.dcm")
    values = reference_rescale(stored("CT_small.dcm"), float(ds.RescaleSlope), float(ds.RescaleIntercept))
    window = Window(center, width, WindowFunction(function.lower().replace("_", "-")))
    # Then the output is the standard's function of them
    expected = eight_bits(reference_window(values, center, width, function))
    assert np.array_equal(render("CT_small.dcm", window=window), expected)
    # And pydicom's apply_windowing on the instance itself agrees, scaled from its own output range
    on_instance = copy.deepcopy(ds)
    on_instance.WindowCenter, on_instance.WindowWidth, on_instance.VOILUTFunction = center, width, function
    y_min, y_max = -(2**15) - 1024, 2**15 - 1 - 1024  # 16 bits stored, signed, intercept -1024
    with np.errstate(over="ignore"):  # sigmoid far from its center
        theirs = (apply_windowing(values.copy(), on_instance) - y_min) / (y_max - y_min) * 255
    assert np.abs(render("CT_small.dcm", window=window).astype(float) - theirs).max() <= 1.0


def test_the_instances_first_window_is_used_when_the_request_has_none() -> None:
    # Given MR_small: Window Center 600, Width 1600, no rescale
    ds = _dataset("MR_small.dcm")
    expected = eight_bits(reference_window(stored("MR_small.dcm"), 600, 1600, "LINEAR"))
    assert (float(ds.WindowCenter), float(ds.WindowWidth)) == (600, 1600)
    assert np.array_equal(render("MR_small.dcm"), expected)


def test_a_modality_lut_sequence_replaces_the_rescale() -> None:
    # Given mlut_18: a Modality LUT Sequence (4096 entries from -2048, 16 bits)
    ds = _dataset("mlut_18.dcm")
    item = ds.ModalityLUTSequence[0]
    values = reference_lut(stored("mlut_18.dcm"), list(item.LUTDescriptor), item.LUTData)
    # Then the output is the LUT's values through min-max, and the LUT is pydicom's
    assert np.array_equal(render("mlut_18.dcm"), eight_bits(reference_min_max(values)))
    assert np.array_equal(apply_modality_lut(stored("mlut_18.dcm"), ds), values)


def test_a_voi_lut_sequence_is_used_and_scaled_by_its_bits_per_entry() -> None:
    # Given vlut_04: a VOI LUT Sequence (256 entries of 16 bits), no window
    ds = _dataset("vlut_04.dcm")
    item = ds.VOILUTSequence[0]
    looked_up = reference_lut(stored("vlut_04.dcm"), list(item.LUTDescriptor), item.LUTData)
    expected = eight_bits(looked_up * 255 / (2 ** item.LUTDescriptor[2] - 1))
    assert np.array_equal(render("vlut_04.dcm"), expected)
    # And a requested window replaces it
    windowed = render("vlut_04.dcm", window=Window(128, 64))
    assert np.array_equal(windowed, eight_bits(reference_window(stored("vlut_04.dcm"), 128, 64, "LINEAR")))


def test_monochrome1_is_inverted_after_its_window() -> None:
    # Given a MONOCHROME1 CR with rescale and a window
    ds = _dataset("6154")
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    values = reference_rescale(stored("6154"), float(ds.RescaleSlope), float(ds.RescaleIntercept))
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)
    # Then the minimum is white: the window's output inverted
    assert np.array_equal(render("6154"), eight_bits(255 - reference_window(values, center, width, "LINEAR")))


def test_monochrome2_with_an_inverse_presentation_lut_shape_is_inverted() -> None:
    ds = copy.deepcopy(_dataset("MR_small.dcm"))
    ds.PresentationLUTShape = "INVERSE"
    array, properties = codecs.dataset_frame_array(ds, 0)
    inverted = pipeline.to_display(FrameImage(1, array, properties, ds))
    assert np.array_equal(inverted, 255 - render("MR_small.dcm"))


@pytest.mark.parametrize(
    ("compressed", "native"), [("693_J2KR.dcm", "693_UNCR.dcm"), ("RG1_J2KR.dcm", "RG1_UNCR.dcm")]
)
def test_jpeg_2000_lossless_renders_as_its_uncompressed_twin(compressed: str, native: str) -> None:
    # Given a JPEG 2000 lossless file and the same image uncompressed (a CT; a MONOCHROME1 CR)
    # Then both render to the same pixels, the CT through its rescale and window
    assert np.array_equal(render(compressed), render(native))
    ds = _dataset(native)
    if "RescaleSlope" in ds:
        values = reference_rescale(stored(native), float(ds.RescaleSlope), float(ds.RescaleIntercept))
        expected = reference_window(values, float(ds.WindowCenter), float(ds.WindowWidth), "LINEAR")
        assert np.array_equal(render(compressed), eight_bits(expected))


def test_a_one_bit_segmentation_is_black_and_white() -> None:
    # Given a SEG frame: 1 bit per pixel, bit-packed, values 0 and 1
    frame = stored("liver.dcm", 2)
    assert set(np.unique(frame)) == {0, 1}
    # Then 0 is black and 1 is white (min-max)
    assert np.array_equal(render("liver.dcm", 2), frame.astype(np.uint8) * 255)


def test_a_frame_of_one_value_is_black() -> None:
    ds = copy.deepcopy(_dataset("MR_small.dcm"))
    del ds.WindowCenter, ds.WindowWidth
    flat = np.full((64, 64), 700, dtype=np.int16)
    image = FrameImage(1, flat, {"photometric_interpretation": "MONOCHROME2"}, ds)
    assert not pipeline.to_display(image).any()


# ---------------------------------------------------------------------- enhanced multi-frame
def _enhanced(per_frame: list[tuple[float, float]], shared: tuple[float, float] | None) -> Dataset:
    """An enhanced-style instance of ``len(per_frame)`` frames with windows in functional groups."""
    ds = copy.deepcopy(_dataset("MR_small.dcm"))
    del ds.WindowCenter, ds.WindowWidth
    groups = []
    for center, width in per_frame:
        voi = Dataset()
        voi.WindowCenter, voi.WindowWidth = center, width
        group = Dataset()
        group.FrameVOILUTSequence = [voi]
        groups.append(group)
    ds.PerFrameFunctionalGroupsSequence = groups
    shared_group = Dataset()
    if shared is not None:
        transform = Dataset()
        transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = shared[0], shared[1], "US"
        shared_group.PixelValueTransformationSequence = [transform]
    ds.SharedFunctionalGroupsSequence = [shared_group]
    return ds


def test_enhanced_frames_take_their_own_window_and_the_shared_rescale() -> None:
    # Given frames with windows of their own and a shared rescale (slope 2, intercept -100)
    ds = _enhanced([(600, 1600), (300, 200)], shared=(2.0, -100.0))
    values = reference_rescale(stored("MR_small.dcm"), 2.0, -100.0)
    array, properties = codecs.dataset_frame_array(_dataset("MR_small.dcm"), 0)
    for number, (center, width) in enumerate([(600, 1600), (300, 200)], start=1):
        shown = pipeline.to_display(FrameImage(number, array, properties, ds))
        # Then each frame is its rescaled values through its own window
        assert np.array_equal(shown, eight_bits(reference_window(values, center, width, "LINEAR")))


def test_shared_functional_groups_of_a_real_enhanced_ct() -> None:
    # Given eCT_Supplemental: window 49/102 and rescale -1024 in the shared functional groups only
    ds = _dataset("eCT_Supplemental.dcm")
    assert "WindowCenter" not in ds and "RescaleIntercept" not in ds
    values = reference_rescale(stored("eCT_Supplemental.dcm", 2), 1.0, -1024.0)
    expected = eight_bits(reference_window(values, 49, 102, "LINEAR"))
    assert np.array_equal(render("eCT_Supplemental.dcm", 2), expected)


# ---------------------------------------------------------------------- colour
def test_palette_colour_through_its_tables() -> None:
    # Given OBXXXX1A: PALETTE COLOR, 256-entry tables of 16 bits (OW)
    ds = _dataset("OBXXXX1A.dcm")
    values = stored("OBXXXX1A.dcm")
    channels = [
        reference_lut(
            values,
            list(ds[f"{c}PaletteColorLookupTableDescriptor"].value),
            ds[f"{c}PaletteColorLookupTableData"].value,
        )
        for c in ("Red", "Green", "Blue")
    ]
    expected = np.stack(channels, axis=-1)
    if expected.max() > 255:
        expected = expected / 257
    assert np.array_equal(render("OBXXXX1A.dcm"), eight_bits(expected))
    # And the tables are pydicom's apply_color_lut
    assert np.array_equal(apply_color_lut(values, ds).astype(np.float64), np.stack(channels, axis=-1))


def test_segmented_16_bit_palette_agrees_with_pydicom() -> None:
    # Given a segmented palette of 16-bit entries (GDCM's ALOKA ultrasound)
    ds = _dataset("gdcm-US-ALOKA-16.dcm")
    assert "SegmentedRedPaletteColorLookupTableData" in ds
    theirs = apply_color_lut(stored("gdcm-US-ALOKA-16.dcm"), ds)
    assert theirs.dtype == np.uint16 and theirs.max() > 255
    # Then the colours are pydicom's, scaled from 16 bits to 8
    assert np.array_equal(render("gdcm-US-ALOKA-16.dcm"), eight_bits(theirs / 257))


@pytest.mark.parametrize("name", ["SC_ybr_full_uncompressed.dcm", "SC_ybr_full_422_uncompressed.dcm"])
def test_ybr_full_becomes_rgb(name: str) -> None:
    # Given YBR_FULL (and YBR_FULL_422, upsampled by the decoder) stored values
    ybr = stored(name)
    assert ybr.shape[-1] == 3
    # Then the colours are the standard's YCbCr to RGB, within rounding
    expected = reference_ybr_full_to_rgb(ybr)
    assert np.abs(render(name).astype(float) - np.clip(expected, 0, 255)).max() <= 1.0


def test_planar_configuration_does_not_change_the_picture() -> None:
    # Given the same RGB image stored colour-by-plane and colour-by-pixel
    assert _dataset("color-pl.dcm").PlanarConfiguration == 1
    assert _dataset("color-px.dcm").PlanarConfiguration == 0
    # Then both render to the pixel-interleaved stored values
    assert np.array_equal(render("color-pl.dcm"), render("color-px.dcm"))
    assert np.array_equal(render("color-px.dcm"), stored("color-px.dcm"))


def test_rgb_of_16_bits_is_scaled_to_8() -> None:
    values = stored("SC_rgb_16bit.dcm")
    assert values.dtype == np.uint16
    assert np.array_equal(render("SC_rgb_16bit.dcm"), eight_bits(values.astype(float) * 255 / 65535))


def test_jpeg_ybr_frames_of_a_cine_are_pydicoms_rgb() -> None:
    # Given a JPEG baseline YBR_FULL_422 multi-frame: the decoder converts to RGB
    for number in (1, 17, 30):
        assert np.array_equal(
            render("examples_ybr_color.dcm", number),
            pixel_array(_dataset("examples_ybr_color.dcm"), index=number - 1),
        )


def test_an_unsupported_photometric_interpretation_is_406() -> None:
    ds = copy.deepcopy(_dataset("SC_rgb.dcm"))
    image = FrameImage(1, stored("SC_rgb.dcm"), {"photometric_interpretation": "YBR_PARTIAL_420"}, ds)
    with pytest.raises(NotAcceptable, match="YBR_PARTIAL_420"):
        pipeline.to_display(image)


def test_a_malformed_lookup_table_is_406_not_an_error() -> None:
    ds = copy.deepcopy(_dataset("mlut_18.dcm"))
    ds.ModalityLUTSequence[0].LUTDescriptor = [4096, -2048, 12]  # no numpy dtype of 12 bits
    array, properties = codecs.dataset_frame_array(_dataset("mlut_18.dcm"), 0)
    with pytest.raises(NotAcceptable, match="lookup tables"):
        pipeline.to_display(FrameImage(1, array, properties, ds))


# ---------------------------------------------------------------------- parameters
@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({}, RenderParameters()),
        ({"quality": "75"}, RenderParameters(quality=75)),
        ({"viewport": "512,256"}, RenderParameters(viewport=Viewport(512, 256))),
        ({"viewport": "64,64,10,20,-30,40"}, RenderParameters(viewport=Viewport(64, 64, 10, 20, -30, 40))),
        ({"viewport": "64,64,,,30,"}, RenderParameters(viewport=Viewport(64, 64, 0, 0, 30, None))),
        ({"window": "40,400"}, RenderParameters(window=Window(40, 400))),
        (
            {"window": "-600.5,1.5e3,linear-exact"},
            RenderParameters(window=Window(-600.5, 1500, WindowFunction.LINEAR_EXACT)),
        ),
        ({"window": "0,0.25,sigmoid"}, RenderParameters(window=Window(0, 0.25, WindowFunction.SIGMOID))),
        ({"charset": "utf-8", "iccprofile": "no"}, RenderParameters()),
    ],
)
def test_valid_parameters(query: dict[str, str], expected: RenderParameters) -> None:
    assert RenderParameters.from_query(query) == expected


@pytest.mark.parametrize(
    "query",
    [
        {"quality": "0"},
        {"quality": "101"},
        {"quality": "9" * 40},
        {"quality": "½"},
        {"viewport": "0,10"},
        {"viewport": "10,4097"},
        {"viewport": "100000,100000"},
        {"viewport": "10,10,1"},
        {"viewport": "10,10,0,0,0,5"},
        {"viewport": "10,10,-1,0,5,5"},
        {"viewport": "1e3,10"},
        {"window": "40,0"},
        {"window": "40,0.99"},
        {"window": "40,0,linear-exact"},
        {"window": "40,-1,sigmoid"},
        {"window": "inf,400"},
        {"window": "40,400,linear,extra"},
        {"window": "40,400,gamma"},
        {"window": ""},
        {"annotation": "patient,technique"},
    ],
)
def test_invalid_parameters_are_400(query: dict[str, str]) -> None:
    with pytest.raises(BadRequest):
        RenderParameters.from_query(query)


def test_thumbnails_fit_128_by_default_and_ignore_window_and_annotation() -> None:
    parameters = RenderParameters.from_query({"window": "1,1", "annotation": "patient"}, thumbnail=True)
    assert parameters == RenderParameters(viewport=Viewport(128, 128))
    assert RenderParameters.from_query({"viewport": "64,32"}, thumbnail=True).viewport == Viewport(64, 32)


# ---------------------------------------------------------------------- viewport and encoding
@pytest.mark.parametrize(
    ("size", "bounds", "expected"),
    [
        ((512, 512), (128, 128), (128, 128)),
        ((800, 600), (128, 128), (128, 96)),
        ((64, 128), (100, 100), (50, 100)),
        ((10, 10), (4096, 100), (100, 100)),
    ],
)
def test_fitting_keeps_the_aspect_ratio(
    size: tuple[int, int], bounds: tuple[int, int], expected: tuple[int, int]
) -> None:
    assert fitted(size, bounds) == expected


def test_the_viewport_region_crops_flips_and_scales() -> None:
    pixels = np.arange(40 * 60, dtype=np.uint32).reshape(40, 60).astype(np.uint8)
    same = picture(pixels, Viewport(20, 10, 5, 7, 20, 10))
    assert np.array_equal(np.asarray(same), pixels[7:17, 5:25])
    flipped = picture(pixels, Viewport(20, 10, 5, 7, -20, -10))
    assert np.array_equal(np.asarray(flipped), pixels[7:17, 5:25][::-1, ::-1])
    clipped = picture(pixels, Viewport(1000, 1000, 50, 30, 100, 100))  # clipped to the image, then fitted
    assert clipped.size == (1000, 1000) and picture(pixels, Viewport(10, 10, 50, 30)).size == (10, 10)
    with pytest.raises(BadRequest, match="outside the image"):
        picture(pixels, Viewport(10, 10, 60, 0))


def test_encoding_each_media_type() -> None:
    grey = np.tile(np.arange(256, dtype=np.uint8), (64, 1))
    frames = [Image.fromarray(np.roll(grey, k, axis=1)) for k in range(0, 60, 20)]
    png = Image.open(io.BytesIO(encode(frames, RenderedType.PNG, quality=90)))
    assert png.format == "PNG" and np.array_equal(np.asarray(png), grey)
    gif = Image.open(io.BytesIO(encode(frames, RenderedType.GIF, quality=90, frame_ms=50)))
    assert gif.format == "GIF" and gif.n_frames == 3 and gif.info["duration"] == 50
    assert [
        np.array_equal(np.asarray(f.convert("L")), np.asarray(g))
        for f, g in zip(ImageSequence.Iterator(gif), frames, strict=True)
    ] == [True] * 3
    small = encode(frames[:1], RenderedType.JPEG, quality=5)
    large = encode(frames[:1], RenderedType.JPEG, quality=95)
    assert Image.open(io.BytesIO(small)).format == "JPEG" and len(small) < len(large)


# ---------------------------------------------------------------------- one frame by range
class FakeS3:
    """An S3 client that serves one object by range and records each GET's range."""

    class exceptions:
        NoSuchKey = KeyError

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.ranges: list[tuple[int, int]] = []

    def get_object(self, **arguments: Any) -> dict[str, Any]:
        first, last = (
            arguments.get("Range", f"bytes=0-{len(self.data) - 1}").removeprefix("bytes=").split("-")
        )
        self.ranges.append((int(first), int(last) + 1))
        return {"Body": io.BytesIO(self.data[int(first) : int(last) + 1])}


class Indexed:
    """An instance as the index holds it, for a bundled file."""

    def __init__(self, name: str) -> None:
        self.data = dicom_files.test_file(name).read_bytes()
        ds = pydicom.dcmread(io.BytesIO(self.data))
        self.sop_uid = str(ds.SOPInstanceUID)
        self.transfer_syntax_uid = str(ds.file_meta.TransferSyntaxUID)
        self.s3_key = "instance.dcm"
        self.s3_version_id = None
        index = frame_index(ds, self.data, self.transfer_syntax_uid)
        self.frame_index = None if index is None else _document(index)


def _document(index: Any) -> str:
    return json.dumps({"frames": index.to_json(), "encapsulated": index.encapsulated})


def _images(name: str, numbers: list[int]) -> Iterator[tuple[FrameImage, FakeS3, Indexed]]:
    item = Indexed(name)
    client = FakeS3(item.data)
    for image in InstancePixels(ObjectReader("bucket", client=client), item).images(numbers):
        yield image, client, item


@pytest.mark.parametrize(
    "name", ["emri_small_jpeg_2k_lossless.dcm", "color3d_jpeg_baseline.dcm", "emri_small.dcm"]
)
def test_one_frame_of_a_multiframe_instance_is_read_and_decoded_alone(name: str) -> None:
    # Given a multi-frame instance (JPEG 2000; 120-frame JPEG baseline; native) and its frame index
    count = int(_dataset(name).NumberOfFrames)
    number = count - 1
    # When a late frame is decoded for display
    ((image, client, item),) = list(_images(name, [number]))
    # Then it is pydicom's frame, and the bytes read are the header and that frame, and at
    # most what lies between them when that is near enough to share one GET
    assert np.array_equal(image.array, pixel_array(_dataset(name), index=number - 1))
    index = json_index(item)
    header, frame_bytes = index[0][0][0], sum(length for _, length in index[number - 1])
    read = sum(end - start for start, end in client.ranges)
    assert read <= header + frame_bytes + MAX_READ_GAP
    if len(item.data) > 4 * MAX_READ_GAP:  # a large instance: far from everything
        assert read < len(item.data) / 10


def json_index(item: Indexed) -> list[list[list[int]]]:
    assert item.frame_index is not None
    frames: list[list[list[int]]] = json.loads(item.frame_index)["frames"]
    return frames


def test_a_compressed_frame_decodes_from_its_own_fragment() -> None:
    # Given the 120-frame JPEG baseline cine, one fragment per frame
    name = "color3d_jpeg_baseline.dcm"
    ((image, client, item),) = list(_images(name, [100]))
    fragment = json_index(item)[99]
    # Then the frame was read from its fragment's range (after the header, in a GET of its own)
    start, length = fragment[0]
    assert any(s <= start and start + length <= e and e - s < 2 * length + 1024 for s, e in client.ranges)
    assert np.array_equal(image.array, pixel_array(_dataset(name), index=99))
