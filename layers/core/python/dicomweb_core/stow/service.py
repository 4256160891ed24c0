"""STOW-RS: store instances (PS3.18 §10.5) and answer with the Store Instances Response.

The write path per instance: validate, S3 first (the bytes with their SHA-256, and the
metadata document, under keys of this write's own), then the index: the SOP Instance UID's
claim and the instance item that commits the write (dicomweb_core.index.writer).
``InstanceStored`` is not published here: the index table's stream announces each committed
write (dicomweb_core.changefeed), so a crash after the commit cannot lose the event, and a
store that commits nothing (an identical duplicate, a refused write) announces nothing.
Whatever refuses or fails the write after S3 removes
the objects it wrote, unless the index points at them (a commit whose response was lost).
A crash between S3 and the index leaves unreferenced objects and no index items; the
client's retry writes new ones and indexes them exactly once. The invariants and how each
failure keeps them are in docs/write-safety.md.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from typing import Any

from pydicom.dataset import Dataset

from dicomweb_core.config import DuplicatePolicy, Settings
from dicomweb_core.dicom.failures import Failure, FailureReason, InstanceRejected, WarningReason
from dicomweb_core.dicom.instance import InflationBudget, ReceivedInstance, read_instance
from dicomweb_core.errors import BadRequest, UnsupportedMediaType
from dicomweb_core.index import keys
from dicomweb_core.index.table import IndexTable
from dicomweb_core.index.write_results import (
    AlreadyIndexed,
    ExistingInstance,
    Prior,
    StoredObject,
    StudyDeleted,
    Unfenced,
    WriteRefused,
)
from dicomweb_core.index.writer import IndexWriter
from dicomweb_core.observability import logger
from dicomweb_core.storage import InstanceStore, S3InstanceStore, instance_key, metadata_key, new_write_id
from dicomweb_core.web.mediatype import parse_media_type
from dicomweb_core.web.multipart import Part, boundary_of, split_parts
from dicomweb_core.web.reply import Reply, dicom_json_reply, warning_value
from dicomweb_core.web.uri import DicomWebURI

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
MULTIPART_RELATED = "multipart/related"
PATIENT_ID = "00100020"
# Put an instance's bytes while the request's thread puts its metadata document.
_OBJECT_WRITERS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="object-put")
# How many instances of one request are written at once (StowService.store_all).
INSTANCE_WRITERS = 4
_INSTANCE_WRITERS = ThreadPoolExecutor(max_workers=INSTANCE_WRITERS, thread_name_prefix="instance-write")


@dataclass(frozen=True, slots=True)
class StoredInstance:
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    modality: str
    stored: StoredObject
    patient_id: str | None = None  # PatientID (0010,0020) as the instance carries it
    warnings: tuple[WarningReason, ...] = ()


@dataclass(slots=True)
class StoreOutcome:
    stored: list[StoredInstance] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    @property
    def status(self) -> HTTPStatus:
        """PS3.18 §10.5.3: 200 all stored, 202 some stored or warned, 409 none stored."""
        if not self.stored:
            return HTTPStatus.CONFLICT
        if self.failures or any(s.warnings for s in self.stored):
            return HTTPStatus.ACCEPTED
        return HTTPStatus.OK


def instance_payloads(content_type: str | None, body: bytes, *, settings: Settings) -> list[memoryview]:
    """Split a STOW-RS request body into one Part 10 payload per instance.

    Accepts ``multipart/related; type="application/dicom"`` (PS3.18 §10.5.1) as real senders
    write it (docs/conformance.md, STOW-RS "Tolerances": the ``type`` quoted, unquoted, in
    single quotes, in any case, with parameters, or absent) and, as many senders use it, a
    single-part ``application/dicom`` body. Parts must be ``application/dicom`` (or carry no
    Content-Type) in binary: anything else is refused with ``415`` before any instance is
    read, and every bound of the multipart parser (part count, header bytes) applies.
    """
    if not content_type:
        raise UnsupportedMediaType(
            'Content-Type is missing; send multipart/related; type="application/dicom".'
        )
    media_type = parse_media_type(content_type)
    if media_type.type == DICOM:
        if not body:
            raise BadRequest("The request body is empty.")
        return [memoryview(body)]
    if media_type.type != MULTIPART_RELATED:
        hint = _FORM_DATA_HINT if media_type.type == "multipart/form-data" else ""
        raise UnsupportedMediaType(
            f'Content-Type {media_type.type} is not supported; send multipart/related; type="{DICOM}" '
            f"or {DICOM}.{hint}"
        )
    _check_part_type(media_type.param("type"))
    parts = split_parts(
        memoryview(body),
        boundary_of(media_type, body=body),
        max_parts=settings.limits.max_parts,
        max_header_bytes=settings.limits.max_part_header_bytes,
    )
    return [_part_payload(number, part) for number, part in enumerate(parts, start=1)]


_FORM_DATA_HINT = (
    " With curl, keep -F but add -H 'Content-Type: multipart/related; type=\"application/dicom\"' "
    "and ;type=application/dicom after each file."
)
# RFC 2045 §6.1: identity encodings; the part's bytes are the instance as they stand.
_IDENTITY_ENCODINGS = frozenset({"binary", "8bit", "7bit"})


def _part_payload(number: int, part: Part) -> memoryview:
    """The Part 10 bytes of one part, or a ``415`` naming the part and what to send instead."""
    try:
        part_type = part.content_type
    except BadRequest as error:
        raise BadRequest(f"Part {number}: {error.message}") from None
    if part_type is not None and part_type.type != DICOM:
        hint = _OCTET_STREAM_HINT if part_type.type == "application/octet-stream" else ""
        raise UnsupportedMediaType(
            f"Part {number} has Content-Type {part_type.type}; every part must be {DICOM}.{hint}"
        )
    encoding = part.headers.get("content-transfer-encoding")
    if encoding is not None and encoding.lower() not in _IDENTITY_ENCODINGS:
        shown = ascii(encoding[:40])[1:-1]
        raise UnsupportedMediaType(
            f"Part {number} has Content-Transfer-Encoding {shown}; send the instance's bytes as they "
            "are (binary), without a transfer encoding."
        )
    return part.body


_OCTET_STREAM_HINT = " With curl -F, add ;type=application/dicom after the file name."


def _check_part_type(type_param: str | None) -> None:
    """Accept a ``type`` parameter naming ``application/dicom`` however a sender writes it.

    Case, surrounding spaces, single quotes (``type='application/dicom'``) and parameters
    inside the value (``type="application/dicom; transfer-syntax=..."``) are tolerated:
    none of them can name another media type. Anything else is ``415`` (PS3.18 §10.5.1).
    """
    if type_param is None:
        return
    named = type_param.strip(" \t")
    if len(named) > 1 and named[0] == named[-1] == "'":
        named = named[1:-1]
    if named.partition(";")[0].strip(" \t").lower() == DICOM:
        return
    raise UnsupportedMediaType(
        f"The multipart/related type parameter is not supported: this server stores Part 10 instances, "
        f'send type="{DICOM}" (PS3.18 §10.5.1).'
    )


class StowService:
    """Stores a request's instances, several at once; a bad instance never affects the others."""

    @classmethod
    def of(cls, settings: Settings) -> StowService:
        """The service wired to the settings' bucket and index: STOW, upload ingest,
        de-identification and inference all store through this one wiring. It publishes
        nothing: ``InstanceStored`` comes from the table's stream (dicomweb_core.changefeed)."""
        return cls(
            settings=settings,
            store=S3InstanceStore(settings.bucket_name),
            index=IndexWriter(IndexTable(settings.table_name)),
        )

    def __init__(self, *, settings: Settings, store: InstanceStore, index: IndexWriter) -> None:
        self.settings = settings
        self.store = store
        self.index = index

    def store_all(self, payloads: Sequence[memoryview], *, study: str | None) -> StoreOutcome:
        """Store a request's instances. What the index holds for them is read once for the
        whole request (one BatchGetItem), and writes into existing series are checked
        against a DELETE of their study together, once the last is committed (one read
        per study, not per instance), and only then counted as stored."""
        outcome = StoreOutcome()
        budget = InflationBudget(self.settings.limits.max_inflated_bytes)  # for the whole request
        received: list[ReceivedInstance] = []
        for payload in payloads:
            try:
                received.append(self._received(payload, study=study, budget=budget))
            except InstanceRejected as rejected:
                outcome.failures.append(rejected.failure)
        priors = self._priors(received)
        unfenced: list[_Unfenced] = []
        written: set[tuple[str, str]] = set()  # (study, series) this request has stored into
        results: list[StoredInstance | Failure | None] = [None] * len(received)

        def store(n: int) -> None:
            instance = received[n]
            try:
                results[n] = self._store_received(
                    instance, unfenced=unfenced, prior=_after(priors[n], written, instance)
                )
            except InstanceRejected as rejected:
                results[n] = rejected.failure
            else:
                written.add((instance.study_instance_uid, instance.series_instance_uid))

        # The first instance of each series new to the index goes alone and first: it creates
        # the series (and study) in a transaction. The others then commit with a PutItem each,
        # several at once: a request of n instances waits for about n / INSTANCE_WRITERS of
        # them, not n, and no two of its writes race to create the same series.
        first, rest = _first_of_new_series(received, priors)
        for n in first:
            store(n)
        if len(rest) > 1:
            list(_INSTANCE_WRITERS.map(store, rest))
        else:
            for n in rest:
                store(n)
        for result in results:
            if isinstance(result, StoredInstance):
                outcome.stored.append(result)
            elif result is not None:
                outcome.failures.append(result)
        if unfenced:
            self._fence(unfenced, outcome)
        return outcome

    def _priors(self, instances: list[ReceivedInstance]) -> list[Prior | WriteRefused | None]:
        """The request's priors from one read; where that read fails, None: each instance
        then reads its own."""
        if len(instances) < 2:
            return [None] * len(instances)
        try:
            return list(self.index.priors(instances))
        except Exception:
            logger.exception("reading a request's index entries together failed; each is read alone")
            return [None] * len(instances)

    def _fence(self, unfenced: list[_Unfenced], outcome: StoreOutcome) -> None:
        """Refuse, and remove the objects of, the writes a DELETE of their study overtook
        (docs/write-safety.md); a fence that cannot be read refuses them all, retryable
        (they stay indexed: a retry is an identical duplicate and succeeds)."""
        try:
            refused = {id(commit) for commit in self.index.fence([u.commit for u in unfenced])}
        except Exception:
            logger.exception("the DELETE fence of a request could not be read")
            refused, failure = {id(u.commit) for u in unfenced}, None
        else:
            failure = StudyDeleted()
        for pending in unfenced:
            if id(pending.commit) not in refused:
                continue
            instance, key = pending.commit.instance, pending.commit.stored.key
            outcome.stored = [s for s in outcome.stored if s.stored.key != key]
            if failure is None:
                outcome.failures.append(_processing_failure(instance).failure)
                continue
            pending.write.discard()
            outcome.failures.append(_rejected(instance, failure).failure)

    def _received(
        self, payload: memoryview, *, study: str | None, budget: InflationBudget | None
    ) -> ReceivedInstance:
        instance = read_instance(payload, limits=self.settings.limits, budget=budget)
        if study is not None and instance.study_instance_uid != study:
            raise InstanceRejected(
                FailureReason.STUDY_UID_MISMATCH,
                "the instance's StudyInstanceUID differs from the study in the request URL.",
                sop_class_uid=instance.sop_class_uid,
                sop_instance_uid=instance.sop_instance_uid,
            )
        return instance

    def _store_received(
        self,
        instance: ReceivedInstance,
        *,
        unfenced: list[_Unfenced],
        prior: Prior | WriteRefused | None,
    ) -> StoredInstance:
        """Write one parsed instance. A write into an existing series is added to
        ``unfenced`` for :meth:`store_all` to fence; ``prior`` is what the index held for
        it, read with its request (None: read it here)."""
        try:
            return self._write(instance, unfenced, prior)
        except InstanceRejected:
            raise
        except Exception:
            logger.exception(
                "storing an instance failed", extra={"sop_instance_uid": instance.sop_instance_uid}
            )
            raise _processing_failure(instance) from None

    def _write(
        self,
        instance: ReceivedInstance,
        unfenced: list[_Unfenced],
        prior: Prior | WriteRefused | None,
    ) -> StoredInstance:
        try:
            if prior is None:
                prior = self.index.prior(instance)
            elif isinstance(prior, WriteRefused):
                raise prior
        except WriteRefused as refused:
            raise _rejected(instance, refused) from None
        if prior.existing is not None:
            return self._store_duplicate(instance, prior.existing, prior)
        with self._written(instance) as written:
            try:
                commit = self.index.add(
                    instance,
                    written.stored,
                    deletions=prior.deletions,
                    context=prior.context,
                )
                if commit is not None:
                    unfenced.append(_Unfenced(commit, written))
                return _stored(instance, written.stored)
            except AlreadyIndexed as race:
                # Another request indexed this SOP Instance UID after our lookup: our
                # objects are referenced by nothing, so they go before deciding.
                written.discard()
                existing = race.existing
        return self._store_duplicate(instance, existing, prior)

    def _store_duplicate(
        self, instance: ReceivedInstance, existing: ExistingInstance, prior: Prior
    ) -> StoredInstance:
        """A SOP Instance UID already stored: identical bytes succeed, others follow the policy."""
        if existing.same_content(instance):
            # Nothing is written, so the stream announces nothing: the first store's
            # InstanceStored stands for this one too (docs/conformance.md, Duplicates).
            return _stored(instance, existing.stored)
        same_place = (existing.study_uid, existing.series_uid) == (
            instance.study_instance_uid,
            instance.series_instance_uid,
        )
        if self.settings.duplicate_policy is DuplicatePolicy.OVERWRITE and same_place:
            with self._written(instance) as written:
                self.index.replace(instance, written.stored, existing, deletions=prior.deletions)
            self._retire(existing.stored)
            return _stored(instance, written.stored)
        reason = "" if same_place else " in another study or series"
        raise InstanceRejected(
            FailureReason.DUPLICATE_SOP_INSTANCE,
            f"an instance with this SOP Instance UID is already stored{reason} with different content; "
            "the stored instance was kept.",
            sop_class_uid=instance.sop_class_uid,
            sop_instance_uid=instance.sop_instance_uid,
        )

    @contextmanager
    def _written(self, instance: ReceivedInstance) -> Iterator[_Write]:
        """This write's objects in S3, removed again if the block fails, unless the index
        points at them after all (a commit whose response was lost).

        A :class:`WriteRefused` becomes the instance's failure, with the index's reason."""
        write = self._put(instance)
        try:
            yield write
        except WriteRefused as refused:
            write.discard()
            raise _rejected(instance, refused) from None
        except BaseException:
            if write.objects and not self._indexed(instance, write.stored):
                write.discard()
            raise

    def _indexed(self, instance: ReceivedInstance, stored: StoredObject) -> bool:
        """Does the index point at ``stored``? When it cannot tell, keep the objects: an
        unreferenced object costs storage, a removed indexed one loses an instance."""
        try:
            existing = self.index.find(instance.sop_instance_uid)
        except Exception:
            logger.exception("could not tell whether a failed write was indexed; its objects are kept")
            return True
        return existing is not None and existing.stored.key == stored.key

    def _retire(self, replaced: StoredObject) -> None:
        """The objects an overwrite replaced become noncurrent: recoverable for the retention
        period, then expired. Best effort: if this fails they stay, unreferenced."""
        for key in (replaced.key, metadata_key(replaced.key)):
            try:
                self.store.hide(key)
            except Exception:
                logger.exception("could not retire a replaced object", extra={"key": key})

    def _put(self, instance: ReceivedInstance) -> _Write:
        """The instance's bytes, then its WADO-RS metadata document, both before the index,
        under keys no other write uses (storage.instance_key)."""
        key = instance_key(
            instance.study_instance_uid,
            instance.series_instance_uid,
            instance.sop_instance_uid,
            new_write_id(),
        )
        document = metadata_key(key)
        body = json.dumps(instance.metadata, separators=(",", ":")).encode()
        write = _Write(self.store, StoredObject(key, None, instance.sha256, instance.size))
        # Each object is recorded before its PUT: if the answer is lost, the PUT may still
        # have taken effect, and discarding by key (a delete marker) covers it. The two PUTs
        # run together: one S3 round trip per instance, not two.
        write.objects += [(key, None), (document, None)]
        bytes_put = _OBJECT_WRITERS.submit(self.store.put, key, instance.data, sha256_hex=instance.sha256)
        try:
            document_version = self.store.put_document(document, body, content_type=DICOM_JSON)
            version_id = bytes_put.result()
        except BaseException:
            wait([bytes_put])  # a PUT still under way would land after the discard
            write.discard()
            raise
        write.objects[:] = [(key, version_id), (document, document_version)]
        write.stored = StoredObject(key, version_id, instance.sha256, instance.size)
        return write


