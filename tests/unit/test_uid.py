"""Tests for UID validation (PS3.5 §9.1), applied before a UID becomes part of a key."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom.uid import UID

from dicomweb_core.dicom.uid import MAX_UID_LENGTH, is_valid_uid, validate_uid
from dicomweb_core.errors import BadRequest, InvalidUID

VALID = [
    ("1.2.840.10008.1.2.1", "transfer-syntax"),
    ("1.2.840.10008.5.1.4.1.1.2", "sop-class"),
    ("1", "single-component"),
    ("0", "zero"),
    ("0.0.0", "all-zero-components"),
    ("1.0.2", "zero-component-inside"),
    ("2.25.329800735698586629295641978511506172918", "uuid-derived"),
    ("1." + "2" * 62, "64-chars"),
    ("1.2." + ".".join(["3"] * 30), "many-components"),
    ("10.20.30", "multi-digit-components"),
]
INVALID = [
    ("1." + "2" * 63, "65-chars"),
    ("1" * 65, "65-digits"),
    ("", "empty"),
    ("1.02", "leading-zero"),
    ("01.2", "leading-zero-first"),
    ("1.2.00", "double-zero"),
    ("1..2", "empty-component"),
    (".1.2", "leading-dot"),
    ("1.2.", "trailing-dot"),
    (".", "only-dot"),
    ("1.2.a", "letter"),
    ("1.2.3e5", "exponent"),
    ("0x1.2", "hex"),
    ("1.2 ", "trailing-space"),
    (" 1.2", "leading-space"),
    ("1. 2", "inner-space"),
    ("1.2\0", "nul-padding"),
    ("1.2\0\0\0\0", "nul-run"),
    ("1.2\n", "trailing-newline"),
    ("1.2\r\n3", "crlf"),
    ("../1.2", "dot-dot-slash"),
    ("..", "dot-dot"),
    ("1.2/../3", "embedded-traversal"),
    ("%2e%2e", "percent-encoded-dots"),
    ("1%2e2", "percent-encoded-dot"),
    ("1.2\\1.3", "backslash-multivalue"),
    ("1.2/3", "slash"),
    ("-1.2", "negative"),
    ("+1.2", "plus"),
    ("1,2", "comma"),
    ("\u0661.\u0662", "arabic-indic-digits"),
    ("\uff11.\uff12", "fullwidth-digits"),
    ("1.2\u200b", "zero-width-space"),
    ("1.2;DROP TABLE", "injection"),
    ("*", "wildcard"),
]
NON_STR = [
    (None, "none"),
    (12, "int"),
    (1.2, "float"),
    (b"1.2.3", "bytes"),
    (bytearray(b"1.2.3"), "bytearray"),
    (["1.2.3"], "list"),
    (("1", "2"), "tuple"),
    ({"uid": "1.2"}, "dict"),
    (True, "bool"),
]


def _values(cases: list[tuple[object, str]]) -> list[object]:
    return [value for value, _ in cases]


def _ids(cases: list[tuple[object, str]]) -> list[str]:
    return [name for _, name in cases]


@pytest.mark.parametrize("value", _values(VALID), ids=_ids(VALID))
def test_valid_uids_are_accepted_and_returned_unchanged(value: str) -> None:
    # Given a UID that follows PS3.5 §9.1
    # When it is checked and validated
    ok = is_valid_uid(value)
    returned = validate_uid(value)
    # Then it is valid and returned as given
    assert ok
    assert returned == value
    assert type(returned) is str


def test_uid_of_exactly_64_characters_is_the_longest_valid() -> None:
    # Given UIDs of 64 and 65 characters
    longest = "1." + "9" * (MAX_UID_LENGTH - 2)
    too_long = longest + "9"
    # When they are checked
    # Then 64 is the limit
    assert len(longest) == 64
    assert is_valid_uid(longest)
    assert not is_valid_uid(too_long)


@pytest.mark.parametrize("value", _values(INVALID), ids=_ids(INVALID))
def test_invalid_uids_are_rejected_without_echoing_the_value(value: str) -> None:
    # Given a string that breaks PS3.5 §9.1
    # When it is checked and validated
    ok = is_valid_uid(value)
    with pytest.raises(InvalidUID) as info:
        validate_uid(value, name="Study Instance UID")
    # Then it is invalid, with a 400 error that names the attribute but not the value
    assert not ok
    message = str(info.value)
    assert isinstance(info.value, BadRequest)
    assert info.value.status == 400
    assert message.startswith("Study Instance UID ")
    if len(value) > 1:  # "" and "." occur in any sentence
        assert value not in message


@pytest.mark.parametrize("value", _values(NON_STR), ids=_ids(NON_STR))
def test_non_string_values_are_never_valid(value: object) -> None:
    # Given something that is not a str (bytes that look like a UID included)
    # When it is checked and validated
    ok = is_valid_uid(value)
    with pytest.raises(InvalidUID) as info:
        validate_uid(value, name="SOP Instance UID")
    # Then it is invalid, reported as missing, and its repr is not echoed
    assert not ok
    assert str(info.value) == "SOP Instance UID is missing or empty."
    assert repr(value) not in str(info.value)


def test_pydicom_uid_is_accepted_as_a_plain_str() -> None:
    # Given a pydicom UID (a str subclass)
    value = UID("1.2.840.10008.1.2.1")
    # When it is validated
    returned = validate_uid(value)
    # Then a plain str with the same text comes back
    assert returned == "1.2.840.10008.1.2.1"
    assert type(returned) is str


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", "UID is missing or empty."),
        ("1." + "2" * 70, "UID is 72 characters long; a UID has at most 64."),
        (
            "1.02",
            "UID is not a valid UID: it must be digits and dots, with no empty components "
            "and no leading zeros (PS3.5 §9.1).",
        ),
    ],
    ids=["empty", "too-long", "malformed"],
)
def test_messages_say_what_is_wrong(value: str, expected: str) -> None:
    # Given an empty, an overlong and a malformed UID
    # When each is validated with the default name
    with pytest.raises(InvalidUID) as info:
        validate_uid(value)
    # Then the message says which rule is broken
    assert str(info.value) == expected
    assert info.value.message == expected


_COMPONENT = st.one_of(st.just("0"), st.integers(min_value=1, max_value=10**12).map(str))


@given(st.lists(_COMPONENT, min_size=1, max_size=20).map(".".join))
def test_any_dotted_list_of_canonical_numbers_up_to_64_chars_is_valid(value: str) -> None:
    # Given dot-separated unsigned integers without leading zeros
    # When it is checked
    # Then it is valid exactly when it fits in 64 characters
    assert is_valid_uid(value) == (len(value) <= MAX_UID_LENGTH)


@given(st.text(min_size=1, max_size=100))
def test_invalid_text_gets_one_of_three_fixed_messages(value: str) -> None:
    # Given any text
    if is_valid_uid(value):
        return
    # When it is invalid and validated
    with pytest.raises(InvalidUID) as info:
        validate_uid(value, name="UID in the path")
    # Then the message is a fixed template: only the length can vary, never the content
    assert str(info.value) in {
        "UID in the path is missing or empty.",
        f"UID in the path is {len(value)} characters long; a UID has at most 64.",
        "UID in the path is not a valid UID: it must be digits and dots, with no empty "
        "components and no leading zeros (PS3.5 §9.1).",
    }


@given(st.text(alphabet=st.characters(blacklist_characters="0123456789."), min_size=1, max_size=8))
def test_any_character_other_than_digits_and_dots_makes_a_uid_invalid(extra: str) -> None:
    # Given a valid UID with foreign characters inserted in the middle
    value = "1.2" + extra + "3"
    # When it is checked
    # Then it is invalid
    assert not is_valid_uid(value)
