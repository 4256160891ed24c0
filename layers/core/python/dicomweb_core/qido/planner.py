"""The QIDO-RS query planner: one *driving* key per search, the most selective one the index
can serve, streamed in a deterministic order (docs/index-design.md).

Orders: studies newest first (StudyDate, StudyTime, UID descending) when driven by date,
patient, accession or study ID, modality; by folded name when driven by a name; series by
SeriesNumber and instances by InstanceNumber within their parent.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from dicomweb_core.errors import PayloadTooLarge
from dicomweb_core.index import keys
from dicomweb_core.index.access import instance_order, series_order
from dicomweb_core.index.items import MODALITY_COMBOS, PPS_MONTHS, STUDY_MONTHS
from dicomweb_core.index.models import InstanceItem, SeriesItem, StudyItem
from dicomweb_core.index.normalize import person_name, words
from dicomweb_core.index.search_reads import IndexReads
from dicomweb_core.qido.attributes import Level
from dicomweb_core.qido.query import MatchKind, QidoQuery
from dicomweb_core.qido.view import MODALITIES_IN_STUDY, Entity, Parents, view

_ID_KEYS = {"PatientID": (3, "PID"), "AccessionNumber": (4, "ACC"), "StudyID": (5, "SID")}
_NAME_KEYS = {"PatientName": (6, "PN"), "ReferringPhysicianName": (7, "RPN")}


class Planner:
    """Picks the driving key of a search and streams its candidates, in result order."""

    def __init__(self, query: QidoQuery, reads: IndexReads) -> None:
        self.query = query
        self.reads = reads
        self.parents = Parents(reads)

    def matchable(self, item: Entity) -> dict[str, Any]:
        """The view a candidate is matched on. A series or instance has no ModalitiesInStudy
        of its own: when a key asks for it, the study's is added (read once per study)."""
        merged = view(item, self.parents)
        term = self.query.term("ModalitiesInStudy")
        if isinstance(item, StudyItem) or term is None or term.kind is MatchKind.UNIVERSAL:
            return merged
        study = self.parents.study(item.study_uid)
        modalities = sorted(study.modalities or ()) if study is not None else []
        if modalities:
            merged[MODALITIES_IN_STUDY] = {"vr": "CS", "Value": modalities}
        return merged

    def candidates(self) -> Iterator[Entity]:
        q = self.query
        if q.level is Level.STUDY:
            return self.studies()
        if q.level is Level.SERIES:
            return self.series()
        return self.instances()

    # -------------------------------------------------------------- studies
    def studies(self) -> Iterator[StudyItem]:
        source = self._selective_studies() or self._broad_studies()
        return source if source is not None else self._all_studies()

    def _selective_studies(self) -> Iterator[StudyItem] | None:
        """Studies from a key that identifies few of them, or None."""
        q = self.query
        uid = q.term("StudyInstanceUID")
        if uid is not None and uid.kind in (MatchKind.SINGLE, MatchKind.LIST):
            return self._get_studies(uid.values)
        for keyword, (number, prefix) in _ID_KEYS.items():
            term = q.term(keyword)
            if term is not None and term.kind is MatchKind.SINGLE:
                return self.reads.gsi(number, keys.exact_pk(prefix, term.value), descending=True)
        for keyword, (number, prefix) in _NAME_KEYS.items():
            term = q.term(keyword)
            if term is not None and term.kind in (MatchKind.SINGLE, MatchKind.WILDCARD) and not q.fuzzy:
                literal = (
                    _literal_prefix(person_name(term.value)) if term.kind is MatchKind.WILDCARD else None
                )
                if term.kind is MatchKind.SINGLE:
                    name = person_name(term.value)
                    return self.reads.gsi(number, keys.name_pk(prefix, name), begins_with=f"{name}#")
                if literal:
                    return self.reads.gsi(number, keys.name_pk(prefix, literal), begins_with=literal)
        for keyword, (_, prefix) in _ID_KEYS.items():
            term = q.term(keyword)
            if term is not None and term.kind is MatchKind.WILDCARD:
                return self._wildcard_postings(prefix, term.value, folded=False)
        for keyword, (_, prefix) in _NAME_KEYS.items():
            term = q.term(keyword)
            if term is None or term.kind not in (MatchKind.SINGLE, MatchKind.WILDCARD):
                continue
            name = person_name(term.value)
            if q.fuzzy and term.kind is MatchKind.SINGLE:
                longest = max(words(name), key=len, default="")
                if longest:
                    return self.reads.postings_studies(f"{prefix}W", longest)
            return self._wildcard_postings(prefix, name, folded=True)
        return None

    def _broad_studies(self) -> Iterator[StudyItem] | None:
        """Studies by date range or modality: many, but never all."""
        q = self.query
        date = q.term("StudyDate")
        if date is not None and date.kind in (MatchKind.SINGLE, MatchKind.RANGE):
            low, high = (date.value, date.value) if date.kind is MatchKind.SINGLE else (date.low, date.high)
            return self._studies_by_date(low, high)
        modalities = q.term("ModalitiesInStudy")
        if modalities is not None and modalities.kind in (MatchKind.SINGLE, MatchKind.LIST):
            return self._studies_by_modalities(set(modalities.values))
        return None

    def _all_studies(self) -> Iterator[StudyItem]:
        return self._studies_by_date(None, None)

    def _get_studies(self, uids: Sequence[str]) -> Iterator[StudyItem]:
        items = self.reads.batch_get([StudyItem.key(uid) for uid in uids])
        return iter(
            sorted((i for i in items if isinstance(i, StudyItem)), key=lambda i: i.sort_key, reverse=True)
        )

    def _studies_by_date(self, low: str | None, high: str | None) -> Iterator[StudyItem]:
        """Newest first: month by month (descending), each month's shards merged."""
        bounds = (f"{low}000000" if low else None, f"{high}235959~" if high else None)
        months = _months_between(low, high) if low and high else None
        if months is None or len(months) > MAX_ENUMERATED_MONTHS:
            registered = self.reads.registry(STUDY_MONTHS)
            months = sorted(
                (
                    m
                    for m in registered
                    if m != "none" and (not low or m >= low[:6]) and (not high or m <= high[:6])
                ),
                reverse=True,
            )
            if low is None and high is None and "none" in registered:
                months.append("none")
        return _chain(
            self.reads.merged_shards(1, [keys.date_pk(m, s) for s in range(keys.SHARDS)], bounds)
            for m in months
        )

    def _studies_by_modalities(self, wanted: set[str]) -> Iterator[StudyItem]:
        combos = [c for c in self.reads.registry(MODALITY_COMBOS) if wanted & set(c.split("\\"))]
        pks = [keys.sharded_pk("MODS", c, s) for c in sorted(combos) for s in range(keys.SHARDS)]
        return self.reads.merged_shards(8, pks)

    def _wildcard_postings(self, family: str, pattern: str, *, folded: bool) -> Iterator[StudyItem] | None:
        """A wildcard on an ID or name: the literal run of the pattern via postings."""
        literal = _literal_prefix(pattern)
        if literal:
            whole = f"{family}P" if not folded else None
            if whole is not None:
                return self.reads.postings_studies(whole, literal)
            return self.reads.gsi(
                _NAME_KEYS_BY_PREFIX[family], keys.name_pk(family, literal), begins_with=literal
            )
        run = _longest_literal(pattern)
        if not run:
            return None
        families = [f"{family}S"] if folded else [f"{family}P", f"{family}S"]
        return _chain(self.reads.postings_studies(f, run) for f in families)

    # -------------------------------------------------------------- series
    def series(self) -> Iterator[SeriesItem]:
        q = self.query
        if q.study is not None:
            return self._series_in_studies(iter([q.study]))
        uid = q.term("SeriesInstanceUID")
        if uid is not None and uid.kind in (MatchKind.SINGLE, MatchKind.LIST):
            return _chain(self.reads.gsi(2, keys.exact_pk("SE", v)) for v in uid.values)
        selective = self._selective_studies()
        if selective is not None:
            return self._series_in_studies(s.study_uid for s in selective)
        series_source = self._series_by_series_keys()
        if series_source is not None:
            return series_source
        broad = self._broad_studies()
        if broad is not None:
            return self._series_in_studies(s.study_uid for s in broad)
        raise PayloadTooLarge(
            "Searching all series needs a key: add a study-level key (PatientID, StudyDate, ...) or "
            "a series key (SeriesInstanceUID, Modality, ...), or search within a study."
        )

    def _series_by_series_keys(self) -> Iterator[SeriesItem] | None:
        q = self.query
        for keyword, (number, prefix) in {"Modality": (3, "MOD"), "SeriesNumber": (4, "SNUM")}.items():
            term = q.term(keyword)
            if term is not None and term.kind in (MatchKind.SINGLE, MatchKind.LIST):
                values = [str(int(v)) if keyword == "SeriesNumber" else v for v in term.values]
                pks = [keys.sharded_pk(prefix, v, s) for v in values for s in range(keys.SHARDS)]
                return self.reads.merged_shards(number, pks)
        pps = q.term("PerformedProcedureStepStartDate")
        if pps is not None and pps.kind in (MatchKind.SINGLE, MatchKind.RANGE):
            low, high = (pps.value, pps.value) if pps.kind is MatchKind.SINGLE else (pps.low, pps.high)
            months = sorted(
                (
                    m
                    for m in self.reads.registry(PPS_MONTHS)
                    if (low is None or m >= low[:6]) and (high is None or m <= high[:6])
                ),
                reverse=True,
            )
            bounds = (f"{low}" if low else None, f"{high}~" if high else None)
            return _chain(
                self.reads.merged_shards(5, [keys.date_pk(m, s) for s in range(keys.SHARDS)], bounds)
                for m in months
            )
        for keyword, family in (
            ("RequestAttributesSequence.ScheduledProcedureStepID", "SPS"),
            ("RequestAttributesSequence.RequestedProcedureID", "RP"),
        ):
            term = q.term(keyword)
            if term is not None and term.kind is MatchKind.SINGLE:
                return self.reads.postings_series(family, term.value)
        return None

    def _series_in_studies(self, studies: Iterable[str]) -> Iterator[SeriesItem]:
        for study in studies:
            items = self.reads.partition(study, "SERIES#")
            yield from sorted((i for i in items if isinstance(i, SeriesItem)), key=series_order)

    # -------------------------------------------------------------- instances
    def instances(self) -> Iterator[InstanceItem]:
        q = self.query
        if q.study is not None and q.series is not None:
            return self._instances_in(q.study, q.series)
        if q.study is not None:
            return self._instances_in_study(q.study)
        uid = q.term("SOPInstanceUID")
        if uid is not None and uid.kind in (MatchKind.SINGLE, MatchKind.LIST):
            return _chain(self.reads.gsi(2, keys.exact_pk("I", v)) for v in uid.values)
        series_uid = q.term("SeriesInstanceUID")
        if series_uid is not None and series_uid.kind in (MatchKind.SINGLE, MatchKind.LIST):
            series = _chain(self.reads.gsi(2, keys.exact_pk("SE", v)) for v in series_uid.values)
            return _chain(self._instances_in(s.study_uid, s.series_uid) for s in series)
        selective = self._selective_studies()
        if selective is not None:
            return _chain(self._instances_in_study(s.study_uid) for s in selective)
        for keyword, (number, prefix) in {"SOPClassUID": (3, "CLS"), "InstanceNumber": (4, "INUM")}.items():
            term = q.term(keyword)
            if term is not None and term.kind in (MatchKind.SINGLE, MatchKind.LIST):
                values = [str(int(v)) if keyword == "InstanceNumber" else v for v in term.values]
                pks = [keys.sharded_pk(prefix, v, s) for v in values for s in range(keys.SHARDS)]
                return self.reads.merged_shards(number, pks)
        series_source = self._series_by_series_keys()
        if series_source is not None:
            return _chain(self._instances_in(s.study_uid, s.series_uid) for s in series_source)
        broad = self._broad_studies()
        if broad is not None:
            return _chain(self._instances_in_study(s.study_uid) for s in broad)
        raise PayloadTooLarge(
            "Searching all instances needs a key: add a study, series or instance key "
            "(StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID, PatientID, ...), or search within a study."
        )

    def _instances_in(self, study: str, series: str) -> Iterator[InstanceItem]:
        items = self.reads.partition(study, f"INSTANCE#{series}#")
        return iter(sorted((i for i in items if isinstance(i, InstanceItem)), key=instance_order))

    def _instances_in_study(self, study: str) -> Iterator[InstanceItem]:
        series_order = {s.series_uid: n for n, s in enumerate(self._series_in_studies([study]))}
        items = [i for i in self.reads.partition(study, "INSTANCE#") if isinstance(i, InstanceItem)]
        return iter(sorted(items, key=lambda i: (series_order.get(i.series_uid, 0), *instance_order(i))))


_NAME_KEYS_BY_PREFIX = {prefix: number for number, prefix in _NAME_KEYS.values()}
MAX_ENUMERATED_MONTHS = 36  # a closed date range up to three years is queried month by month


def _months_between(low: str, high: str) -> list[str]:
    """YYYYMM values from ``high`` down to ``low`` (both YYYYMMDD)."""
    year, month = int(high[:4]), int(high[4:6])
    first = (int(low[:4]), int(low[4:6]))
    months: list[str] = []
    while (year, month) >= first and len(months) <= MAX_ENUMERATED_MONTHS:
        months.append(f"{year:04d}{month:02d}")
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    return months


def _literal_prefix(pattern: str) -> str:
    """The literal characters before the first wildcard ('' if it starts with one)."""
    for position, ch in enumerate(pattern):
        if ch in "*?":
            return pattern[:position]
    return pattern


def _longest_literal(pattern: str) -> str:
    runs = [run for run in pattern.replace("?", "*").split("*") if run]
    return max(runs, key=len, default="")


def _chain(iterables: Iterable[Iterable[Any]]) -> Iterator[Any]:
    for iterable in iterables:
        yield from iterable