@dataclass(slots=True)
class _Write:
    """The objects one write put in S3: the instance's bytes and its metadata document."""

    store: InstanceStore
    stored: StoredObject
    objects: list[tuple[str, str | None]] = field(default_factory=list)  # (key, version) put

    def discard(self) -> None:
        """Remove what this write put (each key is its alone): its version, or where S3's
        answer was lost, the key (a delete marker: noncurrent, then expired). Best effort:
        what is left is unreferenced and never read."""
        while self.objects:
            key, version = self.objects.pop()
            try:
                self.store.delete_version(key, version)
            except Exception:
                logger.exception("could not remove an unreferenced object", extra={"key": key})


def _first_of_new_series(
    instances: Sequence[ReceivedInstance], priors: Sequence[Prior | WriteRefused | None]
) -> tuple[list[int], list[int]]:
    """The positions of the first instance of each series the index does not hold yet, and
    of all the others, in request order."""
    first: list[int] = []
    seen: set[tuple[str, str]] = set()
    for n, (instance, prior) in enumerate(zip(instances, priors, strict=True)):
        place = (instance.study_instance_uid, instance.series_instance_uid)
        if isinstance(prior, Prior) and not prior.context.series_exists and place not in seen:
            first.append(n)
        seen.add(place)
    chosen = set(first)
    return first, [n for n in range(len(instances)) if n not in chosen]


