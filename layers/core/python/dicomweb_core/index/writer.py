"""Adding instances to the index: each write touches only the items it owns.

A stored instance is two items (docs/index-design.md, Writing an instance):

- the **SOP claim** (:class:`SopItem`), which reserves the SOP Instance UID for one study
  and series. It is put once, conditional on being absent or naming the same place, so a
  UID is never indexed in two places; retries and overwrites go through it unchanged;
- the **instance item**, which names the stored object (key, version, checksum). Its
  conditional PutItem (``attribute_not_exists``) is the commit: the write is stored when,
  and only when, that item exists. A replayed or retried store finds it and writes nothing
  twice; a retry after a lost answer finds its own object there.

Neither is shared with another instance's write, so writers into one study never conflict,
and neither is written in a transaction, which DynamoDB bills twice. Only the first instance
of a series (or study) commits in a transaction: its instance item with the series (and
study) item, conditional on their absence. The study's and series' counts, ModalitiesInStudy
and content versions are recounted off the write path from the table's stream
(:mod:`dicomweb_core.index.aggregates`). A claim left by a write that failed before its
commit names the same place, so the write's retry goes through it; a claim elsewhere with no
instance behind it is taken over once it is :data:`CLAIM_GRACE` old.

Writes race a study DELETE safely (docs/write-safety.md). Before it puts anything in S3, a
write reads how many DELETEs of its study have begun (the tombstone's count; a DELETE under
way refuses it at once). A first store into the study requires, in its transaction, the
tombstone to still hold that count; so does a first store into a series (once per series).
Every other write reads the tombstone again *after* its commit (:meth:`IndexWriter.fence`;
a STOW-RS request reads it once per study after its last commit, before it answers): if a
DELETE began in between, the write takes its items back (while they still name its object
and place) and is refused. A DELETE that begins after that read reads the study's
partition after its own mark, so it sees the instance and deletes it with the study.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any

from pynamodb.attributes import NumberAttribute, UnicodeAttribute
from pynamodb.connection import Connection
from pynamodb.exceptions import DeleteError, PutError, TransactWriteError
from pynamodb.expressions.condition import Condition
from pynamodb.expressions.update import Action
from pynamodb.pagination import PageIterator
from pynamodb.transactions import TransactWrite

from dicomweb_core.dicom.instance import ReceivedInstance
from dicomweb_core.index import keys
from dicomweb_core.index.items import (
    MODALITY_COMBOS,
    PPS_MONTHS,
    STUDY_MONTHS,
    frame_index_json,
    instance_item,
    series_item,
    sop_claim,
    study_item,
)
from dicomweb_core.index.models import (
    DeletedStudyItem,
    IndexItem,
    InstanceItem,
    PostingItem,
    RegistryItem,
    SeriesItem,
    SopItem,
    StudyItem,
)
from dicomweb_core.index.table import IndexTable, on_own_table
from dicomweb_core.index.write_results import (
    AlreadyIndexed,
    AttributesChanged,
    ClaimedElsewhere,
    ConcurrentlyReplaced,
    ExistingInstance,
    IndexContention,
    Prior,
    StoredObject,
    StudyDeleted,
    Unfenced,
    WriteContext,
    WriteRefused,
)

MAX_ATTEMPTS = 8
# A claim with no instance item behind it this long after it was made belongs to a write that
# failed before its commit: longer than any function that writes may run (15 minutes).
CLAIM_GRACE = timedelta(minutes=20)


def _now() -> datetime:
    return datetime.now(UTC)


class IndexWriter:
    """Writes and reads the items one stored instance owns, in one store's index table."""

    def __init__(self, table: IndexTable | None = None) -> None:
        self.table = table or IndexTable()
        self._registered: dict[str, set[str]] = {}

    @cached_property
    def _connection(self) -> Connection:
        return Connection(region=IndexItem.Meta.region)

    @on_own_table
    def find(self, sop_uid: str) -> ExistingInstance | None:
        """The stored instance with this SOP Instance UID, read with strong consistency
        (its claim, then the instance item at the claimed place)."""
        claim = self._claim_of(sop_uid)
        if claim is None:
            return None
        return self._instance_at(claim.study_uid, claim.series_uid, sop_uid)

    @staticmethod
    def _claim_of(sop_uid: str) -> SopItem | None:
        try:
            return SopItem.get(*SopItem.key(sop_uid), consistent_read=True)
        except SopItem.DoesNotExist:
            return None

    @staticmethod
    def _instance_at(study: str, series: str, sop: str) -> ExistingInstance | None:
        try:
            item = InstanceItem.get(
                *InstanceItem.key(study, series, sop), consistent_read=True, attributes_to_get=_EXISTING
            )
        except InstanceItem.DoesNotExist:
            return None
        return _existing(item)

    @on_own_table
    def prior(self, instance: ReceivedInstance) -> Prior:
        """Before a write, in one strongly consistent BatchGetItem: the SOP claim and the
        instance item at this instance's place, the study's DELETE count, and whether the
        study and series exist (the context of the write's first attempt). A claim of
        another place is followed to the instance item there (one more read, rare).

        Raises :class:`StudyDeleted` while a DELETE of the study is under way."""
        return self._prior_from(instance, self._read(_prior_keys(instance)))

    @on_own_table
    def priors(self, instances: Sequence[ReceivedInstance]) -> list[Prior | WriteRefused]:
        """:meth:`prior` of several instances (a request's), from one BatchGetItem of their
        items together (the study's and series' items and tombstone read once); a refusal
        in place of the prior of an instance whose study is being deleted."""
        keys_needed = list(dict.fromkeys(key for i in instances for key in _prior_keys(i)))
        items = self._read(keys_needed)
        found: list[Prior | WriteRefused] = []
        for instance in instances:
            try:
                found.append(self._prior_from(instance, items))
            except WriteRefused as refused:
                found.append(refused)
        return found

    def _prior_from(self, instance: ReceivedInstance, items: dict[tuple[str, str], IndexItem]) -> Prior:
        sop = instance.sop_instance_uid
        claim, here = items.get(SopItem.key(sop)), items.get(_instance_key(instance))
        tombstone = items.get(DeletedStudyItem.key(instance.study_instance_uid))
        if isinstance(tombstone, DeletedStudyItem) and tombstone.deleting is not None:
            raise StudyDeleted()
        deletions = _count(tombstone.deletions) if isinstance(tombstone, DeletedStudyItem) else 0
        claimed = isinstance(claim, SopItem) and _names_place_of(claim, instance)
        existing = _existing(here) if isinstance(here, InstanceItem) else None
        if existing is None and isinstance(claim, SopItem) and not claimed:
            existing = self._instance_at(claim.study_uid, claim.series_uid, sop)
        return Prior(
            existing=existing,
            deletions=deletions,
            context=_context(instance, items, deletions, claimed=claimed),
        )

    @staticmethod
    def _read(item_keys: list[tuple[str, str]]) -> dict[tuple[str, str], IndexItem]:
        return {(i.pk, i.sk): i for i in IndexItem.batch_get(item_keys, consistent_read=True)}

    @on_own_table
    def add(
        self,
        instance: ReceivedInstance,
        stored: StoredObject,
        *,
        deletions: int,
        context: WriteContext | None = None,
    ) -> Unfenced | None:
        """Index a new instance, exactly once: claim its SOP Instance UID, then commit its
        instance item.

        A commit into an existing series is returned: the caller checks it against a DELETE
        of the study with :meth:`fence` (with the other writes of its request: one read
        per study) before it tells anyone the instance is stored. A first store into a
        series returns None: its transaction checked the tombstone.

        ``deletions`` is :meth:`prior`'s count, read before ``stored`` was put in S3, and
        ``context`` its context (read again when not given, and before every retry).
        Returns normally when the index points at ``stored``, also when an earlier attempt
        whose response was lost committed it. Raises :class:`AlreadyIndexed` when the SOP
        Instance UID is indexed with another object, :class:`ClaimedElsewhere` while it is
        being stored in another study or series, :class:`StudyDeleted` when a DELETE of the
        study began since ``deletions`` was read.
        """
        context = context or self._context(instance, deletions)
        if not context.claimed:
            self._claim(instance)
        generation = 0  # one request token per transaction content
        for attempt in range(MAX_ATTEMPTS):
            # Postings and registry entries go first: they only ever widen a search,
            # which then reads the items this write commits (or finds none).
            self._write_search_terms(instance, context)
            try:
                if context.series_exists:
                    self._put_instance(instance, stored, context)
                else:
                    token = _token(stored, generation)
                    self._transact_first_of_series(instance, stored, context, token=token)
            except (PutError, TransactWriteError) as exc:
                if isinstance(exc, TransactWriteError) and not exc.cancellation_reasons:
                    # No answer (timeout, reset, throttling after botocore's retries): the
                    # commit may or may not have happened. The same transaction with the
                    # same token again is idempotent; the instance item's check below tells.
                    _backoff(attempt)
                    continue
                if _instance_condition_failed(exc, context):
                    existing = self._instance_at(
                        instance.study_instance_uid, instance.series_instance_uid, instance.sop_instance_uid
                    )
                    if existing is not None:
                        if existing.stored.key == stored.key:  # our own earlier attempt committed
                            return Unfenced(instance, stored, deletions) if context.series_exists else None
                        raise AlreadyIndexed(existing) from None
                elif isinstance(exc, PutError):
                    raise
                # The study or series appeared, or was being deleted, (or a concurrent
                # transaction touched the same items): read again and retry with backoff.
                _backoff(attempt)
                try:
                    context = self._context(instance, deletions)
                except StudyDeleted:
                    self._release_claim(instance)
                    raise
                generation += 1
                continue
            if not context.series_exists:
                return None  # its transaction checked the tombstone
            return Unfenced(instance, stored, deletions)
        raise IndexContention(
            f"could not index {instance.sop_instance_uid} after {MAX_ATTEMPTS} attempts under contention"
        )

    def _claim(self, instance: ReceivedInstance) -> None:
        """Claim the SOP Instance UID for the instance's study and series: one conditional
        PutItem, which succeeds when no claim exists or the claim names the same place.

        A claim of another place with an instance behind it raises :class:`AlreadyIndexed`;
        without one it is a write in flight there (:class:`ClaimedElsewhere`) until it is
        :data:`CLAIM_GRACE` old, when it is taken over: that write failed before its commit
        (no Lambda runs that long)."""
        claim = sop_claim(instance, _now())
        same_place = (SopItem.study_uid == instance.study_instance_uid) & (
            SopItem.series_uid == instance.series_instance_uid
        )
        condition: Condition = SopItem.pk.does_not_exist() | same_place
        for attempt in range(MAX_ATTEMPTS):
            try:
                claim.save(condition=condition)
                return
            except PutError as exc:
                if not _conditional_check_failed(exc):
                    raise
            current = self._claim_of(instance.sop_instance_uid)
            if current is None:
                condition = SopItem.pk.does_not_exist() | same_place  # released meanwhile
                _backoff(attempt)
                continue
            existing = self._instance_at(current.study_uid, current.series_uid, instance.sop_instance_uid)
            if existing is not None:
                raise AlreadyIndexed(existing)
            if current.updated_at is None or _now() - current.updated_at < CLAIM_GRACE:
                raise ClaimedElsewhere(int(CLAIM_GRACE.total_seconds() // 60))
            condition = _unchanged(current)
        raise IndexContention(f"could not claim {instance.sop_instance_uid} after {MAX_ATTEMPTS} attempts")

    @on_own_table
    def release_unused_claim(self, claim: SopItem) -> bool:
        """Remove ``claim`` if no instance item is at the place it names and it is unchanged
        since it was read (reconciliation, for claims older than :data:`CLAIM_GRACE`)."""
        sop = claim.pk.removeprefix("SOP#")
        if self._instance_at(claim.study_uid, claim.series_uid, sop) is not None:
            return False
        return _delete_unless_changed(SopItem(*SopItem.key(sop)), _unchanged(claim))

    @staticmethod
    def _release_claim(instance: ReceivedInstance) -> None:
        """Remove the claim a refused write made, if it still names the write's place."""
        _delete_unless_changed(
            SopItem(*SopItem.key(instance.sop_instance_uid)),
            (SopItem.study_uid == instance.study_instance_uid)
            & (SopItem.series_uid == instance.series_instance_uid),
        )

    @on_own_table
    def fence(self, commits: Sequence[Unfenced]) -> list[Unfenced]:
        """The DELETE fence of writes committed into existing series: has a DELETE of a
        study begun since a write's ``deletions`` was read? Then that write's items are
        taken back (only while they still name its object and place) and it is returned:
        refused, as :class:`StudyDeleted`. One strongly consistent GetItem of each study's
        tombstone, however many of its writes are checked."""
        refused: list[Unfenced] = []
        by_study: dict[str, list[Unfenced]] = {}
        for commit in commits:
            by_study.setdefault(commit.instance.study_instance_uid, []).append(commit)
        for study, group in by_study.items():
            tombstone = self.tombstone(study)
            for commit in group:
                if tombstone is None and commit.deletions == 0:
                    continue
                if (
                    tombstone is not None
                    and tombstone.deleting is None
                    and _count(tombstone.deletions) == commit.deletions
                ):
                    continue
                # The instance item only while it names this write's object (the DELETE
                # may have taken it already), then the claim.
                _delete_unless_changed(
                    InstanceItem(*_instance_key(commit.instance)), InstanceItem.s3_key == commit.stored.key
                )
                self._release_claim(commit.instance)
                refused.append(commit)
        return refused

    @on_own_table
    def entry_pages(self, after: dict[str, Any] | None, *, page_size: int) -> PageIterator[Any]:
        """The pages of a Scan of every instance item and SOP claim, from ``after`` (a Scan
        key), for reconciliation. The Scan's connection is fixed when it is made, so its
        later pages read this table too."""
        return IndexItem.scan(
            IndexItem.kind.is_in(InstanceItem, SopItem), last_evaluated_key=after, page_size=page_size
        ).page_iter

    @on_own_table
    def tombstone(self, study: str) -> DeletedStudyItem | None:
        """The study's tombstone, read with strong consistency (None: never deleted)."""
        try:
            return DeletedStudyItem.get(*DeletedStudyItem.key(study), consistent_read=True)
        except DeletedStudyItem.DoesNotExist:
            return None

    def _context(self, instance: ReceivedInstance, deletions: int) -> WriteContext:
        """Read again, strongly consistent: do the study and the series exist, how many
        DELETEs of the study have begun (see :func:`_context`). Only ever called once the
        claim is made."""
        return _context(instance, self._read(_context_keys(instance)), deletions, claimed=True)

    def _write_search_terms(self, instance: ReceivedInstance, context: WriteContext) -> None:
        postings: list[keys.Posting] = []
        if not context.study_exists:
            postings += keys.study_postings(instance.study_json, instance.study_instance_uid)
            month = keys.month_of(keys.text_value(instance.study_json, keys.STUDY_DATE))
            self._register(STUDY_MONTHS, month)
        if not context.series_exists:
            postings += keys.series_postings(
                instance.series_json, instance.study_instance_uid, instance.series_instance_uid
            )
            pps_date = keys.text_value(instance.series_json, keys.PPS_START_DATE)
            if pps_date:
                self._register(PPS_MONTHS, keys.month_of(pps_date))
            if instance.modality:  # a new study's ModalitiesInStudy (later ones: index.aggregates)
                self._register(MODALITY_COMBOS, instance.modality)
        if postings:
            with PostingItem.batch_write() as batch:
                for posting in {p.key: p for p in postings}.values():
                    batch.save(
                        PostingItem(*posting.key, study_uid=posting.study_uid, series_uid=posting.series_uid)
                    )

    def _register(self, name: str, value: str) -> None:
        """Add ``value`` to a registry set once per warm container (idempotent ADD)."""
        if value in self._registered.setdefault(name, set()):
            return
        RegistryItem(*RegistryItem.key(name)).update(actions=[RegistryItem.values.add({value})])
        self._registered[name].add(value)

    @on_own_table
    def replace(
        self,
        instance: ReceivedInstance,
        stored: StoredObject,
        existing: ExistingInstance,
        *,
        deletions: int,
    ) -> None:
        """Point an indexed instance at new content (the overwrite duplicate policy).

        Conditional on the instance item still holding ``existing``'s object, so of two
        concurrent replacements exactly one wins (:class:`ConcurrentlyReplaced` for the
        other); on the instance's patient, study and series attributes being unchanged
        (:class:`AttributesChanged`: an overwrite cannot leave the study's search entries
        stale); and on no DELETE of the study under way or begun since ``deletions`` was
        read (:class:`StudyDeleted`). The claim and the aggregates do not change. Like
        :meth:`add`, returns normally when an earlier attempt whose answer was lost
        committed it.
        """
        now = _now()  # one transaction content for every attempt: one request token
        for attempt in range(MAX_ATTEMPTS):
            try:
                self._transact_replace(instance, stored, existing, deletions=deletions, now=now)
                return
            except TransactWriteError as exc:
                if not exc.cancellation_reasons:  # no answer: the same request again
                    _backoff(attempt)
                    continue
                current = self._instance_at(
                    instance.study_instance_uid, instance.series_instance_uid, instance.sop_instance_uid
                )
                if current is not None and current.stored.key == stored.key:
                    return  # our own earlier attempt committed
                if current is None:
                    raise StudyDeleted() from None  # only a DELETE removes an instance item
                # pynamodb's order: the condition checks (series, study), then the update.
                if _condition_failed(exc, index=2):
                    raise ConcurrentlyReplaced() from None
                if any(_condition_failed(exc, index=i) for i in (0, 1)):
                    # The study or series is gone or being deleted, or its attributes differ.
                    if self._study_still_open(instance.study_instance_uid, deletions):
                        raise AttributesChanged() from None
                    raise StudyDeleted() from None
                raise
        raise IndexContention(f"could not replace {instance.sop_instance_uid} after {MAX_ATTEMPTS} attempts")

    def _study_still_open(self, study_uid: str, deletions: int) -> bool:
        """Is the study there, with no DELETE under way or begun since ``deletions`` was read?"""
        try:
            study = StudyItem.get(*StudyItem.key(study_uid), consistent_read=True)
        except StudyItem.DoesNotExist:
            return False
        return study.deleting is None and int(study.deletions or 0) == deletions

    def _transact_replace(
        self,
        instance: ReceivedInstance,
        stored: StoredObject,
        existing: ExistingInstance,
        *,
        deletions: int,
        now: datetime,
    ) -> None:
        study_uid = instance.study_instance_uid
        with TransactWrite(connection=self._connection, client_request_token=_token(stored, 0)) as tx:
            tx.update(
                InstanceItem(*_instance_key(instance)),
                actions=[
                    InstanceItem.s3_key.set(stored.key),
                    _set_or_remove(InstanceItem.s3_version_id, stored.version_id),
                    InstanceItem.sha256.set(stored.sha256),
                    InstanceItem.size.set(stored.size),
                    InstanceItem.sop_class_uid.set(instance.sop_class_uid),
                    InstanceItem.transfer_syntax_uid.set(instance.transfer_syntax_uid),
                    InstanceItem.dicom_json.set(json.dumps(instance.instance_json)),
                    _set_or_remove(InstanceItem.frame_index, frame_index_json(instance)),
                    InstanceItem.updated_at.set(now),
                ],
                condition=InstanceItem.s3_key == existing.stored.key,
            )
            # The series' and study's attributes are their items' (QIDO reads them there): an
            # overwrite must carry the same ones. Its content version moves with the instance
            # item's ``updated_at`` (index.aggregates), so its cached documents are rebuilt.
            # A series item holds its study's attributes before its own (older ones: its own).
            pk, sk = SeriesItem.key(study_uid, instance.series_instance_uid)
            tx.condition_check(
                SeriesItem,
                pk,
                sk,
                condition=SeriesItem.pk.exists()
                & SeriesItem.dicom_json.is_in(
                    json.dumps(instance.study_json | instance.series_json), json.dumps(instance.series_json)
                ),
            )
            study_pk, study_sk = StudyItem.key(study_uid)
            tx.condition_check(
                StudyItem,
                study_pk,
                study_sk,
                condition=StudyItem.pk.exists()
                & _study_open(deletions)
                & (StudyItem.dicom_json == json.dumps(instance.study_json)),
            )

    def _put_instance(self, instance: ReceivedInstance, stored: StoredObject, context: WriteContext) -> None:
        """The commit of a write into an existing series: one conditional PutItem."""
        series_sort = f"{context.study_sort}#{instance.series_instance_uid}"
        instance_item(instance, stored, _now(), series_sort=series_sort).save(
            condition=InstanceItem.pk.does_not_exist()
        )

    @staticmethod
    def _study_json(instance: ReceivedInstance, context: WriteContext) -> str:
        """The study attributes a new series item copies: the study item's; for a new study,
        the instance's, which its study item is made of."""
        if context.study_json is not None:
            return context.study_json
        if context.study_exists:  # an earlier write of the request created it: read it (rare)
            try:
                study = StudyItem.get(
                    *StudyItem.key(instance.study_instance_uid),
                    consistent_read=True,
                    attributes_to_get=["pk", "sk", "kind", "dicom_json"],
                )
                return study.dicom_json
            except StudyItem.DoesNotExist:
                pass  # deleted since: the transaction's tombstone condition refuses the write
        return json.dumps(instance.study_json)

    def _transact_first_of_series(
        self, instance: ReceivedInstance, stored: StoredObject, context: WriteContext, *, token: str
    ) -> None:
        """The commit of a first store into a series: its instance item with the series (and
        study) item, while no DELETE of the study has begun since the read."""
        now = _now()
        series_sort = f"{context.study_sort}#{instance.series_instance_uid}"
        with TransactWrite(connection=self._connection, client_request_token=token) as tx:
            # pynamodb puts condition checks first: the instance item is the first put (see
            # _instance_condition_failed), and its cancellation reason means "duplicate".
            pk, sk = DeletedStudyItem.key(instance.study_instance_uid)
            tx.condition_check(
                DeletedStudyItem, pk, sk, condition=_counted(DeletedStudyItem.deletions, context.deletions)
            )
            tx.save(
                instance_item(instance, stored, now, series_sort=series_sort),
                condition=InstanceItem.pk.does_not_exist(),
            )
            tx.save(
                series_item(
                    instance,
                    now,
                    study_sort=context.study_sort,
                    study_json=self._study_json(instance, context),
                ),
                condition=SeriesItem.pk.does_not_exist(),
            )
            if not context.study_exists:
                tx.save(study_item(instance, context, now), condition=StudyItem.pk.does_not_exist())


def _context_keys(instance: ReceivedInstance) -> list[tuple[str, str]]:
    """The study's and series' items and the study's tombstone."""
    study, series = instance.study_instance_uid, instance.series_instance_uid
    return [StudyItem.key(study), SeriesItem.key(study, series), DeletedStudyItem.key(study)]


def _prior_keys(instance: ReceivedInstance) -> list[tuple[str, str]]:
    """The SOP claim and the instance item at this instance's place, then its context."""
    return [SopItem.key(instance.sop_instance_uid), _instance_key(instance), *_context_keys(instance)]


def _instance_key(instance: ReceivedInstance) -> tuple[str, str]:
    return InstanceItem.key(
        instance.study_instance_uid, instance.series_instance_uid, instance.sop_instance_uid
    )


def _names_place_of(claim: SopItem, instance: ReceivedInstance) -> bool:
    return (claim.study_uid, claim.series_uid) == (instance.study_instance_uid, instance.series_instance_uid)


def _context(
    instance: ReceivedInstance, items: dict[tuple[str, str], IndexItem], deletions: int, *, claimed: bool
) -> WriteContext:
    """What a write's commit depends on, from the items :func:`_context_keys` names.

    Raises :class:`StudyDeleted` when the study is being deleted, or a DELETE of it began
    since ``deletions`` was read."""
    study_key, series_key, tombstone_key = _context_keys(instance)
    study, tombstone = items.get(study_key), items.get(tombstone_key)
    if isinstance(study, StudyItem) and (study.deleting is not None or _count(study.deletions) != deletions):
        raise StudyDeleted()
    if isinstance(tombstone, DeletedStudyItem) and _count(tombstone.deletions) != deletions:
        raise StudyDeleted()
    sort_key = study.sort_key if isinstance(study, StudyItem) else None
    return WriteContext(
        study_exists=study is not None,
        series_exists=series_key in items,
        study_sort=sort_key or keys.study_sort_key(instance.study_json, instance.study_instance_uid),
        deletions=deletions,
        claimed=claimed,
        study_json=study.dicom_json if isinstance(study, StudyItem) else None,
    )


def _instance_condition_failed(exc: PutError | TransactWriteError, context: WriteContext) -> bool:
    """Did the instance item's ``attribute_not_exists`` fail: is it indexed already? In a
    first store's transaction it is the first put, after the tombstone's condition check."""
    if isinstance(exc, PutError):
        return _conditional_check_failed(exc)
    return not context.series_exists and _condition_failed(exc, index=1)


def _conditional_check_failed(exc: PutError | DeleteError) -> bool:
    return getattr(exc, "cause_response_code", "") == "ConditionalCheckFailedException"


def _token(stored: StoredObject, generation: int) -> str:
    """A ClientRequestToken (at most 36 characters) for one transaction content of one write."""
    return hashlib.sha256(f"{stored.key}#{stored.version_id}#{generation}".encode()).hexdigest()[:32]


def _backoff(attempt: int) -> None:
    time.sleep(random.uniform(0, 0.02 * 2**attempt))  # noqa: S311 (jitter, not crypto)


def _study_open(deletions: int) -> Condition:
    """The study is not being deleted, and no DELETE of it began since ``deletions`` was read."""
    condition: Condition = StudyItem.deleting.does_not_exist() & _counted(StudyItem.deletions, deletions)
    return condition


def _counted(attribute: NumberAttribute, count: int) -> Condition:
    """``attribute`` holds ``count`` (absent counts as 0: items written before it existed)."""
    condition: Condition = attribute == count
    if count == 0:
        condition = attribute.does_not_exist() | condition
    return condition


def _count(value: float | None) -> int:
    return int(value or 0)


# What ExistingInstance reads of an instance item (not its metadata or frame index).
_EXISTING = ["pk", "sk", "kind", "study_uid", "series_uid", "sop_class_uid"]
_EXISTING += ["s3_key", "s3_version_id", "sha256", "size"]


def _existing(item: InstanceItem) -> ExistingInstance:
    return ExistingInstance(
        study_uid=item.study_uid,
        series_uid=item.series_uid,
        sop_class_uid=item.sop_class_uid,
        stored=StoredObject(item.s3_key, item.s3_version_id, item.sha256, int(item.size)),
    )


def _delete_unless_changed(item: IndexItem, condition: Condition) -> bool:
    """Delete ``item`` if ``condition`` holds; nothing when it does not (changed or gone).
    Returns whether it was deleted."""
    try:
        item.delete(condition=condition)
    except DeleteError as exc:
        if not _conditional_check_failed(exc):
            raise
        return False
    return True


def _unchanged(claim: SopItem) -> Condition:
    """The claim still names the same place, made at the same moment, as when it was read."""
    condition: Condition = (SopItem.study_uid == claim.study_uid) & (SopItem.series_uid == claim.series_uid)
    condition &= SopItem.updated_at == claim.updated_at
    return condition


def _set_or_remove(attribute: UnicodeAttribute, value: str | None) -> Action:
    return attribute.set(value) if value is not None else attribute.remove()


def _condition_failed(exc: TransactWriteError, *, index: int) -> bool:
    reasons = exc.cancellation_reasons
    reason = reasons[index] if index < len(reasons) else None
    return reason is not None and reason.code == "ConditionalCheckFailed"
