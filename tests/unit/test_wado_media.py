"""WADO-RS content negotiation (PS3.18 §8.7): which media type and transfer syntax an Accept gets.

The resources are described as the retrieve service describes them: instances have
``application/dicom`` parts (single part only for one instance), frames have
``application/octet-stream`` or the stored compressed type, bulk data octet-stream
(as stored by default). Codec availability is fixed per test, so the table does not
depend on which pixel plugins are installed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from dicomweb_core.errors import BadRequest, NotAcceptable
from dicomweb_core.wado import media
from dicomweb_core.wado.media import Choice

EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.70"
J2K = "1.2.840.10008.1.2.4.90"
RLE = "1.2.840.10008.1.2.5"

DICOM = "application/dicom"
OCTET = "application/octet-stream"
OHIF_FRAMES = "multipart/related; type=application/octet-stream; transfer-syntax=*"


@pytest.fixture(autouse=True)
def codecs_for(monkeypatch: pytest.MonkeyPatch) -> Callable[[set[str]], None]:
    """Which compressed syntaxes the function can decode (default: JPEG 2000 and RLE)."""

    def set_decodable(syntaxes: set[str]) -> None:
        monkeypatch.setattr(media, "can_decode", lambda syntax: syntax in syntaxes)

    set_decodable({J2K, RLE})
    return set_decodable


def instances(accept: str | None, stored: str = EXPLICIT, *, one: bool = True, **kw: Any) -> Choice:
    return media.choose(
        accept,
        part_types=lambda t: t == DICOM,
        default_part=DICOM,
        single_part=one,
        producible=lambda ts: media.can_produce(ts, stored),
        **kw,
    )


def frames(accept: str | None, stored: str = EXPLICIT, **kw: Any) -> Choice:
    return media.choose(
        accept,
        part_types=lambda t: t == OCTET or t == media.PIXEL_MEDIA_TYPES.get(stored),
        default_part=OCTET,
        single_part=False,
        producible=lambda ts: media.can_produce(ts, stored),
        **kw,
    )


# ---------------------------------------------------------------------- instances
@pytest.mark.parametrize(
    ("accept", "stored", "expected"),
    [
        # no Accept, or an empty one: multipart DICOM, Explicit VR Little Endian
        (None, EXPLICIT, Choice(True, DICOM, EXPLICIT)),
        ("", EXPLICIT, Choice(True, DICOM, EXPLICIT)),
        ("*/*", EXPLICIT, Choice(True, DICOM, EXPLICIT)),
        ("*/*", IMPLICIT, Choice(True, DICOM, EXPLICIT)),
        ("multipart/*", EXPLICIT, Choice(True, DICOM, EXPLICIT)),
        # the type parameter quoted, unquoted, any case
        ('multipart/related; type="application/dicom"', EXPLICIT, Choice(True, DICOM, EXPLICIT)),
        ("multipart/related; type=application/dicom", EXPLICIT, Choice(True, DICOM, EXPLICIT)),
        ('Multipart/Related; Type="Application/DICOM"', EXPLICIT, Choice(True, DICOM, EXPLICIT)),
        ("multipart/related; type=*/*", EXPLICIT, Choice(True, DICOM, EXPLICIT)),
        # transfer syntaxes: as stored, the stored one, uncompressed ↔ uncompressed
        ('multipart/related; type="application/dicom"; transfer-syntax=*', J2K, Choice(True, DICOM, "*")),
        (f"multipart/related; type=application/dicom; transfer-syntax={J2K}", J2K, Choice(True, DICOM, J2K)),
        (
            f"multipart/related; type=application/dicom; transfer-syntax={IMPLICIT}",
            EXPLICIT,
            Choice(True, DICOM, IMPLICIT),
        ),
        (
            f'multipart/related; type="application/dicom"; transfer-syntax="{EXPLICIT}"',
            IMPLICIT,
            Choice(True, DICOM, EXPLICIT),
        ),
        # decompression when a codec is there (JPEG 2000 here), to Explicit VR only
        ("multipart/related; type=application/dicom", J2K, Choice(True, DICOM, EXPLICIT)),
        # single part for one instance
        ("application/dicom", EXPLICIT, Choice(False, DICOM, EXPLICIT)),
        ("application/dicom; transfer-syntax=*", JPEG_BASELINE, Choice(False, DICOM, "*")),
    ],
)
def test_instance_negotiation(accept: str | None, stored: str, expected: Choice) -> None:
    # Given an Accept header and a stored transfer syntax, When negotiated, Then this is sent
    assert instances(accept, stored) == expected


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        # the highest q wins when it can be produced, whatever the order
        (
            f"multipart/related; type=application/dicom; transfer-syntax={IMPLICIT}; q=0.5, "
            "multipart/related; type=application/dicom; transfer-syntax=*; q=0.9",
            Choice(True, DICOM, "*"),
        ),
        (
            f"multipart/related; type=application/dicom; transfer-syntax={IMPLICIT}; q=0.9, "
            "multipart/related; type=application/dicom; transfer-syntax=*; q=0.5",
            Choice(True, DICOM, IMPLICIT),
        ),
        # ties keep the client's order
        (
            f"multipart/related; type=application/dicom; transfer-syntax={IMPLICIT}, "
            "multipart/related; type=application/dicom; transfer-syntax=*",
            Choice(True, DICOM, IMPLICIT),
        ),
        # a higher q that cannot be produced (JPEG from uncompressed) falls through to the next
        (
            f"multipart/related; type=application/dicom; transfer-syntax={JPEG_BASELINE}; q=1, "
            f"multipart/related; type=application/dicom; transfer-syntax={EXPLICIT}; q=0.2",
            Choice(True, DICOM, EXPLICIT),
        ),
        # q=0 means "not this": the explicit default is refused, the next range is used
        (
            "multipart/related; type=application/dicom; q=0, "
            "multipart/related; type=application/dicom; transfer-syntax=*; q=0.1",
            Choice(True, DICOM, "*"),
        ),
        # an invalid transfer-syntax value is not acceptable; the next range is used
        (
            "multipart/related; type=application/dicom; transfer-syntax=1.2.03, */*; q=0.1",
            Choice(True, DICOM, EXPLICIT),
        ),
    ],
)
def test_q_values_order_the_ranges(accept: str, expected: Choice) -> None:
    assert instances(accept, EXPLICIT) == expected


def test_single_part_is_only_for_one_instance() -> None:
    # Given a series (several instances), When application/dicom alone is asked for, Then 406
    with pytest.raises(NotAcceptable) as refused:
        instances("application/dicom", one=False)
    assert "multipart/related" in refused.value.message
    assert "single-part" not in refused.value.message
    # And with multipart as a fallback that is what is sent
    assert instances("application/dicom, multipart/related; type=application/dicom; q=0.5", one=False) == (
        Choice(True, DICOM, EXPLICIT)
    )
    # And for one instance the 406 message offers single part too
    with pytest.raises(NotAcceptable) as refused:
        instances("text/html")
    assert "single-part application/dicom" in refused.value.message


@pytest.mark.parametrize(
    "accept",
    [
        "application/dicom, image/png",
        'multipart/related; type="application/dicom", image/jpeg; q=0.5',
        "image/gif, multipart/related; type=application/dicom",
    ],
)
def test_dicom_and_rendered_types_mixed_is_400(accept: str) -> None:
    # Given an Accept mixing DICOM and rendered media types, When negotiated, Then 400 with a message
    with pytest.raises(BadRequest) as refused:
        instances(accept)
    assert "rendered" in refused.value.message


@pytest.mark.parametrize(
    ("accept", "stored"),
    [
        ("text/html", EXPLICIT),
        ("application/json", EXPLICIT),
        ("image/png", EXPLICIT),
        ("multipart/related; type=application/dicom+xml", EXPLICIT),
        ("multipart/related; type=application/octet-stream", EXPLICIT),  # not a part type of instances
        (
            f"multipart/related; type=application/dicom; transfer-syntax={JPEG_BASELINE}",
            EXPLICIT,
        ),  # no encoders
        (
            f"multipart/related; type=application/dicom; transfer-syntax={J2K}",
            JPEG_BASELINE,
        ),  # no transcoding
        (
            f"multipart/related; type=application/dicom; transfer-syntax={IMPLICIT}",
            J2K,
        ),  # decoded: Explicit only
        ("multipart/related; type=application/dicom", JPEG_BASELINE),  # no codec for it here
        ("multipart/related; type=application/dicom", DEFLATED),  # not decompression: as stored only
        ("multipart/related; type=application/dicom; q=0", EXPLICIT),
    ],
)
def test_unknown_or_unproducible_is_406_with_what_is_available(accept: str, stored: str) -> None:
    with pytest.raises(NotAcceptable) as refused:
        instances(accept, stored)
    message = refused.value.message
    assert "available" in message
    assert 'type="application/dicom"' in message
    assert "transfer-syntax=*" in message


def test_accept_query_parameter_overrides_the_header() -> None:
    # Given a header asking for multipart and a query asking for as stored single part
    choice = instances(
        "multipart/related; type=application/dicom", query={"accept": "application/dicom; transfer-syntax=*"}
    )
    # Then the query parameter wins
    assert choice == Choice(False, DICOM, "*")


# ---------------------------------------------------------------------- frames
@pytest.mark.parametrize(
    ("accept", "stored", "expected"),
    [
        # OHIF: octet-stream, as stored, unquoted type
        (OHIF_FRAMES, EXPLICIT, Choice(True, OCTET, "*")),
        (OHIF_FRAMES, JPEG_BASELINE, Choice(True, OCTET, "*")),
        (
            'multipart/related; type="application/octet-stream"; transfer-syntax=*',
            J2K,
            Choice(True, OCTET, "*"),
        ),
        # the default: octet-stream, Explicit VR Little Endian (decoded when a codec is there)
        (None, EXPLICIT, Choice(True, OCTET, EXPLICIT)),
        (None, IMPLICIT, Choice(True, OCTET, EXPLICIT)),
        (None, RLE, Choice(True, OCTET, EXPLICIT)),
        ("*/*", J2K, Choice(True, OCTET, EXPLICIT)),
        ('multipart/related; type="*/*"', EXPLICIT, Choice(True, OCTET, EXPLICIT)),  # dicomweb-client
        # the stored compressed type: its default transfer syntax, or an explicit one
        ("multipart/related; type=image/jp2", J2K, Choice(True, "image/jp2", J2K)),
        (
            f'multipart/related; type="image/jpeg"; transfer-syntax={JPEG_BASELINE}',
            JPEG_BASELINE,
            Choice(True, "image/jpeg", JPEG_BASELINE),
        ),
        ("multipart/related; type=image/dicom-rle", RLE, Choice(True, "image/dicom-rle", RLE)),
        (
            "multipart/related; type=image/jpeg; transfer-syntax=*",
            JPEG_LOSSLESS,
            Choice(True, "image/jpeg", "*"),
        ),
        # image/jpeg alone means JPEG Lossless SV1 (PS3.18 Table 8.7.3-5)
        ("multipart/related; type=image/jpeg", JPEG_LOSSLESS, Choice(True, "image/jpeg", JPEG_LOSSLESS)),
        # q order: image/jp2 preferred but the file is RLE → octet-stream as stored
        (f"multipart/related; type=image/jp2; q=1, {OHIF_FRAMES}; q=0.8", RLE, Choice(True, OCTET, "*")),
    ],
)
def test_frame_negotiation(accept: str | None, stored: str, expected: Choice) -> None:
    assert frames(accept, stored) == expected


@pytest.mark.parametrize(
    ("accept", "stored"),
    [
        ("multipart/related; type=image/jpeg", EXPLICIT),  # compressing is not offered
        ("multipart/related; type=image/jp2", JPEG_BASELINE),  # another compressed type
        ("application/octet-stream", EXPLICIT),  # frames are always multipart
        (None, JPEG_BASELINE),  # no codec for JPEG here: uncompressed cannot be made
        ("multipart/related; type=application/dicom", EXPLICIT),
    ],
)
def test_frames_that_cannot_be_produced_are_406(accept: str | None, stored: str) -> None:
    # Given frames of a stored syntax and an Accept, When negotiated, Then 406 with what is available
    with pytest.raises(NotAcceptable) as refused:
        frames(accept, stored)
    assert 'type="application/octet-stream"' in refused.value.message


def test_decoding_needs_a_codec(codecs_for: Callable[[set[str]], None]) -> None:
    # Given a function without any codec (no imaging layer)
    codecs_for(set())
    # When frames of a JPEG 2000 file are asked for uncompressed, Then 406
    with pytest.raises(NotAcceptable):
        frames(None, J2K)
    # And as stored still works
    assert frames(OHIF_FRAMES, J2K) == Choice(True, OCTET, "*")


# ---------------------------------------------------------------------- bulk data
def bulkdata(accept: str | None, stored: str) -> Choice:
    return media.choose(
        accept,
        part_types=lambda t: t == OCTET,
        default_part=OCTET,
        single_part=False,
        producible=lambda ts: (
            ts in ("*", stored) or (ts in media.UNCOMPRESSED and stored in media.UNCOMPRESSED)
        ),
        default_syntax="*",
    )


@pytest.mark.parametrize(
    ("accept", "stored", "expected"),
    [
        (None, J2K, Choice(True, OCTET, "*")),
        ("*/*", J2K, Choice(True, OCTET, "*")),
        ("*/*; q=0.3", DEFLATED, Choice(True, OCTET, "*")),
        ('multipart/related; type="*/*"', J2K, Choice(True, OCTET, "*")),  # dicomweb-client's default
        ("multipart/related", BIG_ENDIAN, Choice(True, OCTET, "*")),
        ("multipart/related; type=application/octet-stream", EXPLICIT, Choice(True, OCTET, EXPLICIT)),
        (
            f"multipart/related; type=application/octet-stream; transfer-syntax={IMPLICIT}",
            EXPLICIT,
            Choice(True, OCTET, IMPLICIT),
        ),
    ],
)
def test_bulk_data_defaults_to_as_stored(accept: str | None, stored: str, expected: Choice) -> None:
    assert bulkdata(accept, stored) == expected


def test_bulk_data_of_compressed_data_is_never_decoded() -> None:
    with pytest.raises(NotAcceptable):
        bulkdata("multipart/related; type=application/octet-stream", J2K)


# ---------------------------------------------------------------------- can_produce
@pytest.mark.parametrize(
    ("requested", "stored", "producible"),
    [
        ("*", J2K, True),
        ("*", DEFLATED, True),
        (J2K, J2K, True),
        (EXPLICIT, IMPLICIT, True),
        (IMPLICIT, EXPLICIT, True),
        (EXPLICIT, J2K, True),  # decoded (codec available in this table)
        (EXPLICIT, RLE, True),
        (IMPLICIT, J2K, False),  # decoding produces Explicit VR only
        (EXPLICIT, JPEG_BASELINE, False),  # no codec for it in this table
        (J2K, EXPLICIT, False),  # no encoders
        (RLE, J2K, False),
        (EXPLICIT, DEFLATED, False),
        (EXPLICIT, BIG_ENDIAN, True),  # byte-swapped per Bits Allocated (dicom.endian)
        (BIG_ENDIAN, EXPLICIT, False),  # no encoder of big endian
    ],
)
def test_can_produce(requested: str, stored: str, producible: bool) -> None:
    assert media.can_produce(requested, stored) is producible
