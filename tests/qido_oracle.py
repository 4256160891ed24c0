"""An independent QIDO-RS oracle: a seeded corpus of awkward studies and plain-Python matching.

Nothing here imports ``dicomweb_core``: the rules are written again from the documented
choices (PS3.4 C.2.2.2 and the matching module's docstring), so the server's answer can be
compared with one computed another way:

- person names (PN) match case- and accent-insensitively; ``^``, spaces, commas and hyphens
  separate words, apostrophes and dots are dropped; only the alphabetic group counts;
- other strings match case-sensitively; IS values compare as integers, a single TM as HHMMSS;
- an absent or empty stored value matches only universal matching (empty key or only ``*``);
- ``*`` and ``?`` are wildcards (not allowed in DA, TM, UI, IS);
- UI and CS keys take comma-separated lists;
- DA and TM take ranges ``a-b``, ``a-`` and ``-b``; a TM bound covers its whole precision
  (``-12`` ends at 12:59:59.999999); StudyDate and StudyTime ranges given together form one
  date-time range (PS3.4 C.2.2.2.5.2);
- ``fuzzymatching=true``: a person name matches when every word of the key is the start of
  some word of the name;
- ModalitiesInStudy is the set of the study's series modalities; a study key in a series or
  instance search matches the series' or instance's study.
"""

from __future__ import annotations

import random
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import (
    BasicTextSRStorage,
    ComprehensiveSRStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    EnhancedSRStorage,
    MRImageStorage,
    PositronEmissionTomographyImageStorage,
    SecondaryCaptureImageStorage,
    UltrasoundImageStorage,
)

from infra.datasets.generate import make_dataset

SEED = 20240229
STUDY, SERIES, INSTANCE = "study", "series", "instance"
CONTROLS = {"limit", "offset", "includefield", "fuzzymatching"}

# (PatientName, PatientID, PatientBirthDate, PatientSex, SpecificCharacterSet); None: absent.
PATIENTS: list[tuple[str | None, str | None, str | None, str | None, str]] = [
    ("Smith^John", "PAT123", "19700101", "M", "ISO_IR 192"),
    ("SMITH^Jane^^^", "123-45", "19800229", "F", "ISO_IR 192"),
    ("Goldsmith^Anna", "X9123", "19651231", "F", "ISO_IR 192"),
    ("Müller^José", "MUL-1", "19900101", "M", "ISO_IR 192"),
    ("MULLER^JOSE", "mul-1", "19900101", "M", "ISO_IR 192"),
    ("O'Brien^Anne-Marie", "OB-77", "19751015", "F", "ISO_IR 192"),
    ("Dupont^Zoë", "ZD1230", "20000131", "F", "ISO_IR 100"),
    ("de la Cruz^María José", "DLC", "19881111", "F", "ISO_IR 192"),
    ("^Madonna", "MAD", None, "F", "ISO_IR 192"),
    ("Nguyen^Van^Minh^Dr^", "NVM-9", "19591201", "M", "ISO_IR 192"),
    ("Smitty^Bob", "P123", "19700101", "M", "ISO_IR 192"),
    ("St. John^Mary", "SJ-01", "", "F", "ISO_IR 192"),
    ("", "ANON-1", "19991231", "O", "ISO_IR 192"),
    (None, "ANON-2", "20010101", None, "ISO_IR 192"),
    ("Anne-Marie^Chevalier", "AMC-5", "19720704", "F", "ISO_IR 192"),
    ("van der Berg^Pieter", None, "19680301", "M", "ISO_IR 192"),
    ("Lee^Ann", "", "19850815", "F", "ISO_IR 192"),
]
DATES = [
    "20231231",
    "20240101",
    "20240131",
    "20240201",
    "20240229",
    "20240301",
    "20241231",
    "20250101",
    "20230101",
    "20221130",
    "20240615",
    None,
    "",
]
TIMES = ["000000", "235959.999999", "101010.5", "1200", "08", "123456.123", "070000", "180000", "235959"]
DESCRIPTIONS = ["CT Chest", "PET-CT Whole Body", "chest x-ray", "MR Brain", "Chest CT follow-up", None, ""]
REFERRING = ["House^Gregory", "Dr^House", "Wilson^James", "", None]
MODALITY_PLANS = [
    ["CT"],
    ["CT", "PT", "SR"],
    ["MR", "MR"],
    ["US"],
    ["CT", "SR"],
    ["DX"],
    ["PT", "CT"],
    ["MR"],
    ["CT", "CT", "CT", "SR"],
]
SOP_CLASSES = {
    "CT": [CTImageStorage, CTImageStorage, SecondaryCaptureImageStorage],
    "PT": [PositronEmissionTomographyImageStorage],
    "MR": [MRImageStorage],
    "SR": [BasicTextSRStorage, EnhancedSRStorage, ComprehensiveSRStorage],
    "US": [UltrasoundImageStorage],
    "DX": [DigitalXRayImageStorageForPresentation],
}
SERIES_DESCRIPTIONS = ["Axial 5mm", "axial", "Scout", "Report", "", None]


