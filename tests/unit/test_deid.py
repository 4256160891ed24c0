"""PS3.15 Annex E de-identification: the table, the profile, consistency, golden checks."""

from __future__ import annotations

import io
import warnings
from datetime import date
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from dicomweb_core.config import Limits
from dicomweb_core.deid.profile import Dates, Deidentifier, Options, Rule, table
from dicomweb_core.failures import InstanceRejected
from dicomweb_core.instance import read_instance
from dicomweb_core.uid import is_valid_uid
from infra.deid.make_table import convert
from tests.dicom_files import part10_files
from tests.generate import PHI_VALUES, make_phi_rich

KEY = b"0123456789abcdef0123456789abcdef"
PHI = list(PHI_VALUES)


def phi_rich(study: str, series: str, sop: str, *, referenced: str = "1.2.3.4.5.6") -> Dataset:
    return make_phi_rich(study=study, series=series, sop=sop, referenced=referenced)


def all_text(ds: Dataset) -> str:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue().decode("latin-1")


@pytest.fixture
def deid() -> Deidentifier:
    return Deidentifier(KEY, Options(dates=Dates.MODIFIED))


def test_table_is_the_2024b_edition_with_spot_checked_rows() -> None:
    # Given the committed table, When rows are looked up, Then they say what PS3.15 E.1-1 says
    t = table()
    assert t.edition == "2024b"
    assert len(t.exact) > 600
    assert t.exact[0x00100010].actions == {"basic": "Z"}
    assert t.exact[0x00100020].actions == {"basic": "Z/D"}
    assert t.exact[0x0020000D].actions == {"basic": "U", "retain_uids": "K"}
    assert t.exact[0x00080020].actions == {
        "basic": "Z",
        "retain_full_dates": "K",
        "retain_modified_dates": "C",
    }
    assert t.private.actions == {"basic": "X", "retain_safe_private": "C"}
    assert t.rule_for(0x60003000) is not None  # (60xx,3000) overlay data, a repeating group


def test_the_converter_reads_the_standards_json_shape() -> None:
    rows = [
        {"name": "Patient's Name", "tag": "(0010,0010)", "basicProfile": "Z", "id": "00100010"},
        {"name": "Overlay Data", "tag": "(60XX,3000)", "basicProfile": "X", "cleanGraphOpt": "C"},
        {"name": "Private Attributes", "tag": "(GGGG,EEEE) WHERE GGGG IS ODD", "basicProfile": "X"},
    ]
    document = convert(rows, "2024b", "test")
    assert [r["tag"] for r in document["rows"]] == ["00100010", "60xx3000", "private"]
    assert document["rows"][1]["actions"] == {"basic": "X", "clean_graphics": "C"}


@pytest.mark.parametrize(
    ("actions", "columns", "expected"),
    [
        ({"basic": "Z/D"}, [], "D"),
        ({"basic": "X/Z"}, [], "Z"),
        ({"basic": "X/Z/U*"}, [], "U"),
        ({"basic": "X/Z/U*", "retain_uids": "K"}, ["retain_uids"], "K"),
        ({"basic": "X", "clean_descriptors": "C"}, ["clean_descriptors"], "C"),
        ({"basic": "X", "a": "C", "b": "K"}, ["a", "b"], "K"),
        ({"basic": "Q?"}, [], "X"),
    ],
    ids=["Z/D", "X/Z", "X/Z/U*", "option-K", "option-C", "most-retaining", "unknown-fails-safe"],
)
def test_action_resolution(actions: dict[str, str], columns: list[str], expected: str) -> None:
    assert Rule("00000000", "test", actions).action(columns) == expected


