"""Known malicious input classes, one section each (issue 5), through the real handlers.

Where each class is tested (here, and in tests that existed before this module):

1. Executable preamble (polyglot: a PE/ELF/script/ZIP header in the 128-byte preamble)
   - here: ``test_polyglot_preamble_is_zeroed_in_storage_and_retrieval``
   - tests/unit/test_instance.py::test_executable_preamble_is_zeroed_and_the_rest_kept_byte_for_byte
   - tests/unit/test_instance.py::test_any_bytes_like_input_is_read_the_same
2. Huge declared lengths (an element, item or part claiming gigabytes)
   - here: ``test_huge_declared_lengths_are_rejected_in_bounded_time_and_memory`` (including
     an item length inside a defined-length sequence),
     ``test_huge_file_meta_group_length_is_not_trusted``,
     ``test_huge_part_content_length_is_ignored_for_framing``,
     ``test_more_parts_than_allowed_are_refused_with_413``
   - tests/unit/test_instance.py::test_element_declaring_a_huge_length_is_rejected_fast,
     ::test_implicit_vr_element_declaring_a_huge_length_is_rejected,
     ::test_file_meta_element_with_undefined_length_is_rejected
   - tests/unit/test_multipart.py::test_too_many_parts_is_rejected_quickly,
     ::test_max_header_bytes_is_inclusive
   - fuzzed: tests/unit/test_fuzz_parsers.py::test_mutated_part10_files_are_stored_safely_or_rejected
3. Deep sequence nesting
   - here: ``test_nesting_far_beyond_the_recursion_limit_is_rejected_in_bounded_time_and_memory``,
     ``test_deeply_nested_instance_is_refused_by_stow_and_nothing_is_stored``,
     ``test_deeply_nested_query_keys_are_bounded``
   - tests/unit/test_instance.py::test_sequences_nested_too_deeply_are_rejected,
     ::test_sequence_depth_follows_the_configured_limit
4. Deflate bomb
   - here: ``test_deflate_bomb_of_gigabytes_is_refused_with_bounded_memory``,
     ``test_deflate_bomb_through_stow_is_refused_and_nothing_is_stored``,
     ``test_deflate_bomb_with_bytes_after_its_stream_is_refused_in_bounded_time``,
     ``test_padded_deflated_instance_through_stow_is_stored_in_bounded_time``
     (``test_the_bomb_inflates_to_what_it_claims`` checks the bomb builder)
   - tests/unit/test_instance.py::test_deflate_bomb_is_refused_as_out_of_resources,
     ::test_deflate_bomb_with_bytes_after_its_stream_is_still_refused,
     ::test_bytes_after_the_deflate_stream_are_ignored_as_pydicom_ignores_them,
     ::test_deflate_bomb_behind_a_lying_group_length_is_still_refused,
     ::test_repeated_transfer_syntax_in_the_file_meta_is_rejected,
     ::test_deflated_data_set_starting_with_a_command_set_is_rejected
5. UID path traversal (``../``, ``%2e%2e``, ``%2F``, NUL, NUL padding)
   - here: ``test_traversal_in_path_uids_is_refused_on_every_route``,
     ``test_paths_powertools_cannot_route_are_404_not_500``,
     ``test_nul_padded_uids_in_a_part10_file_are_stored_under_clean_keys``,
     ``test_traversal_in_part10_uids_is_refused_and_nothing_is_stored``
   - tests/unit/test_uri.py::test_path_traversal_never_becomes_a_resource
   - tests/unit/test_uid.py::test_invalid_uids_are_rejected_without_echoing_the_value
   - tests/unit/test_instance.py::test_invalid_required_uid_is_a_dataset_mismatch_not_echoing_the_value
   - tests/integration/test_stow_handler.py::test_invalid_study_uid_in_path_is_400
   - fuzzed: test_fuzz_parsers.py::test_uri_parser_returns_a_valid_resource_or_a_4xx and every
     handler test of test_fuzz_handlers.py (each S3 key used is checked)
6. Header injection through echoed values (CR/LF in paths, query, Accept, If-None-Match, bodies)
   - here: ``test_crlf_in_any_request_value_never_reaches_a_response_header``,
     ``test_stow_warning_headers_are_sanitised``
   - tests/unit/test_multipart.py::test_parse_media_type_rejects_garbage_with_actionable_messages
     (the ``\\r\\nX-Injected`` case), ::test_encode_multipart_rejects_bad_input,
     ::test_media_type_constructor_refuses_unrenderable_values
   - fuzzed: test_fuzz_parsers.py::test_warning_header_values_never_carry_control_characters,
     and every handler test of test_fuzz_handlers.py (no CR/LF/NUL in any header, no unknown header)
7. SSRF via client-supplied BulkDataURI (or any URL in a request)
   - here: ``test_stow_refuses_bulk_data_uris_without_fetching``,
     ``test_urls_inside_stored_instances_are_never_fetched``,
     ``test_part_content_location_is_not_followed``
     (``test_the_network_guard_catches_every_kind_of_fetch`` checks the no-network guard)
   - tests/integration/test_stow_handler.py::test_bad_requests_get_clear_answers (xml-metadata-stow)
8. Algorithmic complexity (found by this suite: QIDO wildcards backtracked exponentially)
   - here: ``test_wildcard_queries_with_many_stars_are_answered_in_bounded_time``
   - fuzzed: test_fuzz_parsers.py::test_wildcard_matching_is_correct_and_fast

Handler tests go through :class:`tests.unit.test_fuzz_handlers.Deployment`, which also
asserts on every answer: status < 500, only known headers, no CR/LF/NUL in header values,
every S3 key under ``studies/<valid uid>/...``.
"""