@dataclass
class Corpus:
    """Every generated instance, and UIDs of a few studies the queries name."""

    datasets: list[Dataset]
    names: dict[str, str] = field(default_factory=dict)


def _uid(rng: random.Random) -> str:
    return f"2.25.{rng.getrandbits(96) + 1}"


def _apply(ds: Dataset, attributes: dict[str, Any]) -> None:
    for keyword, value in attributes.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)


def build_corpus(seed: int = SEED) -> Corpus:
    """~40 studies of 17 patients, 1-4 series each, 1-3 instances per series."""
    rng = random.Random(seed)
    datasets: list[Dataset] = []
    names: dict[str, str] = {}
    number = 0
    for p, (name, pid, birth, sex, charset) in enumerate(PATIENTS):
        for s in range(2 + (p % 2 if p != 0 else 1)):
            number += 1
            study_uid = _uid(rng)
            if p == 0 and s == 0:
                plan, names["MULTI"] = ["CT", "PT", "SR", "CT"], study_uid
            elif p == 1 and s == 0:
                plan, names["DUPSERIES"] = ["MR", "MR", "MR"], study_uid
            else:
                plan = rng.choice(MODALITY_PLANS)
            study = {
                "SpecificCharacterSet": charset,
                "PatientName": name,
                "PatientID": pid,
                "PatientBirthDate": birth,
                "PatientSex": sex,
                "StudyDate": rng.choice(DATES),
                "StudyTime": rng.choice(TIMES),
                "AccessionNumber": rng.choice(
                    [f"ACC{number:04d}", f"ACC{number:04d}", "acc-77", "ACC-77", "", None]
                ),
                "StudyID": f"S{number % 7}",
                "StudyDescription": rng.choice(DESCRIPTIONS),
                "ReferringPhysicianName": rng.choice(REFERRING),
            }
            if study["StudyDate"] is None and number % 2:
                study["StudyTime"] = None
            for index, modality in enumerate(plan):
                series_uid = _uid(rng)
                requests = [Dataset() for _ in range(rng.choice([0, 1, 2] if p != 0 or s != 0 else [2]))]
                for k, item in enumerate(requests):
                    item.ScheduledProcedureStepID = f"SPS-{number}{k}"
                    if k == 0 or rng.random() < 0.5:
                        item.RequestedProcedureID = f"RP{number % 5}"
                series = {
                    "Modality": modality,
                    "SeriesNumber": 1
                    if names.get("DUPSERIES") == study_uid
                    else rng.choice([1, 1, 2, 3, 100]),
                    "SeriesDescription": rng.choice(SERIES_DESCRIPTIONS),
                    "RequestAttributesSequence": requests or None,
                    "PerformedProcedureStepStartDate": rng.choice([None, None, "20240105", "20240630"]),
                }
                if index == 0 and names.get("MULTI") == study_uid:
                    names["MULTI_SERIES"] = series_uid
                sop_class = rng.choice(SOP_CLASSES[modality])
                for _ in range(rng.randint(1, 3)):
                    ds = make_dataset(study=study_uid, series=series_uid, sop=_uid(rng), modality=modality)
                    _apply(ds, study)
                    _apply(ds, series)
                    _apply(ds, {"SOPClassUID": sop_class, "InstanceNumber": rng.choice([1, 1, 2, 3, None])})
                    ds.file_meta.MediaStorageSOPClassUID = sop_class
                    if series_uid == names.get("MULTI_SERIES"):
                        names.setdefault("MULTI_SOP", ds.SOPInstanceUID)
                    datasets.append(ds)
    rng.shuffle(datasets)
    return Corpus(datasets, names)


