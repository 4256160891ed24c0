"""Adding instances to the index in one DynamoDB transaction.

The transaction puts the SOP item and the instance item with ``attribute_not_exists``
and moves the study and series aggregates by exactly one instance. Whether the study
and series are new decides which form each of their writes takes; a conditional check
on that decision makes concurrent first stores of the same study or series safe: the
loser's transaction is cancelled and retried with a fresh read. A SOP item that already
exists cancels the transaction too, so a replayed or retried store never counts twice.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property

from pynamodb.attributes import UnicodeAttribute
from pynamodb.connection import Connection
from pynamodb.exceptions import TransactWriteError
from pynamodb.expressions.update import Action
from pynamodb.transactions import TransactWrite

from dicomweb_core.index.models import IndexItem, InstanceItem, SeriesItem, SopItem, StudyItem
from dicomweb_core.instance import ReceivedInstance

MAX_ATTEMPTS = 8


@dataclass(frozen=True, slots=True)
class StoredObject:
    """Where an instance's bytes are: the exact S3 object version the index points at."""

    key: str
    version_id: str | None
    sha256: str
    size: int


@dataclass(frozen=True, slots=True)
class ExistingInstance:
    """What the index holds for a SOP Instance UID that is already stored."""

    study_uid: str
    series_uid: str
    sop_class_uid: str
    stored: StoredObject

    def same_content(self, instance: ReceivedInstance) -> bool:
        return self.stored.sha256 == instance.sha256


class AlreadyIndexed(Exception):
    """The SOP Instance UID is in the index already; ``existing`` says with what."""

    def __init__(self, existing: ExistingInstance) -> None:
        self.existing = existing
        super().__init__(f"SOP Instance {existing.stored.key} is already indexed")


class IndexContention(RuntimeError):
    """The transaction kept being cancelled by concurrent writers; the caller may retry."""


def _now() -> datetime:
    return datetime.now(UTC)


