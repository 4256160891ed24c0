"""Stored pixel values to 8 bits per channel, in presentation order (PS3.18 §8.3.5.1, PS3.3 C.11).

A decoded frame (``dicom.pixels.FrameImage``: YBR already RGB, planes interleaved, signed
values as signed numbers) is turned into what a screen shows:

1. **Modality LUT** (PS3.3 C.11.1): Rescale Slope and Intercept, or the Modality LUT
   Sequence (pydicom's ``apply_modality_lut``).
2. **VOI LUT** (C.11.2): the request's ``window``; else the instance's first window
   (Window Center and Width, with its VOI LUT Function); else its first VOI LUT Sequence
   item (``apply_voi``, scaled from the LUT's bits per entry); else a window over the
   frame's values: ``linear-exact`` from its minimum (black) to its maximum (white); a
   frame of one value is black. Windows are applied by pydicom's ``apply_windowing``
   with an 8-bit output range, so ``linear``, ``linear-exact`` and ``sigmoid`` follow
   C.11.2.1.2 and C.11.2.1.3 exactly.
3. **Presentation LUT shape** (C.11.6): MONOCHROME1 is inverted (its minimum is white,
   C.7.6.3.1.2), as is MONOCHROME2 with Presentation LUT Shape ``INVERSE``. A MONOCHROME1
   image's ``INVERSE`` shape states that same inversion (DX images must carry it), not a
   second one.
4. **Colour**: PALETTE COLOR through its lookup tables (``apply_color_lut``; segmented
   tables too), 16-bit entries scaled to 8 bits (tables whose 16-bit entries never
   exceed 255 hold 8-bit values, a common encoder slip, and are taken as such); YBR_FULL
   and YBR_FULL_422 converted to RGB (``convert_color_space``, when the decoder has not
   already); RGB of more than 8 bits scaled by its Bits Stored.
5. **8 bits out**: values rounded to 0-255.

Enhanced multi-frame instances take each frame's Pixel Value Transformation and Frame VOI
LUT from its functional groups (PS3.3 C.7.6.16.2.9, C.7.6.16.2.10), per-frame over
shared. Not applied: overlays and burned-in annotation are never added, presentation
states are not looked up, Supplemental Palette Color LUTs and Presentation LUT Sequences
are not applied, pixels are square (Pixel Aspect Ratio is not used). Photometric
interpretations other than these (YBR_PARTIAL_*, float pixel data) are 406.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels.processing import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi,
    apply_windowing,
    convert_color_space,
)

from dicomweb_core.dicom.pixels import FrameImage
from dicomweb_core.errors import BadRequest, NotAcceptable
from dicomweb_core.render.parameters import Window, WindowFunction

MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
YBR = ("YBR_FULL", "YBR_FULL_422")
# The attributes the pipeline reads from the instance (the rest is never copied).
_DESCRIBING = (
    "PhotometricInterpretation",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "RescaleSlope",
    "RescaleIntercept",
    "RescaleType",
    "ModalityLUTSequence",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "VOILUTSequence",
    "PresentationLUTShape",
    "RedPaletteColorLookupTableDescriptor",
    "GreenPaletteColorLookupTableDescriptor",
    "BluePaletteColorLookupTableDescriptor",
    "RedPaletteColorLookupTableData",
    "GreenPaletteColorLookupTableData",
    "BluePaletteColorLookupTableData",
    "SegmentedRedPaletteColorLookupTableData",
    "SegmentedGreenPaletteColorLookupTableData",
    "SegmentedBluePaletteColorLookupTableData",
)
_WINDOW_KEYWORDS = ("WindowCenter", "WindowWidth", "VOILUTFunction")
_RESCALE_KEYWORDS = ("RescaleSlope", "RescaleIntercept", "RescaleType")
# What pydicom's LUT helpers raise for a malformed table (bits per entry, missing data...).
_UNUSABLE_LUT = (AttributeError, KeyError, ValueError, TypeError, IndexError, NotImplementedError)
_WINDOW_TAGS = {"WindowCenter": 0x00281050, "WindowWidth": 0x00281051, "VOILUTFunction": 0x00281056}


def to_display(image: FrameImage, window: Window | None = None) -> np.ndarray:
    """The frame as 8-bit pixels: (rows, columns) grey or (rows, columns, 3) RGB."""
    attributes = frame_attributes(image.dataset, image.number)
    photometric = str(
        image.properties.get("photometric_interpretation") or attributes.get("PhotometricInterpretation")
    )
    array = image.array
    if photometric in MONOCHROME:
        return grey(array, attributes, photometric, window)
    if photometric == "PALETTE COLOR":
        return palette(array, attributes)
    if photometric in YBR:
        array = convert_color_space(array, photometric, "RGB")
        photometric = "RGB"
    if photometric == "RGB":
        bits = int(image.properties.get("bits_stored") or attributes.get("BitsStored") or 8)
        return rgb(array, bits)
    raise NotAcceptable(
        f"Frames in the {photometric} photometric interpretation are not rendered here; retrieve them "
        "with WADO-RS (application/octet-stream) to display in the client."
    )


def frame_attributes(dataset: Dataset, number: int) -> Dataset:
    """What describes frame ``number``: the instance's pixel, LUT and window attributes, with
    those of the frame's functional groups (enhanced multi-frame, PS3.3 C.7.6.16) in place of
    the top-level ones: Pixel Value Transformation and Frame VOI LUT, per-frame over shared."""
    view = Dataset()
    if hasattr(dataset, "file_meta"):  # LUT data in OW is read in the data set's byte order
        view.file_meta = dataset.file_meta
    implicit, little_endian = dataset.original_encoding
    view.set_original_encoding(implicit, little_endian, dataset.original_character_set)
    for keyword in _DESCRIBING:
        if keyword in dataset:
            view.add(dataset[keyword])
    groups = [*_items(dataset, "SharedFunctionalGroupsSequence", 0)]
    groups += _items(dataset, "PerFrameFunctionalGroupsSequence", number - 1)
    for group in groups:
        for macro, keywords in (
            ("PixelValueTransformationSequence", _RESCALE_KEYWORDS),
            ("FrameVOILUTSequence", _WINDOW_KEYWORDS),
        ):
            for item in _items(group, macro, 0):
                for keyword in keywords:
                    if keyword in view:
                        delattr(view, keyword)
                    if keyword in item:
                        view.add(item[keyword])
    return view


def _items(dataset: Dataset, keyword: str, position: int) -> list[Dataset]:
    sequence = dataset.get(keyword)
    return [sequence[position]] if sequence is not None and 0 <= position < len(sequence) else []


# ---------------------------------------------------------------------- grey
def grey(array: np.ndarray, attributes: Dataset, photometric: str, window: Window | None) -> np.ndarray:
    """Modality LUT, VOI LUT, presentation LUT shape, 8 bits (steps 1, 2, 3 and 5)."""
    try:
        values = apply_modality_lut(array, attributes)
        shown = voi(values, attributes, window)
    except _UNUSABLE_LUT as error:  # a malformed LUT descriptor or data in the instance
        raise NotAcceptable(f"The instance's lookup tables cannot be applied: {error}.") from error
    shape = str(attributes.get("PresentationLUTShape") or "").strip().upper()
    if photometric == "MONOCHROME1" or shape == "INVERSE":
        shown = 255.0 - shown
    return _eight_bits(shown)


def voi(values: np.ndarray, attributes: Dataset, window: Window | None) -> np.ndarray:
    """The VOI LUT stage with output 0-255 (float): the request's window, the instance's
    first window, its first VOI LUT, else min-max of the values."""
    chosen = window or instance_window(attributes)
    if chosen is not None:
        return windowed(values, chosen)
    if _has_voi_lut(attributes):
        integers = values if np.issubdtype(values.dtype, np.integer) else np.rint(values).astype(np.int64)
        depth = int(attributes.VOILUTSequence[0].LUTDescriptor[2])
        scale = 255.0 / (2**depth - 1)
        return np.asarray(apply_voi(integers, attributes, 0), dtype=np.float64) * np.float64(scale)
    low, high = float(np.min(values)), float(np.max(values))
    if high <= low:
        return np.zeros(values.shape, dtype=np.float64)
    return windowed(values, Window((low + high) / 2, high - low, WindowFunction.LINEAR_EXACT))


def instance_window(attributes: Dataset) -> Window | None:
    """The instance's (or frame's) first window, when it is a valid one."""
    centers, widths = attributes.get("WindowCenter"), attributes.get("WindowWidth")
    if centers is None or widths is None:
        return None
    function = str(attributes.get("VOILUTFunction") or "LINEAR").strip().lower().replace("_", "-")
    try:
        return Window(float(_first(centers)), float(_first(widths)), WindowFunction(function))
    except (BadRequest, ValueError, TypeError, IndexError):
        return None  # an unusable window is ignored, as if absent


def _first(value: Any) -> Any:
    """The first of a multi-valued element's values (Window Center and Width may hold several)."""
    return value[0] if isinstance(value, MultiValue | list | tuple) else value