from __future__ import annotations

import http.client
import io
import json
import re
import socket
import struct
import sys
import time
import tracemalloc
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pydicom
import pytest
import requests
from pydicom import config as pydicom_config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicomweb_core.config import Limits
from dicomweb_core.dicom.failures import FailureReason, InstanceRejected
from dicomweb_core.dicom.instance import read_instance
from dicomweb_core.qido.attributes import Level
from dicomweb_core.qido.query import parse_query
from dicomweb_core.web.multipart import encode_multipart, split_parts
from infra.datasets.generate import make_dataset, to_part10
from tests.unit.test_fuzz_handlers import DOMAIN, SERIES, STUDY, Answer, Deployment, deployed
from tests.unit.test_instance import after_deflate_stream, deadline

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

MIB = 1 << 20
PIXEL_DATA = 0x7FE00010
CONTENT_SEQUENCE = 0x0040A730
ITEM = b"\xfe\xff\x00\xe0"
ITEM_DELIMITER = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
UNDEFINED = 0xFFFFFFFF
AS_STORED = "application/dicom; transfer-syntax=*"
# Store Instances Response attributes (PS3.18 Table 10.5.3-1) and failure reasons.
REFERENCED_SOP_SEQUENCE = "00081199"
FAILED_SOP_SEQUENCE = "00081198"
OTHER_FAILURES_SEQUENCE = "0008119A"
FAILURE_REASON = "00081197"
MULTIPART_DICOM = 'multipart/related; type="application/dicom"; boundary=B'


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    with deployed() as built:
        yield built


# ---------------------------------------------------------------------- helpers
def element(tag: int, vr: bytes, value: bytes = b"", *, length: int | None = None) -> bytes:
    """One Explicit VR Little Endian element; ``length`` overrides the declared length."""
    declared = len(value) if length is None else length
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return head + b"\0\0" + struct.pack("<I", declared) + value
    return head + struct.pack("<H", declared) + value


def data_set_bytes(ds: Dataset) -> bytes:
    """The data set alone, Explicit VR Little Endian, as it follows the File Meta."""
    bare = Dataset()
    bare.update(ds)  # without its File Meta Information, which dcmwrite would write too
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, bare, implicit_vr=False, little_endian=True)
    return buffer.getvalue()


def with_meta(body: bytes, *, syntax: str = ExplicitVRLittleEndian, sop: str | None = None) -> bytes:
    """Preamble, 'DICM', a File Meta group for ``syntax`` and ``body``."""
    uid = (sop or "1.2.3").encode()
    group = b"".join(
        [
            element(0x00020001, b"OB", b"\x00\x01"),
            element(0x00020002, b"UI", b"1.2.840.10008.5.1.4.1.1.7\0"),
            element(0x00020003, b"UI", uid + b"\0" * (len(uid) % 2)),
            element(0x00020010, b"UI", syntax.encode() + b"\0" * (len(syntax) % 2)),
        ]
    )
    return bytes(128) + b"DICM" + element(0x00020000, b"UL", struct.pack("<I", len(group))) + group + body


def small_instance(**attributes: Any) -> tuple[Dataset, bytes]:
    ds = make_dataset(rows=2, columns=2, **attributes)
    return ds, to_part10(ds)


def bounded(call: Callable[[], Any], *, seconds: float, mib: int) -> Any:
    """Run ``call``; assert it took under ``seconds`` of this process's CPU (not a busy
    machine's wall clock) and allocated under ``mib`` MiB at peak."""
    tracemalloc.start()
    started = time.process_time()
    try:
        try:
            result: Any = call()
        except InstanceRejected as rejected:
            result = rejected
        elapsed = time.process_time() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < seconds, f"took {elapsed:.2f} s"
    assert peak < mib * MIB, f"peak {peak / MIB:.1f} MiB"
    return result


def failure_reasons(answer: Answer) -> list[int]:
    """The FailureReason of every failed instance in a Store Instances Response."""
    body = answer.json()
    items = [
        item
        for key in (FAILED_SOP_SEQUENCE, OTHER_FAILURES_SEQUENCE)
        for item in body.get(key, {}).get("Value", [])
    ]
    return [item[FAILURE_REASON]["Value"][0] for item in items]


def writes_during(deployment: Deployment, call: Callable[[], Answer]) -> tuple[Answer, list[str]]:
    """The answer of ``call`` and the S3 keys written while it ran."""
    before = len(deployment.watch.keys)
    answer = call()
    return answer, [key for operation, key in deployment.watch.keys[before:] if operation == "PutObject"]