def _after(
    prior: Prior | WriteRefused | None, written: set[tuple[str, str]], instance: ReceivedInstance
) -> Prior | WriteRefused | None:
    """A prior read with its request, as it stands after the request's earlier writes: the
    study (and series) they stored into exist now. (Anything else they changed, the write's
    conditions find, and it reads again.)"""
    if not isinstance(prior, Prior):
        return prior
    study = instance.study_instance_uid
    if not any(s == study for s, _ in written):
        return prior
    series_exists = prior.context.series_exists or (study, instance.series_instance_uid) in written
    return replace(prior, context=replace(prior.context, study_exists=True, series_exists=series_exists))


@dataclass(frozen=True, slots=True)
class _Unfenced:
    """A request's write committed into an existing series, with its objects, until its
    DELETE fence is read (:meth:`StowService.store_all`)."""

    commit: Unfenced
    write: _Write


def _processing_failure(instance: ReceivedInstance) -> InstanceRejected:
    return InstanceRejected(
        FailureReason.PROCESSING_FAILURE,
        "the instance could not be stored because of a server-side error; nothing was kept, retry.",
        sop_class_uid=instance.sop_class_uid,
        sop_instance_uid=instance.sop_instance_uid,
        retryable=True,
    )


def _rejected(instance: ReceivedInstance, refused: WriteRefused) -> InstanceRejected:
    """The index's refusal as the instance's failure (nothing of the write was kept)."""
    return InstanceRejected(
        refused.failure_reason,
        str(refused),
        sop_class_uid=instance.sop_class_uid,
        sop_instance_uid=instance.sop_instance_uid,
    )