def test_no_phi_survives_anywhere(deid: Deidentifier) -> None:
    # Given a PHI-rich instance, When it is de-identified
    out = deid.deidentify(phi_rich("1.2.3", "1.2.3.1", "1.2.3.1.1"))
    text = all_text(out)
    # Then none of the identifying values is left, at any depth or in private tags
    for value in PHI:
        assert value not in text, value
    assert "OriginalAttributesSequence" not in out
    assert not [e for e in out if e.tag.is_private]
    assert out.PatientIdentityRemoved == "YES"
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"
    assert [c.CodeValue for c in out.DeidentificationMethodCodeSequence] == ["113100", "113107"]
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID


def test_uids_map_consistently_and_references_follow(deid: Deidentifier) -> None:
    # Given two instances of one study, the second referencing the first
    first = phi_rich("1.2.3", "1.2.3.1", "1.2.3.1.1")
    second = phi_rich("1.2.3", "1.2.3.2", "1.2.3.2.1", referenced="1.2.3.1.1")
    # When each is de-identified, even by another Deidentifier with the same key
    a = deid.deidentify(first)
    b = Deidentifier(KEY, Options(dates=Dates.MODIFIED)).deidentify(second)
    # Then the study maps to one new UID, series stay distinct, the reference points at the new UID
    assert a.StudyInstanceUID == b.StudyInstanceUID != "1.2.3"
    assert a.SeriesInstanceUID != b.SeriesInstanceUID
    assert b.ReferencedImageSequence[0].ReferencedSOPInstanceUID == a.SOPInstanceUID
    assert all(is_valid_uid(u) and u.startswith("2.25.") for u in (a.StudyInstanceUID, a.SOPInstanceUID))
    assert a.PatientID == b.PatientID and a.PatientID.startswith("P")


def test_another_key_gives_unrelated_uids() -> None:
    ds = phi_rich("1.2.3", "1.2.3.1", "1.2.3.1.1")
    one = Deidentifier(KEY, Options()).deidentify(ds)
    other = Deidentifier(b"x" * 32, Options()).deidentify(ds)
    assert one.StudyInstanceUID != other.StudyInstanceUID
    assert one.PatientID != other.PatientID


def test_dates_shift_by_one_offset_per_patient_and_keep_intervals(deid: Deidentifier) -> None:
    out = deid.deidentify(phi_rich("1.2.3", "1.2.3.1", "1.2.3.1.1"))

    def day(text: str) -> date:
        return date(int(text[:4]), int(text[4:6]), int(text[6:8]))

    assert out.StudyDate != "20240115"
    assert (day(out.SeriesDate) - day(out.StudyDate)).days == 5
    again = deid.deidentify(phi_rich("9.9", "9.9.1", "9.9.1.1"))
    assert again.StudyDate == out.StudyDate  # same patient, same shift


def test_basic_profile_removes_dates_and_full_dates_keeps_them() -> None:
    ds = phi_rich("1.2.3", "1.2.3.1", "1.2.3.1.1")
    assert not Deidentifier(KEY, Options()).deidentify(ds).get("StudyDate")
    assert Deidentifier(KEY, Options(dates=Dates.FULL)).deidentify(ds).StudyDate == "20240115"


def test_pixel_data_is_unchanged(deid: Deidentifier) -> None:
    ds = phi_rich("1.2.3", "1.2.3.1", "1.2.3.1.1")
    assert deid.deidentify(ds).PixelData == ds.PixelData


def test_the_key_must_be_long_enough() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        Deidentifier(b"short", Options())


@pytest.mark.parametrize("path", part10_files(), ids=lambda p: p.name)
def test_every_test_file_deidentifies_and_serialises(path: Path, deid: Deidentifier) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            read_instance(path.read_bytes(), limits=Limits())
        except InstanceRejected:
            return  # refused at STOW, so never de-identified
        ds = pydicom.dcmread(path)
        out = deid.deidentify(ds)
        patient_name = str(ds.get("PatientName", "") or "")
        text = all_text(out)
    assert out.PatientIdentityRemoved == "YES"
    if len(patient_name) > 3:
        assert patient_name not in text