def s3_object(deployment: Deployment, key: str) -> bytes:
    body: bytes = boto3.client("s3").get_object(Bucket=deployment.bucket, Key=key)["Body"].read()
    return body


# ====================================================================== 1. polyglot preamble
PREAMBLES = {
    "windows-pe": b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00"
    + b"This program cannot be run",
    "elf": b"\x7fELF\x02\x01\x01\x00" + bytes(8) + b"\x02\x00\x3e\x00",
    "html-script": b"<html><script>fetch('http://169.254.169.254/')</script>",
}


@pytest.mark.parametrize("preamble", PREAMBLES.values(), ids=PREAMBLES.keys())
def test_polyglot_preamble_is_zeroed_in_storage_and_retrieval(
    deployment: Deployment, preamble: bytes
) -> None:
    # Given a valid instance whose preamble is an executable or script header
    ds, data = small_instance()
    polyglot = preamble.ljust(128, b"\xcc") + data[128:]
    # When it is stored through STOW-RS
    answer, written = writes_during(deployment, lambda: deployment.stow(polyglot))
    assert answer.status == 200
    # Then the S3 object has a zero preamble and every other byte as sent
    (key,) = [k for k in written if k.endswith(".dcm")]
    stored = s3_object(deployment, key)
    assert stored[:128] == bytes(128)
    assert stored[128:] == polyglot[128:]
    # And WADO-RS returns the same zeroed bytes
    path = f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    retrieved = deployment.call("GET", path, headers={"accept": AS_STORED})
    assert retrieved.status == 200
    assert retrieved.body == stored


# ====================================================================== 2. huge declared lengths
def _huge_lengths() -> dict[str, bytes]:
    ds, data = small_instance()
    body = data_set_bytes(ds)
    sop = ds.SOPInstanceUID
    sequence_item = ITEM + struct.pack("<I", 0xFFFFFFF0) + bytes(16)
    no_pixels = make_dataset(rows=2, columns=2)
    del no_pixels.PixelData
    no_pixels.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    implicit = to_part10(no_pixels)
    return {
        "pixel-data-OB": with_meta(body + element(PIXEL_DATA, b"OB", length=0xFFFFFFF0) + bytes(16), sop=sop),
        "private-UN": with_meta(body + element(0x00431029, b"UN", length=0xFFFFFFF0) + bytes(16), sop=sop),
        "sequence-SQ": with_meta(
            body + element(CONTENT_SEQUENCE, b"SQ", length=0xFFFFFFF0) + bytes(16), sop=sop
        ),
        "item-in-sequence": with_meta(
            body + element(CONTENT_SEQUENCE, b"SQ", sequence_item, length=len(sequence_item)), sop=sop
        ),
        "item-in-undefined-sequence": with_meta(
            body + element(CONTENT_SEQUENCE, b"SQ", length=UNDEFINED) + sequence_item, sop=sop
        ),
        "file-meta-OB": data[:132] + element(0x00020001, b"OB", length=0xFFFFFFF0) + bytes(16),
        "implicit-vr": implicit + struct.pack("<HHI", 0x7FE0, 0x0010, 0xFFFFFFF0) + bytes(16),
    }


HUGE = _huge_lengths()


# A defined-length item inside a defined-length sequence that claims 4 GiB is read as far as
# its sequence goes and accepted: pydicom keeps no item lengths, so the element check of
# instance.py does not see it. Parsing stays bounded (nothing near 4 GiB is allocated), but
# the stored object carries the lying length to clients that retrieve it as stored.
KNOWN_GAPS: set[str] = set()  # none left (item lengths are checked since session 2)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(
            data,
            id=name,
            marks=[pytest.mark.xfail(strict=True, reason="item lengths are not checked")]
            if name in KNOWN_GAPS
            else [],
        )
        for name, data in HUGE.items()
    ],
)
def test_huge_declared_lengths_are_rejected_in_bounded_time_and_memory(data: bytes) -> None:
    # Given an element, item or group claiming about 4 GiB in a file of a few KiB
    # When it is read, measured
    result = bounded(lambda: read_instance(data, limits=Limits()), seconds=2, mib=16)
    # Then it is rejected as not understood (nothing near the declared size is allocated)
    assert isinstance(result, InstanceRejected), "accepted"
    assert result.failure.reason == FailureReason.CANNOT_UNDERSTAND


def test_huge_file_meta_group_length_is_not_trusted() -> None:
    # Given a valid file whose (0002,0000) File Meta group length claims 4 GiB
    _, data = small_instance()
    lying = data[:140] + struct.pack("<I", 0xFFFFFFFF) + data[144:]
    # When it is read, measured / Then the group is read element by element, as pydicom does
    received = bounded(lambda: read_instance(lying, limits=Limits()), seconds=2, mib=16)
    assert received.data[128:] == lying[128:]


