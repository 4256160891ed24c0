"""Adding instances to the index: each write touches only the items it owns.

A stored instance is one DynamoDB transaction of two items, the SOP item and the instance
item, both ``attribute_not_exists``: no item that another instance's write also touches, so
writers into one study never conflict. Only the first instance of a series (or study) puts
the series (and study) item in the same transaction, conditional on its absence: a
concurrent first store of the same series loses that condition, reads again and retries.
The study's and series' counts, ModalitiesInStudy and content versions are recounted off the
write path from the table's stream (:mod:`dicomweb_core.index.aggregates`). A SOP item that
already exists cancels the transaction, so a replayed or retried store never writes twice.

Each transaction carries a client request token, so botocore's retries of one call (after
a timeout or a reset, when the commit may have happened) are idempotent; a retry that finds
the SOP item pointing at the caller's own object knows its earlier attempt committed.

Writes race a study DELETE safely (docs/write-safety.md). Before it puts anything in S3, a
write reads how many DELETEs of its study have begun (the tombstone's count; a DELETE under
way refuses it at once). A first store into the study requires, in its transaction, the
tombstone to still hold that count; so does a first store into a series (once per series).
Every other write reads the tombstone again *after* its commit: if a DELETE began in
between, the write takes its own two items back (while they still name its object) and is
refused. A DELETE that begins after that read reads the study's partition after its own
mark, so it sees the instance and deletes it with the study.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from datetime import UTC, datetime
from functools import cached_property

from pynamodb.attributes import NumberAttribute, UnicodeAttribute
from pynamodb.connection import Connection
from pynamodb.exceptions import DeleteError, TransactWriteError
from pynamodb.expressions.condition import Condition
from pynamodb.expressions.update import Action
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
    sop_item,
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
from dicomweb_core.index.write_results import (
    AlreadyIndexed,
    AttributesChanged,
    ConcurrentlyReplaced,
    ExistingInstance,
    IndexContention,
    Prior,
    StoredObject,
    StudyDeleted,
    WriteContext,
)

MAX_ATTEMPTS = 8


def _now() -> datetime:
    return datetime.now(UTC)


class IndexWriter:
    """Writes and reads the items one stored instance owns."""

    def __init__(self) -> None:
        self._registered: dict[str, set[str]] = {}

    @cached_property
    def _connection(self) -> Connection:
        return Connection(region=IndexItem.Meta.region)

    def find(self, sop_uid: str) -> ExistingInstance | None:
        """The stored instance with this SOP Instance UID, read with strong consistency."""
        try:
            return _existing(SopItem.get(*SopItem.key(sop_uid), consistent_read=True))
        except SopItem.DoesNotExist:
            return None

    def prior(self, instance: ReceivedInstance) -> Prior:
        """Before a write, in one strongly consistent BatchGetItem: the stored instance with
        this SOP Instance UID, the study's DELETE count, and whether the study and series
        exist (the context of the write's first attempt).

        Raises :class:`StudyDeleted` while a DELETE of the study is under way."""
        sop_key = SopItem.key(instance.sop_instance_uid)
        items = self._read([sop_key, *_context_keys(instance)])
        sop, tombstone = items.get(sop_key), items.get(DeletedStudyItem.key(instance.study_instance_uid))
        if isinstance(tombstone, DeletedStudyItem) and tombstone.deleting is not None:
            raise StudyDeleted()
        deletions = _count(tombstone.deletions) if isinstance(tombstone, DeletedStudyItem) else 0
        return Prior(
            existing=_existing(sop) if isinstance(sop, SopItem) else None,
            deletions=deletions,
            context=_context(instance, items, deletions),
        )

    @staticmethod
    def _read(item_keys: list[tuple[str, str]]) -> dict[tuple[str, str], IndexItem]:
        return {(i.pk, i.sk): i for i in IndexItem.batch_get(item_keys, consistent_read=True)}

    def add(
        self,
        instance: ReceivedInstance,
        stored: StoredObject,
        *,
        deletions: int,
        context: WriteContext | None = None,
    ) -> None:
        """Index a new instance and move the aggregates, exactly once.

        ``deletions`` is :meth:`prior`'s count, read before ``stored`` was put in S3, and
        ``context`` its context (read again when not given, and before every retry).
        Returns normally when the index points at ``stored``, also when an earlier attempt
        whose response was lost committed it. Raises :class:`AlreadyIndexed` when the SOP
        Instance UID is indexed with another object, :class:`StudyDeleted` when a DELETE of
        the study began since ``deletions`` was read.
        """
        context = context or self._context(instance, deletions)
        generation = 0  # one request token per transaction content
        for attempt in range(MAX_ATTEMPTS):
            # Postings and registry entries go first: they only ever widen a search,
            # which then reads the items this transaction commits (or finds none).
            self._write_search_terms(instance, context)
            try:
                self._transact_add(instance, stored, context, token=_token(stored, generation))
            except TransactWriteError as exc:
                if not exc.cancellation_reasons:
                    # No answer (timeout, reset, throttling after botocore's retries): the
                    # commit may or may not have happened. The same transaction with the
                    # same token again is idempotent; the SOP item's check below tells.
                    _backoff(attempt)
                    continue
                if _condition_failed(exc, index=_sop_position(context)):
                    existing = self.find(instance.sop_instance_uid)
                    if existing is not None:
                        if existing.stored.key == stored.key:
                            return  # our own earlier attempt committed
                        raise AlreadyIndexed(existing) from None
                # The study or series appeared, or was being deleted, (or a concurrent
                # transaction touched the same items): read again and retry with backoff.
                _backoff(attempt)
                context = self._context(instance, deletions)
                generation += 1
                continue
            if context.series_exists:
                self._fence_after_commit(instance, stored, deletions)
            return
        raise IndexContention(
            f"could not index {instance.sop_instance_uid} after {MAX_ATTEMPTS} attempts under contention"
        )

    def _fence_after_commit(self, instance: ReceivedInstance, stored: StoredObject, deletions: int) -> None:
        """After committing into an existing series: has a DELETE of it begun since ``deletions``
        was read? Then take this write's items back (only while they still name its object)
        and raise :class:`StudyDeleted`. One strongly consistent GetItem of the tombstone."""
        try:
            tombstone = DeletedStudyItem.get(
                *DeletedStudyItem.key(instance.study_instance_uid),
                consistent_read=True,
                attributes_to_get=["pk", "sk", "kind", "deleting", "deletions"],
            )
        except DeletedStudyItem.DoesNotExist:
            if deletions == 0:
                return
            tombstone = None
        if tombstone is not None and tombstone.deleting is None and _count(tombstone.deletions) == deletions:
            return
        # Each item only while it names this write's object; the DELETE may have taken it already.
        study, series, sop = (
            instance.study_instance_uid,
            instance.series_instance_uid,
            instance.sop_instance_uid,
        )
        _delete_unless_changed(SopItem(*SopItem.key(sop)), SopItem.s3_key == stored.key)
        _delete_unless_changed(
            InstanceItem(*InstanceItem.key(study, series, sop)), InstanceItem.s3_key == stored.key
        )
        raise StudyDeleted()

    def _context(self, instance: ReceivedInstance, deletions: int) -> WriteContext:
        """Read again, strongly consistent: do the study and the series exist, how many
        DELETEs of the study have begun (see :func:`_context`)."""
        return _context(instance, self._read(_context_keys(instance)), deletions)

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

    def replace(
        self,
        instance: ReceivedInstance,
        stored: StoredObject,
        existing: ExistingInstance,
        *,
        deletions: int,
    ) -> None:
        """Point an indexed instance at new content (the overwrite duplicate policy).

        Conditional on the SOP item still holding ``existing``'s object, so of two
        concurrent replacements exactly one wins (:class:`ConcurrentlyReplaced` for the
        other); on the instance's patient, study and series attributes being unchanged
        (:class:`AttributesChanged`: an overwrite cannot leave the study's search entries
        stale); and on no DELETE of the study under way or begun since ``deletions`` was
        read (:class:`StudyDeleted`). Aggregates do not change. Like :meth:`add`, returns
        normally when an earlier attempt whose answer was lost committed it.
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
                current = self.find(instance.sop_instance_uid)
                if current is not None and current.stored.key == stored.key:
                    return  # our own earlier attempt committed
                # pynamodb's order: the condition checks (series, study), then the updates.
                if _condition_failed(exc, index=2):
                    raise ConcurrentlyReplaced() from None
                if any(_condition_failed(exc, index=i) for i in (0, 1, 3)):
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
        instance_item = InstanceItem(
            *InstanceItem.key(study_uid, instance.series_instance_uid, instance.sop_instance_uid)
        )
        with TransactWrite(connection=self._connection, client_request_token=_token(stored, 0)) as tx:
            tx.update(
                SopItem(*SopItem.key(instance.sop_instance_uid)),
                actions=[
                    SopItem.s3_key.set(stored.key),
                    _set_or_remove(SopItem.s3_version_id, stored.version_id),
                    SopItem.sha256.set(stored.sha256),
                    SopItem.size.set(stored.size),
                    SopItem.sop_class_uid.set(instance.sop_class_uid),
                    SopItem.updated_at.set(now),
                ],
                condition=SopItem.s3_key == existing.stored.key,
            )
            tx.update(
                instance_item,
                actions=[
                    InstanceItem.s3_key.set(stored.key),
                    _set_or_remove(InstanceItem.s3_version_id, stored.version_id),
                    InstanceItem.sha256.set(stored.sha256),
                    InstanceItem.size.set(stored.size),
                    InstanceItem.transfer_syntax_uid.set(instance.transfer_syntax_uid),
                    InstanceItem.dicom_json.set(json.dumps(instance.instance_json)),
                    _set_or_remove(InstanceItem.frame_index, frame_index_json(instance)),
                    InstanceItem.updated_at.set(now),
                ],
                condition=InstanceItem.pk.exists(),
            )
            # The series' and study's attributes are their items' (QIDO reads them there): an
            # overwrite must carry the same ones. Its content version moves with the instance
            # item's ``updated_at`` (index.aggregates), so its cached documents are rebuilt.
            pk, sk = SeriesItem.key(study_uid, instance.series_instance_uid)
            tx.condition_check(
                SeriesItem,
                pk,
                sk,
                condition=SeriesItem.pk.exists()
                & (SeriesItem.dicom_json == json.dumps(instance.series_json)),
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

    def _transact_add(
        self, instance: ReceivedInstance, stored: StoredObject, context: WriteContext, *, token: str
    ) -> None:
        now = _now()
        study, series = instance.study_instance_uid, instance.series_instance_uid
        series_sort = f"{context.study_sort}#{series}"
        with TransactWrite(connection=self._connection, client_request_token=token) as tx:
            # The SOP item must stay the first put (see _sop_position): its cancellation
            # reason means "duplicate".
            tx.save(sop_item(instance, stored, now), condition=SopItem.pk.does_not_exist())
            tx.save(
                instance_item(instance, stored, now, series_sort=series_sort),
                condition=InstanceItem.pk.does_not_exist(),
            )
            if not context.series_exists:
                tx.save(
                    series_item(instance, now, study_sort=context.study_sort),
                    condition=SeriesItem.pk.does_not_exist(),
                )
                # A first store into a series (or study): no DELETE of the study may have
                # begun since the read. Once per series, so writers rarely meet here.
                pk, sk = DeletedStudyItem.key(study)
                tx.condition_check(
                    DeletedStudyItem,
                    pk,
                    sk,
                    condition=_counted(DeletedStudyItem.deletions, context.deletions),
                )
            if not context.study_exists:
                tx.save(study_item(instance, context, now), condition=StudyItem.pk.does_not_exist())


def _context_keys(instance: ReceivedInstance) -> list[tuple[str, str]]:
    """The study's and series' items and the study's tombstone."""
    study, series = instance.study_instance_uid, instance.series_instance_uid
    return [StudyItem.key(study), SeriesItem.key(study, series), DeletedStudyItem.key(study)]


def _context(
    instance: ReceivedInstance, items: dict[tuple[str, str], IndexItem], deletions: int
) -> WriteContext:
    """What a write's transaction depends on, from the items :func:`_context_keys` names.

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
    )


def _sop_position(context: WriteContext) -> int:
    """Where the SOP item's put is in the transaction: pynamodb puts condition checks first,
    and a first store into a series carries one (the tombstone's)."""
    return 0 if context.series_exists else 1


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


def _existing(item: SopItem) -> ExistingInstance:
    return ExistingInstance(
        study_uid=item.study_uid,
        series_uid=item.series_uid,
        sop_class_uid=item.sop_class_uid,
        stored=StoredObject(item.s3_key, item.s3_version_id, item.sha256, int(item.size)),
    )


def _delete_unless_changed(item: IndexItem, condition: Condition) -> None:
    """Delete ``item`` if ``condition`` holds; nothing when it does not (changed or gone)."""
    try:
        item.delete(condition=condition)
    except DeleteError as exc:
        if getattr(exc, "cause_response_code", "") != "ConditionalCheckFailedException":
            raise


def _set_or_remove(attribute: UnicodeAttribute, value: str | None) -> Action:
    return attribute.set(value) if value is not None else attribute.remove()


def _condition_failed(exc: TransactWriteError, *, index: int) -> bool:
    reasons = exc.cancellation_reasons
    reason = reasons[index] if index < len(reasons) else None
    return reason is not None and reason.code == "ConditionalCheckFailed"