# ------------------------------------------------------------------ value access
def _keyword_vr(keyword: str) -> str:
    if keyword == "ModalitiesInStudy":
        return "CS"
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return str(dictionary_VR(tag))


def _as_texts(value: Any) -> list[str]:
    items = list(value) if isinstance(value, MultiValue | list) else [value]
    return [str(v) for v in items if v is not None and str(v) != ""]


def stored_values(ds: Dataset, path: Sequence[str]) -> list[str]:
    """Every non-empty value at a keyword path (sequence items searched)."""
    if path[0] not in ds:
        return []
    value = ds.data_element(path[0]).value  # type: ignore[union-attr]
    if len(path) > 1:
        return [v for item in value or [] for v in stored_values(item, path[1:])]
    return _as_texts(value)


# ------------------------------------------------------------------ matching rules
def fold_name(text: str) -> str:
    alphabetic = text.split("=", maxsplit=1)[0]
    decomposed = unicodedata.normalize("NFKD", alphabetic)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
    plain = re.sub(r"['\u2019.]", "", plain)
    return " ".join(w for w in re.split(r"[\^\s,\-]+", plain) if w)


def _wildcard(pattern: str, text: str) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, text, re.DOTALL) is not None


def _time(value: str, *, upper: bool = False) -> int:
    """A TM value in microseconds; ``upper``: the last instant its precision covers."""
    digits, _, fraction = value.replace(":", "").partition(".")
    hh = int(digits[0:2])
    mm = int(digits[2:4]) if len(digits) >= 4 else (59 if upper else 0)
    ss = int(digits[4:6]) if len(digits) >= 6 else (59 if upper else 0)
    micro = int((fraction + ("9" if upper else "0") * 6)[:6])
    if upper and len(digits) < 6:
        micro = 999_999
    return ((hh * 60 + mm) * 60 + ss) * 1_000_000 + micro


@dataclass(frozen=True)
class Key:
    keyword: str
    path: tuple[str, ...]
    vr: str
    value: str

    @property
    def universal(self) -> bool:
        return self.value.strip("*") == ""

    @property
    def is_range(self) -> bool:
        return self.vr in {"DA", "TM"} and "-" in self.value

    def bounds(self) -> tuple[str, str]:
        low, _, high = self.value.partition("-")
        return low, high

    def matches(self, values: Iterable[str], *, fuzzy: bool) -> bool:
        if self.universal:
            return True
        return any(self._one(v, fuzzy=fuzzy) for v in values if v != "")

    def _one(self, stored: str, *, fuzzy: bool) -> bool:
        key, vr = self.value, self.vr
        wild = "*" in key or "?" in key
        if vr == "PN":
            name = fold_name(stored)
            if wild:
                return _wildcard(fold_name(key), name)
            if fuzzy:
                name_words = name.split()
                return all(any(w.startswith(k) for w in name_words) for k in fold_name(key).split())
            return name == fold_name(key)
        if wild:
            return _wildcard(key, stored)
        if self.is_range:
            low, high = self.bounds()
            if vr == "TM":
                t = _time(stored)
                return (not low or t >= _time(low)) and (not high or t <= _time(high, upper=True))
            return (not low or stored >= low) and (not high or stored <= high)
        if vr in {"UI", "CS"}:
            return stored in [v for v in key.split(",") if v]
        if vr == "IS":
            return int(stored) == int(key)
        if vr == "TM":  # a single time compares as HHMMSS (docs/conformance.md)
            return _time(stored) // 1_000_000 == _time(key) // 1_000_000
        return stored == key