def test_huge_part_content_length_is_ignored_for_framing(deployment: Deployment) -> None:
    # Given a multipart part whose Content-Length claims 10^20 bytes (framing is by boundary)
    _, data = small_instance()
    body = (
        b"--B\r\nContent-Type: application/dicom\r\nContent-Length: 99999999999999999999\r\n\r\n"
        + data
        + b"\r\n--B--\r\n"
    )
    # When it is stored / Then the part's real bytes are stored
    answer = deployment.stow(body, MULTIPART_DICOM)
    assert answer.status == 200
    assert len(answer.json()[REFERENCED_SOP_SEQUENCE]["Value"]) == 1


def test_more_parts_than_allowed_are_refused_with_413(deployment: Deployment) -> None:
    # Given 1,001 empty parts (the limit is 1,000) / When sent to STOW-RS
    body = b"--B\r\n\r\n\r\n" * 1001 + b"--B--"
    answer, written = writes_during(deployment, lambda: deployment.stow(body, MULTIPART_DICOM))
    # Then 413, before any part is stored
    assert answer.status == 413
    assert written == []


# ====================================================================== 3. deep nesting
def nested(depth: int, *, undefined_length: bool) -> bytes:
    """``depth`` Content Sequences, each holding one item that holds the next."""
    head = element(CONTENT_SEQUENCE, b"SQ", length=UNDEFINED)
    if undefined_length:
        return (head + ITEM + struct.pack("<I", UNDEFINED)) * depth + (
            ITEM_DELIMITER + SEQUENCE_DELIMITER
        ) * depth
    inner = b""
    for _ in range(depth):
        item = ITEM + struct.pack("<I", len(inner)) + inner
        inner = element(CONTENT_SEQUENCE, b"SQ", item)
    return inner


@pytest.mark.parametrize(
    ("depth", "undefined_length"),
    [(200_000, True), (20_000, False)],
    ids=["200000-undefined", "20000-defined"],
)
def test_nesting_far_beyond_the_recursion_limit_is_rejected_in_bounded_time_and_memory(
    depth: int, undefined_length: bool
) -> None:
    # Given sequences nested hundreds of times deeper than Python's recursion limit
    body = data_set_bytes(make_dataset(rows=2, columns=2)) + nested(depth, undefined_length=undefined_length)
    data = with_meta(body)
    limit = sys.getrecursionlimit()
    # When it is read, measured
    result = bounded(lambda: read_instance(data, limits=Limits()), seconds=5, mib=64)
    # Then it is rejected as not understood, and the interpreter is left as it was
    assert isinstance(result, InstanceRejected), "accepted"
    assert result.failure.reason == FailureReason.CANNOT_UNDERSTAND
    assert "nested" in result.failure.message
    assert sys.getrecursionlimit() == limit


def test_deeply_nested_instance_is_refused_by_stow_and_nothing_is_stored(deployment: Deployment) -> None:
    # Given an instance with 50,000 nested sequences (1.8 MB)
    ds = make_dataset(rows=2, columns=2)
    data = with_meta(data_set_bytes(ds) + nested(50_000, undefined_length=True), sop=ds.SOPInstanceUID)
    # When it is sent to STOW-RS
    answer, written = writes_during(deployment, lambda: deployment.stow(data))
    # Then it fails as "cannot understand" (0xC000) and nothing reaches S3
    assert answer.status == 409
    assert failure_reasons(answer) == [FailureReason.CANNOT_UNDERSTAND]
    assert written == []


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("includefield=" + ".".join(["00081140"] * 900), 200),  # a return key: a path is allowed
        (".".join(["RequestAttributesSequence"] * 300) + "=x", 400),  # not a matching key
        ("includefield=" + ".".join(["00081140"] * 2000), 400),  # over 8,192 characters
    ],
    ids=["include-900-levels", "match-300-levels", "over-the-query-limit"],
)
def test_deeply_nested_query_keys_are_bounded(deployment: Deployment, query: str, status: int) -> None:
    # Given a key that is a sequence path hundreds of levels deep
    # When searched / Then it is answered (or refused) fast
    started = time.process_time()
    answer = deployment.call("GET", "/studies", query=query)
    assert answer.status == status
    assert time.process_time() - started < 2


