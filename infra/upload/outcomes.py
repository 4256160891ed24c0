"""What happened to each file: stored, or failed with a DICOM failure reason and a message.

STOW-RS answers with the Store Instances Response Module (PS3.18 §10.5.3, Table
10.5.3-1) as DICOM JSON: the Referenced SOP Sequence (0008,1199) lists what was stored,
the Failed SOP Sequence (0008,1198) what was not, each item with its Failure Reason
(0008,1197, PS3.4 Annex B.2.3) and an Error Comment (0000,0902); Other Failures
(0008,119A) are parts the server could not even identify. The ``Warning`` headers
(PS3.18 §8.3.4.3) say the same reasons in full words, and are preferred when they match.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

REFERENCED_SOP_SEQUENCE = "00081199"
FAILED_SOP_SEQUENCE = "00081198"
OTHER_FAILURES_SEQUENCE = "0008119A"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"
WARNING_REASON = "00081196"
ERROR_COMMENT = "00000902"

# PS3.4 Annex B.2.3 and PS3.18 §10.5.3: the reasons a reader of the summary needs in words.
FAILURE_REASON_NAMES = {
    0x0110: "processing failure",
    0x0111: "duplicate SOP instance",
    0x0122: "SOP class not supported",
    0xA700: "out of resources",
    0xA900: "data set does not match SOP class",
    0xC000: "cannot understand",
    0xC122: "transfer syntax not supported",
    0xC409: "study instance UID mismatch",
}


@dataclass(frozen=True, slots=True)
class Outcome:
    """One file's result. ``reason`` is the DICOM failure reason, None for a transport failure."""

    stored: bool
    reason: int | None = None
    message: str = ""

    @classmethod
    def ok(cls) -> Outcome:
        return cls(True)

    @classmethod
    def failed(cls, message: str, reason: int | None = None) -> Outcome:
        return cls(False, reason, message)

    def describe(self) -> str:
        if self.stored:
            return "stored"
        if self.reason is None:
            return self.message
        name = FAILURE_REASON_NAMES.get(self.reason, "failure")
        return (
            f"0x{self.reason:04X} ({name}): {self.message}"
            if self.message
            else f"0x{self.reason:04X} ({name})"
        )


def _value(item: Mapping[str, Any], tag: str) -> Any:
    values = item.get(tag, {}).get("Value") or [None]
    return values[0]


def _items(response: Mapping[str, Any], tag: str) -> list[Mapping[str, Any]]:
    element = response.get(tag) or {}
    return [item for item in element.get("Value") or [] if isinstance(item, Mapping)]


def _warning_texts(warnings: Sequence[str]) -> list[str]:
    """The quoted text of ``Warning: 299 <agent> "<text>"`` header values."""
    texts = []
    for value in warnings:
        start, end = value.find('"'), value.rfind('"')
        if 0 <= start < end:
            texts.append(value[start + 1 : end])
    return texts


def _full_message(comment: str, warnings: Sequence[str]) -> str:
    """The Error Comment is at most 64 characters; a Warning that begins with it is the whole text."""
    if comment:
        for text in warnings:
            if text.startswith(comment):
                return text
    return comment


@dataclass(frozen=True, slots=True)
class StoreResponse:
    """A Store Instances Response read into outcomes by SOP Instance UID."""

    by_uid: Mapping[str, Outcome]
    other_failures: Sequence[Outcome]

    @classmethod
    def read(cls, response: Mapping[str, Any], *, warnings: Sequence[str] = ()) -> StoreResponse:
        texts = _warning_texts(warnings)
        by_uid: dict[str, Outcome] = {}
        for item in _items(response, REFERENCED_SOP_SEQUENCE):
            uid = _value(item, REFERENCED_SOP_INSTANCE_UID)
            if uid:
                by_uid[str(uid)] = Outcome.ok()
        others = []
        for tag in (FAILED_SOP_SEQUENCE, OTHER_FAILURES_SEQUENCE):
            for item in _items(response, tag):
                reason = _value(item, FAILURE_REASON)
                outcome = Outcome.failed(
                    _full_message(str(_value(item, ERROR_COMMENT) or ""), texts),
                    int(reason) if reason is not None else None,
                )
                uid = _value(item, REFERENCED_SOP_INSTANCE_UID)
                if uid:
                    by_uid.setdefault(str(uid), outcome)
                else:
                    others.append(outcome)
        return cls(by_uid, others)

    def outcome_of(self, sop_instance_uid: str) -> Outcome:
        """What the response says of one instance sent; an instance it does not name failed
        as one of the unidentified parts (Other Failures), or for no stated reason."""
        found = self.by_uid.get(sop_instance_uid)
        if found is not None:
            return found
        if self.other_failures:
            return self.other_failures[0]
        return Outcome.failed("the Store Instances Response does not mention this instance")
