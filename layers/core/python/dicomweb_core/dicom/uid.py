"""UID validation per PS3.5 §9.1, applied before any UID becomes part of a key."""

from __future__ import annotations

import re

from dicomweb_core.errors import InvalidUID

MAX_UID_LENGTH = 64
# Components are unsigned integers without leading zeros ("0" itself is allowed),
# separated by single dots.
_UID_RE = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*")


def is_valid_uid(value: object) -> bool:
    """True when ``value`` is a str that is a valid UID (PS3.5 §9.1)."""
    return (
        isinstance(value, str) and 0 < len(value) <= MAX_UID_LENGTH and _UID_RE.fullmatch(value) is not None
    )


def validate_uid(value: object, *, name: str = "UID") -> str:
    """Return ``value`` if it is a valid UID, else raise :class:`InvalidUID`.

    The message names the attribute but never repeats the value, so it can go into a
    response without echoing client input.
    """
    if is_valid_uid(value):
        return str(value)
    if not isinstance(value, str) or not value:
        raise InvalidUID(f"{name} is missing or empty.")
    if len(value) > MAX_UID_LENGTH:
        raise InvalidUID(f"{name} is {len(value)} characters long; a UID has at most {MAX_UID_LENGTH}.")
    raise InvalidUID(
        f"{name} is not a valid UID: it must be digits and dots, with no empty components "
        "and no leading zeros (PS3.5 §9.1)."
    )