def windowed(values: np.ndarray, window: Window) -> np.ndarray:
    """``window`` applied by pydicom's ``apply_windowing`` onto the output range 0-255."""
    output = Dataset()
    output.PhotometricInterpretation = "MONOCHROME2"
    output.BitsStored = 8  # with unsigned pixels and no rescale: y_min 0, y_max 255
    output.PixelRepresentation = 0
    # FD rather than DS: the request's numbers are used as given, never reformatted.
    output.add_new(_WINDOW_TAGS["WindowCenter"], "FD", window.center)
    output.add_new(_WINDOW_TAGS["WindowWidth"], "FD", window.width)
    output.add_new(_WINDOW_TAGS["VOILUTFunction"], "CS", window.function.dicom)
    with np.errstate(over="ignore"):  # sigmoid far from its center: exp overflows to the limit
        return np.asarray(apply_windowing(values, output), dtype=np.float64)


def _has_voi_lut(attributes: Dataset) -> bool:
    sequence = attributes.get("VOILUTSequence")
    if not sequence:
        return False
    item = sequence[0]
    return item.get("LUTDescriptor") is not None and item.get("LUTData") is not None


# ---------------------------------------------------------------------- colour
def palette(array: np.ndarray, attributes: Dataset) -> np.ndarray:
    """PALETTE COLOR through its red, green and blue lookup tables (PS3.3 C.7.6.3.1.5)."""
    try:
        colours = apply_color_lut(array, attributes)[..., :3]  # an alpha table is dropped
    except _UNUSABLE_LUT as error:
        raise NotAcceptable(f"The palette colour lookup tables cannot be applied: {error}.") from error
    if colours.dtype == np.uint16 and int(colours.max(initial=0)) > 255:
        return _eight_bits(colours / 257.0)
    return _eight_bits(colours)


def rgb(array: np.ndarray, bits_stored: int) -> np.ndarray:
    """RGB of any depth as 8 bits per channel."""
    if array.dtype == np.uint8 and bits_stored >= 8:
        return array
    return _eight_bits(array.astype(np.float64) * (255.0 / (2**bits_stored - 1)))


def _eight_bits(values: np.ndarray) -> np.ndarray:
    return np.asarray(np.clip(np.rint(values), 0, 255), dtype=np.uint8)
