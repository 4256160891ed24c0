"""The folder uploader's planning: walking folders and zips, batching under the ceiling, the journal."""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from infra.datasets.generate import make_dataset, new_uid, to_part10
from infra.upload import MAX_REQUEST_BYTES, TooLargeForStow, stow_batches
from infra.upload.batches import (
    MAX_FILE_BYTES,
    MAX_INSTANCES_PER_REQUEST,
    PART_OVERHEAD_BYTES,
    encoded_size,
    plan,
    session_groups,
)
from infra.upload.files import DicomFile, NotPart10, Source, read_header, scan
from infra.upload.journal import DEFAULT_NAME, Journal, default_path
from infra.upload.outcomes import Outcome, StoreResponse

URL = "http://127.0.0.1:8080"


def ct_slice(study: str, series: str, number: int, *, size: int = 512) -> Dataset:
    """A 512x512 16-bit CT slice: about 525 kB as Part 10."""
    ds = make_dataset(study=study, series=series, rows=size, columns=size, InstanceNumber=number)
    rng = np.random.default_rng(number)
    ds.PixelData = rng.integers(0, 4096, size=(size, size), dtype=np.uint16).tobytes()
    return ds


def fake_file(size: int, name: str = "x.dcm") -> DicomFile:
    return DicomFile(
        Source(Path("/data") / name), size, "1", new_uid(), "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1"
    )


# ---------------------------------------------------------------- reading headers


def test_read_header_takes_the_uids_from_the_file_meta_information() -> None:
    # Given a Part 10 file
    ds = make_dataset()
    data = to_part10(ds)
    # When its header is read from a stream that would fail past the meta information
    header = read_header(io.BytesIO(data[:400]))
    # Then the SOP Class, SOP Instance and transfer syntax UIDs are the file's
    assert header.sop_instance_uid == ds.SOPInstanceUID
    assert header.sop_class_uid == ds.SOPClassUID
    assert header.transfer_syntax_uid == ExplicitVRLittleEndian


def test_read_header_reads_an_implicit_vr_data_set_after_its_explicit_meta() -> None:
    # Given a Part 10 file whose data set is Implicit VR (the meta information never is)
    ds = make_dataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    # Then the header reads as usual
    assert read_header(io.BytesIO(to_part10(ds))).transfer_syntax_uid == ImplicitVRLittleEndian


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"hello, not DICOM at all", "not a DICOM Part 10 file"),
        (b"\0" * 128 + b"DICX" + b"\0" * 64, "not a DICOM Part 10 file"),
        (b"\0" * 128 + b"DICM", "has no Media Storage SOP Class UID, Media Storage SOP Instance UID"),
        (b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\x40\x00" + b"1.2", "truncated"),
    ],
)
def test_read_header_says_why_a_file_is_not_part_10(data: bytes, reason: str) -> None:
    with pytest.raises(NotPart10, match=reason):
        read_header(io.BytesIO(data))


def test_read_header_refuses_a_dicomdir() -> None:
    # Given a media directory (DICOMDIR): Part 10, but no instance to store
    ds = make_dataset(sop_class="1.2.840.10008.1.3.10")
    with pytest.raises(NotPart10, match="DICOMDIR"):
        read_header(io.BytesIO(to_part10(ds)))


# ---------------------------------------------------------------- walking folders and zips


def test_scan_walks_folders_and_zips_and_reports_what_it_skips(tmp_path: Path) -> None:
    # Given a folder with nested DICOM files, a text file, and a zip holding DICOM and a note
    study = new_uid()
    nested = tmp_path / "study" / "series-2"
    nested.mkdir(parents=True)
    on_disk = [make_dataset(study=study) for _ in range(3)]
    (tmp_path / "study" / "a.dcm").write_bytes(to_part10(on_disk[0]))
    (tmp_path / "study" / "b").write_bytes(to_part10(on_disk[1]))  # no extension: still DICOM
    (nested / "c.dcm").write_bytes(to_part10(on_disk[2]))
    (tmp_path / "study" / "notes.txt").write_text("not an image")
    zipped = [make_dataset(study=study) for _ in range(2)]
    with zipfile.ZipFile(tmp_path / "study" / "more.zip", "w") as archive:
        archive.writestr("inner/one.dcm", to_part10(zipped[0]))
        archive.writestr("two.dcm", to_part10(zipped[1]), compress_type=zipfile.ZIP_DEFLATED)
        archive.writestr("README", "hello")
    (tmp_path / "study" / "run.jsonl").write_text("")  # this run's journal
    (nested / DEFAULT_NAME).write_text("")  # an earlier run's, in a subfolder

    # When the folder is scanned
    found = scan([tmp_path / "study"], ignore=[tmp_path / "study" / "run.jsonl"], ignore_names={DEFAULT_NAME})

    # Then every DICOM file is found, zip members included, in a stable order
    uids = [f.sop_instance_uid for f in found.files]
    assert sorted(uids) == sorted(ds.SOPInstanceUID for ds in on_disk + zipped)
    names = [f.name for f in found.files]
    assert names == sorted(names)
    assert f"{tmp_path / 'study' / 'more.zip'}!inner/one.dcm" in names
    member = next(f for f in found.files if f.source.member == "two.dcm")
    assert member.size == len(to_part10(zipped[1]))
    assert member.fingerprint.startswith("crc32:")
    assert member.source.read() == to_part10(zipped[1])
    # And the text file and the zip's README are skipped with a reason; the journals silently
    skipped = {Path(s.name).name: s.reason for s in found.skipped}
    assert set(skipped) == {"notes.txt", "more.zip!README"}
    assert all("not a DICOM Part 10 file" in reason for reason in skipped.values())