def _stored(instance: ReceivedInstance, stored: StoredObject) -> StoredInstance:
    return StoredInstance(
        sop_class_uid=instance.sop_class_uid,
        sop_instance_uid=instance.sop_instance_uid,
        study_instance_uid=instance.study_instance_uid,
        series_instance_uid=instance.series_instance_uid,
        modality=instance.modality,
        stored=stored,
        patient_id=_patient_id(instance),
    )


def _patient_id(instance: ReceivedInstance) -> str | None:
    value = keys.first_value(instance.study_json, PATIENT_ID)
    return str(value) if value else None


def stow_reply(outcome: StoreOutcome, *, base_url: str, study: str | None) -> Reply:
    """The answer to a STOW-RS request: its status, the Store Instances Response, and a
    ``Warning`` header per failure (the first ten) that says why in words."""
    warnings = [warning_value(f.message) for f in outcome.failures[:10]]
    return dicom_json_reply(
        outcome.status,
        store_response(outcome, base_url=base_url, study=study),
        headers={"Warning": warnings} if warnings else None,
    )


def store_response(outcome: StoreOutcome, *, base_url: str, study: str | None) -> dict[str, Any]:
    """The Store Instances Response Module (PS3.18 §10.5.3, Table 10.5.3-1) as DICOM JSON."""
    response = Dataset()
    studies = {s.study_instance_uid for s in outcome.stored}
    retrieve_study = study or (next(iter(studies)) if len(studies) == 1 else None)
    if retrieve_study is not None:
        response.RetrieveURL = DicomWebURI(base_url, study=retrieve_study).url
    if outcome.stored:
        response.ReferencedSOPSequence = [_referenced_item(s, base_url) for s in outcome.stored]
    with_uids = [f for f in outcome.failures if f.sop_instance_uid]
    without_uids = [f for f in outcome.failures if not f.sop_instance_uid]
    if with_uids:
        response.FailedSOPSequence = [_failed_item(f) for f in with_uids]
    if without_uids:
        response.OtherFailuresSequence = [_failed_item(f) for f in without_uids]
    return response.to_json_dict()


def _referenced_item(stored: StoredInstance, base_url: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = stored.sop_class_uid
    item.ReferencedSOPInstanceUID = stored.sop_instance_uid
    item.RetrieveURL = DicomWebURI(
        base_url,
        study=stored.study_instance_uid,
        series=stored.series_instance_uid,
        instance=stored.sop_instance_uid,
    ).url
    if stored.warnings:
        item.WarningReason = int(stored.warnings[0])
    return item


def _failed_item(failure: Failure) -> Dataset:
    item = Dataset()
    if failure.sop_class_uid:
        item.ReferencedSOPClassUID = failure.sop_class_uid
    if failure.sop_instance_uid:
        item.ReferencedSOPInstanceUID = failure.sop_instance_uid
    item.FailureReason = int(failure.reason)
    # Error Comment (0000,0902) carries the reason in words, as in a DIMSE status.
    item.ErrorComment = failure.message[:64]
    return item
