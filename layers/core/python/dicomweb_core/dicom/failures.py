"""DICOM failure and warning reasons for STOW-RS (PS3.18 §10.5.3, PS3.4 Annex B.2.3).

The codes this server uses are listed in docs/conformance.md; each rejected instance
gets the single most specific one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import IntEnum


class FailureReason(IntEnum):
    PROCESSING_FAILURE = 0x0110
    DUPLICATE_SOP_INSTANCE = 0x0111
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    OUT_OF_RESOURCES = 0xA700
    DATASET_DOES_NOT_MATCH = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
    STUDY_UID_MISMATCH = 0xC409


class WarningReason(IntEnum):
    COERCION = 0xB000
    ELEMENTS_DISCARDED = 0xB006
    DATASET_DOES_NOT_MATCH = 0xB007


@dataclass(frozen=True, slots=True)
class Failure:
    """One instance (or part) that was not stored, and why."""

    reason: FailureReason
    message: str
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    # A server-side error, not a verdict on the instance: the same bytes may be stored on
    # a retry (a refusal such as a duplicate or a study being deleted is not retryable).
    retryable: bool = False


class InstanceRejected(Exception):
    """An instance that will not be stored; carries its :class:`Failure`."""

    def __init__(
        self,
        reason: FailureReason,
        message: str,
        *,
        sop_class_uid: str | None = None,
        sop_instance_uid: str | None = None,
        retryable: bool = False,
    ) -> None:
        self.failure = Failure(reason, message, sop_class_uid, sop_instance_uid, retryable)
        super().__init__(message)

    def with_uids(self, sop_class_uid: str | None, sop_instance_uid: str | None) -> InstanceRejected:
        """The same rejection, naming the instance when its UIDs are known."""
        failure = replace(
            self.failure,
            sop_class_uid=self.failure.sop_class_uid or sop_class_uid,
            sop_instance_uid=self.failure.sop_instance_uid or sop_instance_uid,
        )
        return InstanceRejected(
            failure.reason,
            failure.message,
            sop_class_uid=failure.sop_class_uid,
            sop_instance_uid=failure.sop_instance_uid,
            retryable=failure.retryable,
        )