def test_scan_takes_a_zip_file_and_a_single_file_as_arguments(tmp_path: Path) -> None:
    # Given a zip file and a single file, given directly, and one given twice
    first, second = make_dataset(), make_dataset()
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as archive:
        archive.writestr("x.dcm", to_part10(first))
    (tmp_path / "b.dcm").write_bytes(to_part10(second))
    # When both are scanned
    found = scan([tmp_path / "a.zip", tmp_path / "b.dcm", tmp_path / "b.dcm"])
    # Then both instances are found once each, in argument order
    assert [f.sop_instance_uid for f in found.files] == [first.SOPInstanceUID, second.SOPInstanceUID]
    assert found.skipped == []


def test_scan_reports_a_broken_zip(tmp_path: Path) -> None:
    (tmp_path / "broken.zip").write_bytes(b"PK\x03\x04 not really")
    found = scan([tmp_path])
    assert found.files == []
    assert [s.reason.split(":")[0] for s in found.skipped] == ["not a readable zip file"]


def test_a_source_reads_a_range_of_a_zip_member(tmp_path: Path) -> None:
    # Given a deflated zip member
    data = os.urandom(100_000)
    with zipfile.ZipFile(tmp_path / "a.zip", "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("big.bin", data)
    # When a part of it is read (as a multipart upload's part is)
    # Then it is that range of the member's bytes
    assert Source(tmp_path / "a.zip", "big.bin").read_range(40_000, 30_000) == data[40_000:70_000]


# ---------------------------------------------------------------- batching


def test_a_16_slice_ct_series_is_split_into_requests_under_the_ceiling() -> None:
    # Given a 16-slice 512x512 CT series: 8.4 MB, twice what one STOW-RS request carries
    study, series = new_uid(), new_uid()
    datasets = [ct_slice(study, series, n) for n in range(1, 17)]
    sizes = [encoded_size(ds) for ds in datasets]
    assert sum(sizes) > 8_000_000
    # When it is batched for dicomweb-client's store_instances
    batches = stow_batches(datasets)
    # Then every dataset is in one batch, in order, and each batch fits the ceiling with framing
    assert [ds for batch in batches for ds in batch] == datasets
    assert len(batches) == 3
    for batch in batches:
        assert sum(encoded_size(ds) + PART_OVERHEAD_BYTES for ds in batch) <= MAX_REQUEST_BYTES


def test_encoded_size_of_a_dataset_is_what_dicomweb_client_sends() -> None:
    # dicomweb-client writes each dataset with pydicom.dcmwrite before posting it
    ds = make_dataset()
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds)
    assert encoded_size(ds) == len(buffer.getvalue())
    assert encoded_size(b"12345") == 5
    assert encoded_size(42) == 42


def test_stow_batches_bounds_the_instances_per_request() -> None:
    # Given 120 tiny instances: all would fit one request by size
    batches = stow_batches([1000] * 120)
    # Then no request carries more than the bound
    assert [len(b) for b in batches] == [MAX_INSTANCES_PER_REQUEST, MAX_INSTANCES_PER_REQUEST, 20]


def test_stow_batches_fills_each_request_up_to_the_ceiling_exactly() -> None:
    # Given instances that fill a request exactly, with their framing
    exact = MAX_REQUEST_BYTES // 4 - PART_OVERHEAD_BYTES
    # Then four go in a request, and a fifth starts the next
    assert [len(b) for b in stow_batches([exact] * 5)] == [4, 1]
    assert [len(b) for b in stow_batches([exact + 1] * 4)] == [3, 1]


def test_stow_batches_refuses_an_instance_no_request_can_carry() -> None:
    with pytest.raises(TooLargeForStow, match=r"item 1 is .* upload session") as raised:
        stow_batches([10, MAX_REQUEST_BYTES, 10])
    assert raised.value.index == 1