@dataclass(frozen=True)
class Entity:
    """One result the oracle can return: its UID, level and parents."""

    uid: str
    level: str
    study_uid: str
    series_uid: str | None
    dataset: Dataset  # an instance of it: carries the study and series attributes too


class Oracle:
    def __init__(self, datasets: Sequence[Dataset]) -> None:
        self.instances = [
            Entity(d.SOPInstanceUID, INSTANCE, d.StudyInstanceUID, d.SeriesInstanceUID, d) for d in datasets
        ]
        self.series: dict[str, Entity] = {}
        self.studies: dict[str, Entity] = {}
        self.modalities: dict[str, set[str]] = {}
        self.series_instances: dict[str, int] = {}
        self.study_instances: dict[str, int] = {}
        self.study_series: dict[str, set[str]] = {}
        for d in datasets:
            study, series = d.StudyInstanceUID, d.SeriesInstanceUID
            self.series.setdefault(series, Entity(series, SERIES, study, series, d))
            self.studies.setdefault(study, Entity(study, STUDY, study, None, d))
            if d.get("Modality"):
                self.modalities.setdefault(study, set()).add(d.Modality)
            self.series_instances[series] = self.series_instances.get(series, 0) + 1
            self.study_instances[study] = self.study_instances.get(study, 0) + 1
            self.study_series.setdefault(study, set()).add(series)

    def values(self, entity: Entity, key: Key) -> list[str]:
        if key.keyword == "ModalitiesInStudy":
            return sorted(self.modalities.get(entity.study_uid, set()))
        return stored_values(entity.dataset, key.path)

    def search(
        self, level: str, raw_query: str, *, study: str | None = None, series: str | None = None
    ) -> set[str]:
        pairs = parse_qsl(raw_query, keep_blank_values=True)
        fuzzy = dict(pairs).get("fuzzymatching", "false") == "true"
        keys_ = [_key(name, value) for name, value in pairs if name not in CONTROLS]
        date = next((k for k in keys_ if k.keyword == "StudyDate" and k.is_range), None)
        time = next((k for k in keys_ if k.keyword == "StudyTime" and k.is_range), None)
        combined = date is not None and time is not None
        pool = {STUDY: self.studies.values(), SERIES: self.series.values(), INSTANCE: self.instances}[level]
        found = set()
        for entity in pool:
            if study is not None and entity.study_uid != study:
                continue
            if series is not None and entity.series_uid != series:
                continue
            separate = [k for k in keys_ if not (combined and k in (date, time))]
            if not all(k.matches(self.values(entity, k), fuzzy=fuzzy) for k in separate):
                continue
            if combined and not self._date_time(entity, date, time):  # type: ignore[arg-type]
                continue
            found.add(entity.uid)
        return found

    def _date_time(self, entity: Entity, date: Key, time: Key) -> bool:
        dates = stored_values(entity.dataset, ("StudyDate",))
        if not dates:
            return False
        times = stored_values(entity.dataset, ("StudyTime",))
        stamp = (dates[0], _time(times[0]) if times else 0)
        (date_low, date_high), (time_low, time_high) = date.bounds(), time.bounds()
        low = (date_low, _time(time_low) if time_low else 0) if date_low else None
        high = (date_high, _time(time_high, upper=True) if time_high else _time("23", upper=True))
        return (low is None or stamp >= low) and (not date_high or stamp <= high)


def _key(name: str, value: str) -> Key:
    if re.fullmatch(r"[0-9A-Fa-f]{8}", name):
        from pydicom.datadict import keyword_for_tag

        name = keyword_for_tag(int(name, 16))
    path = tuple(name.split("."))
    return Key(name, path, _keyword_vr(path[-1]), value)