# ====================================================================== 4. deflate bomb
def deflate_bomb(inflated: int) -> bytes:
    """A raw deflate stream of a small data set and ``inflated`` zero bytes of Pixel Data.

    The zeros are one compressed MiB repeated (a sync flush makes each MiB a self-contained
    run of blocks), so a bomb of gigabytes is built in milliseconds: about 1 KiB per MiB.
    """
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    head = compressor.compress(
        data_set_bytes(make_dataset(rows=2, columns=2, PixelData=b""))
        + element(PIXEL_DATA, b"OB", length=0xFFFFFFF0)
    )
    first = compressor.compress(bytes(MIB)) + compressor.flush(zlib.Z_SYNC_FLUSH)
    repeated = compressor.compress(bytes(MIB)) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return head + first + repeated * (inflated // MIB - 1) + compressor.flush()


def test_the_bomb_inflates_to_what_it_claims() -> None:
    # Given a small bomb built the same way / When inflated / Then it is exactly that large
    inflated = zlib.decompress(deflate_bomb(4 * MIB), -zlib.MAX_WBITS)
    assert len(inflated) - inflated.index(b"\xe0\x7f\x10\x00OB") - 12 == 4 * MIB
    assert len(deflate_bomb(1024 * MIB)) < 1.1 * MIB  # and a GiB bomb is about 1 MiB


def test_deflate_bomb_of_gigabytes_is_refused_with_bounded_memory() -> None:
    # Given a 4 MiB file that inflates to 4 GiB, and the default 256 MiB budget
    data = with_meta(deflate_bomb(4096 * MIB), syntax=DeflatedExplicitVRLittleEndian)
    assert len(data) < 5 * MIB
    # When it is read, measured
    result = bounded(lambda: read_instance(data, limits=Limits()), seconds=10, mib=48)
    # Then it is refused for resources, never inflated past the budget
    assert isinstance(result, InstanceRejected), "accepted"
    assert result.failure.reason == FailureReason.OUT_OF_RESOURCES
    assert "256 MiB" in result.failure.message


def test_deflate_bomb_through_stow_is_refused_and_nothing_is_stored(deployment: Deployment) -> None:
    # Given a 1 GiB bomb (about 1 MiB on the wire) sent to STOW-RS
    data = with_meta(deflate_bomb(1024 * MIB), syntax=DeflatedExplicitVRLittleEndian)
    # When it is stored, measured
    answer, written = bounded(
        lambda: writes_during(deployment, lambda: deployment.stow(data)), seconds=20, mib=64
    )
    # Then it fails with "out of resources" (0xA700), a sanitised Warning, and nothing in S3
    assert answer.status == 409
    assert failure_reasons(answer) == [FailureReason.OUT_OF_RESOURCES]
    assert any("inflates to more than" in w for w in answer.headers["warning"])
    assert written == []


def test_deflate_bomb_with_bytes_after_its_stream_is_refused_in_bounded_time() -> None:
    # Given a 512 MiB bomb (its stream ends, so inflation could reach its end) with a pad byte
    data = with_meta(deflate_bomb(512 * MIB) + b"\0", syntax=DeflatedExplicitVRLittleEndian)
    # When it is read with the default 256 MiB budget, measured and under a deadline
    with deadline(30):
        result = bounded(lambda: read_instance(data, limits=Limits()), seconds=10, mib=48)
    # Then the bound stops it
    assert isinstance(result, InstanceRejected), "accepted"
    assert result.failure.reason == FailureReason.OUT_OF_RESOURCES


def test_padded_deflated_instance_through_stow_is_stored_in_bounded_time(deployment: Deployment) -> None:
    # Given a 2 MiB image that pydicom writes deflated with a pad byte after the stream
    # (the review's reproduction: such a request held STOW until the function timed out)
    def deflated(name_length: int) -> bytes:
        ds = make_dataset(rows=1024, columns=1024, PatientName="A" * name_length)
        ds.PixelData = bytes(2 * MIB)
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        return to_part10(ds)

    # (the stream's length depends on the random UIDs: the first padded one of a few names)
    data = next(d for d in map(deflated, range(2, 42, 2)) if after_deflate_stream(d) == b"\0")
    # When it is stored through STOW-RS, under a deadline
    with deadline(30):
        answer = deployment.stow(data)
    # Then it is stored
    assert answer.status == 200, answer.body[:300]


def test_many_bombs_in_one_request_share_one_inflation_budget() -> None:
    # Given a request of ten parts, each a bomb just under the per-instance cap (200 MiB)
    from dicomweb_core.dicom.instance import InflationBudget

    bomb = with_meta(deflate_bomb(200 * MIB), syntax=DeflatedExplicitVRLittleEndian)
    budget = InflationBudget(Limits().max_inflated_bytes)
    # When they are read one after the other with the request's budget, measured
    started = time.process_time()
    outcomes = []
    for _ in range(10):
        try:
            read_instance(bomb, limits=Limits(), budget=budget)
            outcomes.append("accepted")
        except InstanceRejected as rejected:
            outcomes.append(rejected.failure.message)
    elapsed = time.process_time() - started
    # Then at most about one cap of inflation is spent for the whole request: after the
    # budget runs out, every further deflated part is refused at once
    assert budget.remaining == 0
    refused = [o for o in outcomes if "together inflate" in o]
    assert len(refused) >= 8, outcomes
    assert elapsed < 15, elapsed


# ====================================================================== 5. UID path traversal
TRAVERSALS = [
    "..",
    "%2e%2e",
    "%2E%2E",
    ".%2e",
    "..%2F..%2Fetc",
    "1.2%2F..%2F..%2Fcache",
    "1.2.3%00",
    "1.2.3\0",
    "1.2.3%00%00%00%00",
    "\0",
    "..\\..\\etc",
    "1.2.3%5C..",
    "%252e%252e",
]
ROUTES = [
    ("GET", "/studies/{u}/series"),
    ("GET", "/studies/{u}/instances"),
    ("GET", "/studies/{s}/series/{u}/instances"),
    ("GET", "/deid/studies/{u}/series"),
    ("GET", "/studies/{u}"),
    ("GET", "/studies/{u}/metadata"),
    ("GET", "/studies/{s}/series/{u}/metadata"),
    ("GET", "/studies/{s}/series/{se}/instances/{u}"),
    ("GET", "/studies/{s}/series/{se}/instances/{u}/frames/1"),
    ("GET", "/studies/{s}/series/{se}/instances/{u}/bulkdata/7FE00010"),
    ("GET", "/studies/{s}/series/{se}/instances/1.2.3/bulkdata/{u}"),
    ("GET", "/deid/studies/{s}/series/{se}/instances/{u}"),
    ("POST", "/studies/{u}"),
]


@pytest.mark.parametrize(("method", "route"), ROUTES, ids=[f"{m} {r}" for m, r in ROUTES])
def test_traversal_in_path_uids_is_refused_on_every_route(
    deployment: Deployment, method: str, route: str
) -> None:
    _, data = small_instance()
    for segment in TRAVERSALS:
        # Given a route with a traversal in one UID (the others are the stored study's)
        path = route.format(u=segment, s=STUDY, se=SERIES)
        # When it is requested (a STOW with a valid instance in the body)
        answer, written = writes_during(
            deployment,
            lambda path=path: deployment.call(
                method,
                path,
                body=data if method == "POST" else b"",
                headers={"content-type": "application/dicom"},
            ),
        )
        # Then it is refused as a bad UID or an unknown resource, and nothing is written
        # (every S3 key read is checked by Deployment.call to be under studies/<valid uid>/)
        assert answer.status in (400, 404), (path, answer.status, answer.body[:200])
        assert written == [], path


@pytest.mark.parametrize(
    "path",
    ['/studies/1.2"3', "/studies/1.2.3/series/\u20ac", "/studies/1.2`3/metadata", "/deid/studies/a#b"],
    ids=["double-quote", "euro-sign", "backtick", "hash"],
)
def test_paths_powertools_cannot_route_are_404_not_500(deployment: Deployment, path: str) -> None:
    # Given a segment API Gateway's {param} accepts but the handler's router does not match
    # When requested / Then 404 (it was a 500: Powertools' NotFoundError reached the catch-all)
    answer = deployment.call("GET", path)
    assert answer.status == 404
    assert "not a DICOMweb resource" in answer.json()["message"]


def _set_uid(ds: Dataset, keyword: str, value: str) -> None:
    tag = pydicom.datadict.tag_for_keyword(keyword)
    assert tag is not None
    ds[tag] = DataElement(tag, "UI", value, validation_mode=pydicom_config.IGNORE)


def test_nul_padded_uids_in_a_part10_file_are_stored_under_clean_keys(deployment: Deployment) -> None:
    # Given an instance whose UIDs carry runs of trailing NUL (and space) padding
    ds = make_dataset(rows=2, columns=2)
    study, series, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    _set_uid(ds, "StudyInstanceUID", study + "\0\0\0\0")
    _set_uid(ds, "SeriesInstanceUID", series + "\0 \0")
    _set_uid(ds, "SOPInstanceUID", sop + "\0" * 8)
    # When it is stored
    answer, written = writes_during(deployment, lambda: deployment.stow(to_part10(ds)))
    # Then the padding is gone from every key and from the response
    assert answer.status == 200
    prefix = f"studies/{study}/series/{series}/instances/{sop}"
    (dcm, json_document) = sorted(written)
    assert dcm.startswith(f"{prefix}/") and dcm.endswith(".dcm")
    assert json_document == dcm.removesuffix(".dcm") + ".json"
    assert "\\u0000" not in answer.body.decode()
    # And the instance is found under its clean UIDs
    assert deployment.call("GET", f"/{prefix}/metadata").status == 200


@pytest.mark.parametrize(
    "value",
    ["1.2\0/../../etc", "../../../etc/passwd", "1.2/../../cache", "%2e%2e", "1.2.3\0.4", "1.2\\..\\3"],
    ids=["nul-then-traversal", "dotdot", "slash-dotdot", "pct-dotdot", "inner-nul", "backslash"],
)
@pytest.mark.parametrize("keyword", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
def test_traversal_in_part10_uids_is_refused_and_nothing_is_stored(
    deployment: Deployment, keyword: str, value: str
) -> None:
    # Given an instance with a traversal in one of the UIDs its keys are built from
    ds = make_dataset(rows=2, columns=2)
    _set_uid(ds, keyword, value)
    # When it is stored
    answer, written = writes_during(deployment, lambda: deployment.stow(to_part10(ds)))
    # Then it fails as "data set does not match" (0xA900) and nothing reaches S3
    assert answer.status == 409
    assert failure_reasons(answer) == [FailureReason.DATASET_DOES_NOT_MATCH]
    assert written == []


# ====================================================================== 6. header injection
CRLF = [
    "\r\nSet-Cookie: session=attacker",
    "\nX-Injected: 1",
    "\rLocation: http://evil.example/",
    "%0D%0ASet-Cookie:%20session%3Dattacker",
    "%0ALocation:%20http://evil.example/",
]


@pytest.mark.parametrize("crlf", CRLF, ids=["crlf", "lf", "cr", "pct-crlf", "pct-lf"])
def test_crlf_in_any_request_value_never_reaches_a_response_header(deployment: Deployment, crlf: str) -> None:
    sop = "1.2.826.0.1.3680043.8.498.900003"
    instance = f"/studies/{STUDY}/series/{SERIES}/instances/{sop}"
    requests_ = [
        ("GET", "/studies", f"PatientName={crlf}", {}),
        ("GET", "/studies", f"limit=5000&PatientName=A*{crlf}", {}),  # a Warning is sent
        ("GET", "/studies", f"{crlf}=1", {}),
        ("GET", "/studies", f"accept=application/dicom%2Bjson{crlf}", {}),
        ("GET", "/studies", "", {"accept": f"application/dicom+json{crlf}"}),
        ("GET", f"{instance}/metadata", "", {"if-none-match": f'"x"{crlf}'}),
        ("GET", f"{instance}/metadata", "", {"accept-encoding": f"gzip{crlf}"}),
        (
            "GET",
            f"{instance}/frames/1",
            "",
            {"accept": f"multipart/related; type=application/octet-stream{crlf}"},
        ),
        ("GET", f"{instance}{crlf}/metadata", "", {}),
        ("GET", f"/studies/{STUDY}{crlf}", "", {}),
        ("POST", "/studies", "", {"content-type": f"application/dicom{crlf}"}),
        ("POST", f"/studies/{crlf}", "", {"content-type": "application/dicom"}),
    ]
    for method, path, query, headers in requests_:
        # When the value with CR/LF is sent / Then no header value carries CR or LF and no
        # header appears beyond the known ones (Deployment.call asserts both on every answer)
        deployment.call(method, path, query=query, headers=headers, body=b"x" if method == "POST" else b"")


def test_stow_warning_headers_are_sanitised(deployment: Deployment) -> None:
    # Given a request of eleven failing instances (Warnings are sent for the first ten)
    parts = [({"Content-Type": "application/dicom"}, b"\r\nX-Injected: 1\r\n" * i) for i in range(1, 12)]
    body, boundary = encode_multipart(parts)
    # When it is stored
    answer = deployment.stow(body, f'multipart/related; type="application/dicom"; boundary={boundary}')
    # Then the Warning header is a list of at most ten PS3.18 §8.3.4.3 values (API Gateway
    # payload v2 joins them with ", "), each printable ASCII without quotes inside
    assert answer.status == 409
    (header,) = answer.headers["warning"]
    one = r'299 dicomweb "[\x20\x21\x23-\x7e]{0,200}"'
    assert re.fullmatch(rf"{one}(?:, {one}){{0,9}}", header), header


# ====================================================================== 7. SSRF via BulkDataURI
METADATA_SERVICE = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"
BULK_JSON = json.dumps(
    [
        {
            "00080018": {"vr": "UI", "Value": ["1.2.3"]},
            "7FE00010": {"vr": "OB", "BulkDataURI": METADATA_SERVICE},
            "00431029": {"vr": "OB", "BulkDataURI": "file:///etc/passwd"},
        }
    ]
).encode()


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every way to open a connection fails the test (and is recorded, should it be swallowed)."""
    attempts: list[str] = []

    def refuse(name: str) -> Callable[..., Any]:
        def refused(*args: Any, **kwargs: Any) -> Any:
            attempts.append(f"{name}{args[1:2]!r}")
            raise OSError(f"outbound network access in a test: {name}")

        return refused

    monkeypatch.setattr(socket.socket, "connect", refuse("socket.connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", refuse("socket.connect_ex"))
    monkeypatch.setattr(socket, "create_connection", refuse("socket.create_connection"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("socket.getaddrinfo"))
    monkeypatch.setattr(urllib.request, "urlopen", refuse("urllib.request.urlopen"))
    monkeypatch.setattr(http.client.HTTPConnection, "connect", refuse("HTTPConnection.connect"))
    monkeypatch.setattr(requests.Session, "request", refuse("requests.Session.request"))
    yield attempts
    assert attempts == [], attempts


def test_the_network_guard_catches_every_kind_of_fetch(no_network: list[str]) -> None:
    # Given the guard the SSRF tests rely on / When code tries to reach the metadata service
    fetches: list[Callable[[], Any]] = [
        lambda: urllib.request.urlopen(METADATA_SERVICE, timeout=1),
        lambda: requests.get(METADATA_SERVICE, timeout=1),
        lambda: socket.create_connection(("169.254.169.254", 80), timeout=1),
        lambda: http.client.HTTPConnection("169.254.169.254", timeout=1).request("GET", "/"),
    ]
    for fetch in fetches:
        with pytest.raises(OSError, match="outbound network access"):
            fetch()
    # Then every attempt was seen (and the record is cleared, as this test made them on purpose)
    assert len(no_network) == len(fetches)
    no_network.clear()


def _multipart(*parts: tuple[bytes, bytes]) -> bytes:
    return b"".join(b"--B\r\n" + head + b"\r\n" + body + b"\r\n" for head, body in parts) + b"--B--\r\n"


SSRF_REQUESTS = {
    "dicom+json-body": ("application/dicom+json", BULK_JSON, 415),
    "json-body": ("application/json", BULK_JSON, 415),
    "multipart-dicom+json": (
        'multipart/related; type="application/dicom+json"; boundary=B',
        _multipart(
            (b"Content-Type: application/dicom+json\r\n", BULK_JSON),
            (
                b"Content-Type: application/octet-stream\r\nContent-Location: "
                + METADATA_SERVICE.encode()
                + b"\r\n",
                b"",
            ),
        ),
        415,
    ),
    "dicom+json-part-in-dicom-request": (
        MULTIPART_DICOM,
        _multipart((b"Content-Type: application/dicom+json\r\n", BULK_JSON)),
        415,
    ),
    "external-body-part": (
        MULTIPART_DICOM,
        _multipart(
            (
                b'Content-Type: message/external-body; access-type=URL; URL="'
                + METADATA_SERVICE.encode()
                + b'"\r\n',
                b"",
            )
        ),
        415,
    ),
    "external-body-request": (
        f'message/external-body; access-type=URL; URL="{METADATA_SERVICE}"',
        b"",
        415,
    ),
    "xml-metadata": (
        'multipart/related; type="application/dicom+xml"; boundary=B',
        _multipart((b"Content-Type: application/dicom+xml\r\n", b'<BulkData URI="file:///etc/passwd"/>')),
        415,
    ),
}


@pytest.mark.parametrize(("content_type", "body", "status"), SSRF_REQUESTS.values(), ids=SSRF_REQUESTS.keys())
def test_stow_refuses_bulk_data_uris_without_fetching(
    deployment: Deployment, no_network: list[str], content_type: str, body: bytes, status: int
) -> None:
    # Given a STOW-RS request whose metadata points its bulk data at the instance metadata
    # service or a local file
    # When it is sent
    answer, written = writes_during(deployment, lambda: deployment.stow(body, content_type))
    # Then it is refused (only Part 10 instances are accepted), nothing is stored, and no
    # connection is attempted (the no_network fixture fails the test otherwise)
    assert answer.status == status, answer.body[:300]
    assert written == []
    assert "169.254" not in answer.body.decode() and "passwd" not in answer.body.decode()


def test_urls_inside_stored_instances_are_never_fetched(
    deployment: Deployment, no_network: list[str]
) -> None:
    # Given a Part 10 instance whose part carries a Content-Location and whose data set holds
    # URLs (Retrieve URL, Retrieve URI, a private UR element) pointing at internal services
    ds = make_dataset(rows=2, columns=2)
    ds.RetrieveURL = METADATA_SERVICE
    ds.add_new(0x0040E010, "UR", "file:///etc/passwd")  # Retrieve URI
    ds.add_new(0x00091010, "UR", "http://127.0.0.1:2375/containers/json")
    data = to_part10(ds)
    body = _multipart(
        (b"Content-Type: application/dicom\r\nContent-Location: " + METADATA_SERVICE.encode() + b"\r\n", data)
    )
    # When it is stored and its metadata retrieved
    answer = deployment.stow(body, MULTIPART_DICOM)
    path = f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    metadata = deployment.call("GET", f"{path}/metadata")
    # Then the instance is stored from the body as sent, the URLs are returned as data only,
    # and nothing was fetched (no_network)
    assert answer.status == 200
    assert metadata.status == 200
    (document,) = metadata.json()
    assert document["00081190"]["Value"] == [METADATA_SERVICE]
    # And every BulkDataURI the server hands out is its own
    bulk = [value["BulkDataURI"] for value in document.values() if "BulkDataURI" in value]
    assert all(uri.startswith(f"https://{DOMAIN}/") for uri in bulk), bulk


# ====================================================================== 8. algorithmic complexity
@pytest.mark.parametrize(
    "query",
    [
        "StudyDescription=" + "*a" * 40 + "b",
        "StudyDescription=" + "*?" * 60 + "Z",
        "PatientName=" + "*a" * 60 + "b",
        "AccessionNumber=" + "*A" * 60 + "x",
    ],
    ids=["many-stars", "stars-and-questions", "person-name", "accession"],
)
def test_wildcard_queries_with_many_stars_are_answered_in_bounded_time(
    deployment: Deployment, query: str
) -> None:
    # Given stored values of 60 'a' (StudyDescription) and a long all-'a' patient name, and a
    # pattern of dozens of '*' that cannot match (exponential for a backtracking regex)
    assert parse_query(Level.STUDY, query).terms
    # When searched
    started = time.process_time()
    answer = deployment.call("GET", "/studies", query=query)
    # Then the answer comes in well under a second per candidate
    assert answer.status in (200, 204)
    assert time.process_time() - started < 2


def test_part_content_location_is_not_followed() -> None:
    # Given a part whose Content-Location names the metadata service / When the body is split
    body = _multipart((b"Content-Location: " + METADATA_SERVICE.encode() + b"\r\n", b"x"))
    (part,) = split_parts(body, "B")
    # Then the part's bytes are the request's own: the header is only a header
    assert bytes(part.body) == b"x"