def test_plan_sends_large_files_through_sessions_and_refuses_what_no_session_takes() -> None:
    # Given small files, a file just over what one request carries, a 100 MB one and a 6 GiB one
    small = [fake_file(500_000, f"s{n}.dcm") for n in range(10)]
    over = fake_file(MAX_REQUEST_BYTES - PART_OVERHEAD_BYTES + 1, "over.dcm")
    big = fake_file(100 * 1024 * 1024, "big.dcm")
    huge = fake_file(MAX_FILE_BYTES + 1, "huge.dcm")
    # When they are planned
    sends = plan([small[0], over, *small[1:], big, huge])
    # Then the small ones go in STOW-RS batches in order, the large ones in one session
    assert [f for batch in sends.stow for f in batch] == small
    assert all(len(batch) <= 8 for batch in sends.stow)
    assert sends.sessions == [[over, big]]
    # And the one over the session limit is refused with its reason, never silently dropped
    assert [(f, "upload session" in why) for f, why in sends.unsendable] == [(huge, True)]
    assert sends.files == 12
    assert sends.bytes == sum(f.size for f in [*small, over, big])


def test_session_groups_hold_at_most_1000_files_and_a_bounded_size() -> None:
    files = [fake_file(5 * 1024 * 1024) for _ in range(2100)]
    assert [len(g) for g in session_groups(files)] == [1000, 1000, 100]
    assert [len(g) for g in session_groups(files[:10], max_bytes=12 * 1024 * 1024)] == [2, 2, 2, 2, 2]


# ---------------------------------------------------------------- the journal


def test_the_journal_remembers_stored_files_across_runs(tmp_path: Path) -> None:
    # Given a folder of three files and a journal where one was stored and one failed
    for n in range(3):
        (tmp_path / f"{n}.dcm").write_bytes(to_part10(make_dataset()))
    files = scan([tmp_path]).files
    path = default_path(tmp_path)
    assert path == tmp_path / DEFAULT_NAME
    with Journal(path) as journal:
        journal.record(files[0], URL, Outcome.ok())
        journal.record(files[1], URL, Outcome.failed("no", 0xC000))
    # And a run interrupted in the middle of writing its last line
    with open(path, "a") as handle:
        handle.write('{"path": "' + files[2].name + '", "size": ')

    # When the journal is read again
    journal = Journal(path)
    # Then only the stored file counts as done, and only for that API
    assert [journal.is_stored(f, URL) for f in files] == [True, False, False]
    assert not journal.is_stored(files[0], "https://other.example")
    # And each line says what happened
    lines = [json.loads(line) for line in path.read_text().splitlines()[:2]]
    assert lines[0]["outcome"] == "stored" and lines[0]["sop"] == files[0].sop_instance_uid
    assert (lines[1]["outcome"], lines[1]["reason"], lines[1]["message"]) == ("failed", 0xC000, "no")

    # When the resumed run stores the last file
    journal.record(files[2], URL, Outcome.ok())
    journal.close()
    # Then its record is not glued to the cut line: the next run reads it
    assert Journal(path).is_stored(files[2], URL)


def test_the_journal_sends_a_file_again_once_it_changed_or_failed_later(tmp_path: Path) -> None:
    # Given a stored file
    (tmp_path / "a.dcm").write_bytes(to_part10(make_dataset()))
    [file] = scan([tmp_path]).files
    journal = Journal(tmp_path / "j.jsonl")
    journal.record(file, URL, Outcome.ok())
    # When the file is rewritten (a new mtime)
    os.utime(tmp_path / "a.dcm", ns=(1_000_000_000, 1_000_000_000))
    [changed] = scan([tmp_path]).files
    # Then the journal no longer counts it as stored
    assert journal.is_stored(file, URL)
    assert not journal.is_stored(changed, URL)
    # And a later failure of the same file replaces its earlier success, across a reload
    journal.record(file, URL, Outcome.failed("refused", 0x0111))
    journal.close()
    assert not Journal(tmp_path / "j.jsonl").is_stored(file, URL)


# ---------------------------------------------------------------- reading responses


def test_a_store_response_gives_each_instance_its_outcome_with_the_full_warning_text() -> None:
    # Given a Store Instances Response with one stored, one failed (comment cut to 64 characters)
    message = "an instance with this SOP Instance UID is already stored with different content"
    response = {
        "00081199": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": ["1.2.3"]}}]},
        "00081198": {
            "vr": "SQ",
            "Value": [
                {
                    "00081155": {"vr": "UI", "Value": ["1.2.4"]},
                    "00081197": {"vr": "US", "Value": [0x0111]},
                    "00000902": {"vr": "LO", "Value": [message[:64]]},
                }
            ],
        },
    }
    # When it is read with its Warning headers
    read = StoreResponse.read(response, warnings=[f'299 dicomweb "{message}"'])
    # Then each instance has its outcome, the failure in full words
    assert read.outcome_of("1.2.3") == Outcome.ok()
    assert read.outcome_of("1.2.4") == Outcome.failed(message, 0x0111)
    assert read.outcome_of("1.2.4").describe() == f"0x0111 (duplicate SOP instance): {message}"
    # And an instance it does not name is a failure that says so
    assert not read.outcome_of("1.2.5").stored
