"""What an index write finds, answers and refuses (the write path of docs/write-safety.md)."""

from __future__ import annotations

from dataclasses import dataclass

from dicomweb_core.dicom.failures import FailureReason
from dicomweb_core.dicom.instance import ReceivedInstance


@dataclass(frozen=True, slots=True)
class StoredObject:
    """Where an instance's bytes are: the exact S3 object version the index points at."""

    key: str
    version_id: str | None
    sha256: str
    size: int


@dataclass(frozen=True, slots=True)
class WriteContext:
    """What a first store's transaction depends on, read just before it (IndexWriter._context)."""

    study_exists: bool
    series_exists: bool
    study_sort: str
    deletions: int  # the study's DELETE count, read before the objects were put
    claimed: bool = False  # the SOP Instance UID is claimed for this instance's study and series
    study_json: str | None = None  # the study item's attributes, when it was read


@dataclass(frozen=True, slots=True)
class ExistingInstance:
    """What the index holds for a SOP Instance UID that is already stored."""

    study_uid: str
    series_uid: str
    sop_class_uid: str
    stored: StoredObject

    def same_content(self, instance: ReceivedInstance) -> bool:
        return self.stored.sha256 == instance.sha256


class WriteRefused(Exception):
    """The index refused a write and committed nothing of it; the message tells the sender why."""

    failure_reason = FailureReason.PROCESSING_FAILURE


class StudyDeleted(WriteRefused):
    def __init__(self) -> None:
        super().__init__(
            "the study is being deleted, or was deleted while this instance was being stored; "
            "nothing was kept. Send it again to store it in the study anew."
        )


class AttributesChanged(WriteRefused):
    failure_reason = FailureReason.DUPLICATE_SOP_INSTANCE

    def __init__(self) -> None:
        super().__init__(
            "an instance with this SOP Instance UID is stored with other patient, study or series "
            "attributes; overwriting replaces an instance's own content only. The stored instance "
            "was kept: delete the study and store it again to change those attributes."
        )


class ConcurrentlyReplaced(WriteRefused):
    def __init__(self) -> None:
        super().__init__(
            "another request replaced this instance at the same time; that one was kept, nothing "
            "of this one was. Send it again if it should replace that one."
        )


class ClaimedElsewhere(WriteRefused):
    failure_reason = FailureReason.DUPLICATE_SOP_INSTANCE

    def __init__(self, minutes: int) -> None:
        super().__init__(
            "an instance with this SOP Instance UID is being stored in another study or series at "
            "this moment; nothing of this one was kept. If that store failed, send this one again "
            f"after {minutes} minutes."
        )


@dataclass(frozen=True, slots=True)
class Prior:
    """What the index says before a write puts anything in S3."""

    existing: ExistingInstance | None  # the instance with this SOP Instance UID, if stored
    deletions: int  # how many DELETEs of the study have begun
    context: WriteContext  # whether the study and series exist: the first attempt's context


@dataclass(frozen=True, slots=True, eq=False)
class Unfenced:
    """A write committed into an existing series whose DELETE fence is still to be read
    (:meth:`~dicomweb_core.index.writer.IndexWriter.fence`): until then it is not stored."""

    instance: ReceivedInstance
    stored: StoredObject
    deletions: int  # the study's DELETE count read before the write's objects were put


class AlreadyIndexed(Exception):
    """The SOP Instance UID is in the index already; ``existing`` says with what."""

    def __init__(self, existing: ExistingInstance) -> None:
        self.existing = existing
        super().__init__(f"SOP Instance {existing.stored.key} is already indexed")


class IndexContention(RuntimeError):
    """The transaction kept being cancelled by concurrent writers; the caller may retry."""