class IndexWriter:
    """Writes and reads the items one stored instance owns."""

    @cached_property
    def _connection(self) -> Connection:
        return Connection(region=IndexItem.Meta.region)

    def find(self, sop_uid: str) -> ExistingInstance | None:
        """The stored instance with this SOP Instance UID, read with strong consistency."""
        try:
            item = SopItem.get(*SopItem.key(sop_uid), consistent_read=True)
        except SopItem.DoesNotExist:
            return None
        return ExistingInstance(
            study_uid=item.study_uid,
            series_uid=item.series_uid,
            sop_class_uid=item.sop_class_uid,
            stored=StoredObject(item.s3_key, item.s3_version_id, item.sha256, int(item.size)),
        )

    def add(self, instance: ReceivedInstance, stored: StoredObject) -> None:
        """Index a new instance and move the aggregates, exactly once.

        Raises :class:`AlreadyIndexed` when the SOP Instance UID is already in the index.
        """
        for attempt in range(MAX_ATTEMPTS):
            study_key = StudyItem.key(instance.study_instance_uid)
            series_key = SeriesItem.key(instance.study_instance_uid, instance.series_instance_uid)
            found = _existing_keys([study_key, series_key])
            study_exists, series_exists = study_key in found, series_key in found
            try:
                self._transact_add(instance, stored, study_exists=study_exists, series_exists=series_exists)
                return
            except TransactWriteError as exc:
                if _condition_failed(exc, index=0):
                    existing = self.find(instance.sop_instance_uid)
                    if existing is not None:
                        raise AlreadyIndexed(existing) from None
                # The study or series appeared (or a concurrent transaction touched
                # the same items): read again and retry with jittered backoff.
                time.sleep(random.uniform(0, 0.02 * 2**attempt))  # noqa: S311 (jitter, not crypto)
        raise IndexContention(
            f"could not index {instance.sop_instance_uid} after {MAX_ATTEMPTS} attempts under contention"
        )

    def replace(self, instance: ReceivedInstance, stored: StoredObject, existing: ExistingInstance) -> None:
        """Point an indexed instance at new content (the overwrite duplicate policy).

        Conditional on the SOP item still holding ``existing``'s checksum, so two
        concurrent replacements cannot interleave; aggregates do not change.
        """
        now = _now()
        with TransactWrite(connection=self._connection) as tx:
            sop = SopItem(*SopItem.key(instance.sop_instance_uid))
            tx.update(
                sop,
                actions=[
                    SopItem.s3_key.set(stored.key),
                    _set_or_remove(SopItem.s3_version_id, stored.version_id),
                    SopItem.sha256.set(stored.sha256),
                    SopItem.size.set(stored.size),
                    SopItem.sop_class_uid.set(instance.sop_class_uid),
                    SopItem.updated_at.set(now),
                ],
                condition=SopItem.sha256 == existing.stored.sha256,
            )
            tx.save(_instance_item(instance, stored, now), condition=InstanceItem.pk.exists())

    def _transact_add(
        self, instance: ReceivedInstance, stored: StoredObject, *, study_exists: bool, series_exists: bool
    ) -> None:
        now = _now()
        study, series = instance.study_instance_uid, instance.series_instance_uid
        modalities = {instance.modality} if instance.modality else None
        with TransactWrite(connection=self._connection) as tx:
            # Item 0 must stay the SOP item: its cancellation reason means "duplicate".
            tx.save(_sop_item(instance, stored, now), condition=SopItem.pk.does_not_exist())
            tx.save(_instance_item(instance, stored, now), condition=InstanceItem.pk.does_not_exist())
            if series_exists:
                tx.update(
                    SeriesItem(*SeriesItem.key(study, series)),
                    actions=[SeriesItem.instance_count.add(1), SeriesItem.updated_at.set(now)],
                    condition=SeriesItem.pk.exists(),
                )
            else:
                tx.save(
                    SeriesItem(
                        *SeriesItem.key(study, series),
                        study_uid=study,
                        series_uid=series,
                        modality=instance.modality or None,
                        dicom_json=json.dumps(instance.series_json),
                        instance_count=1,
                        updated_at=now,
                    ),
                    condition=SeriesItem.pk.does_not_exist(),
                )
            if study_exists:
                actions: list[Action] = [
                    StudyItem.instance_count.add(1),
                    StudyItem.series_count.add(0 if series_exists else 1),
                    StudyItem.updated_at.set(now),
                ]
                if modalities:
                    actions.append(StudyItem.modalities.add(modalities))
                tx.update(StudyItem(*StudyItem.key(study)), actions=actions, condition=StudyItem.pk.exists())
            else:
                tx.save(
                    StudyItem(
                        *StudyItem.key(study),
                        study_uid=study,
                        dicom_json=json.dumps(instance.study_json),
                        modalities=modalities,
                        series_count=1,
                        instance_count=1,
                        updated_at=now,
                    ),
                    condition=StudyItem.pk.does_not_exist(),
                )


def _sop_item(instance: ReceivedInstance, stored: StoredObject, now: datetime) -> SopItem:
    return SopItem(
        *SopItem.key(instance.sop_instance_uid),
        study_uid=instance.study_instance_uid,
        series_uid=instance.series_instance_uid,
        sop_class_uid=instance.sop_class_uid,
        s3_key=stored.key,
        s3_version_id=stored.version_id,
        sha256=stored.sha256,
        size=stored.size,
        updated_at=now,
    )


def _instance_item(instance: ReceivedInstance, stored: StoredObject, now: datetime) -> InstanceItem:
    return InstanceItem(
        *InstanceItem.key(
            instance.study_instance_uid, instance.series_instance_uid, instance.sop_instance_uid
        ),
        study_uid=instance.study_instance_uid,
        series_uid=instance.series_instance_uid,
        sop_uid=instance.sop_instance_uid,
        sop_class_uid=instance.sop_class_uid,
        transfer_syntax_uid=instance.transfer_syntax_uid,
        dicom_json=json.dumps(instance.instance_json),
        s3_key=stored.key,
        s3_version_id=stored.version_id,
        sha256=stored.sha256,
        size=stored.size,
        updated_at=now,
    )


def _set_or_remove(attribute: UnicodeAttribute, value: str | None) -> Action:
    return attribute.set(value) if value is not None else attribute.remove()


def _existing_keys(keys: list[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which of ``keys`` exist: one strongly consistent BatchGetItem, keys only."""
    items = IndexItem.batch_get(keys, consistent_read=True, attributes_to_get=["pk", "sk"])
    return {(item.pk, item.sk) for item in items}


def _condition_failed(exc: TransactWriteError, *, index: int) -> bool:
    reasons = exc.cancellation_reasons
    reason = reasons[index] if index < len(reasons) else None
    return reason is not None and reason.code == "ConditionalCheckFailed"
