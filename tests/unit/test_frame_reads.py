"""Tests for planning the ranged S3 reads of a frame list (frames.coalesce_reads).

WADO-RS frame retrieval (PS3.18 §10.4.1.1.4) reads each frame's recorded byte range; a
list of frames is read in as few ranged GETs as the layout allows, within bounds on the
bytes read between frames and on the size of one read.
"""

from __future__ import annotations

import random

import pytest

from dicomweb_core.dicom.frames import (
    MAX_READ_GAP,
    MAX_READ_SPAN,
    MAX_READ_WASTE,
    Range,
    coalesce_reads,
    frame_span,
)


def covers(read: Range, span: Range) -> bool:
    return read[0] <= span[0] and span[0] + span[1] <= read[0] + read[1]


def check_plan(spans: list[Range], plan: list[tuple[Range, tuple[int, ...]]]) -> None:
    """Every span is assigned to exactly one read, which holds all of it."""
    assigned = sorted(k for _, members in plan for k in members)
    assert assigned == list(range(len(spans)))
    for read, members in plan:
        assert all(covers(read, spans[k]) for k in members)


@pytest.mark.parametrize(
    ("spans", "reads"),
    [
        ([(0, 100)], [(0, 100)]),
        ([(0, 100), (100, 100), (200, 100)], [(0, 300)]),
        ([(200, 100), (0, 100), (100, 100)], [(0, 300)]),
        ([(0, 100), (100 + MAX_READ_GAP, 100)], [(0, 200 + MAX_READ_GAP)]),
        ([(0, 100), (101 + MAX_READ_GAP, 100)], [(0, 100), (101 + MAX_READ_GAP, 100)]),
        ([(0, 300), (100, 100)], [(0, 300)]),
        ([(0, MAX_READ_SPAN), (MAX_READ_SPAN, 1)], [(0, MAX_READ_SPAN), (MAX_READ_SPAN, 1)]),
        ([(0, 2 * MAX_READ_SPAN)], [(0, 2 * MAX_READ_SPAN)]),
    ],
    ids=[
        "one",
        "adjacent",
        "adjacent-asked-out-of-order",
        "gap-at-the-limit",
        "gap-over-the-limit",
        "overlapping",
        "span-limit",
        "one-frame-larger-than-a-span",
    ],
)
def test_reads_cover_the_spans_in_as_few_gets_as_the_bounds_allow(
    spans: list[Range], reads: list[Range]
) -> None:
    # Given the byte ranges of some frames
    # When their reads are planned
    plan = coalesce_reads(spans)
    # Then near ranges share a read, far ones and reads over the span limit do not
    assert [read for read, _ in plan] == reads
    check_plan(spans, plan)


def test_bytes_read_between_frames_are_bounded_per_request() -> None:
    # Given frames one byte long, each a full gap after the previous one
    count = 2 * MAX_READ_WASTE // MAX_READ_GAP
    spans = [(k * (MAX_READ_GAP + 1), 1) for k in range(count)]
    # When their reads are planned
    plan = coalesce_reads(spans)
    check_plan(spans, plan)
    # Then no more than the waste budget is read between frames, so further frames get reads of their own
    wasted = sum(length for (_, length), _ in plan) - count
    assert wasted <= MAX_READ_WASTE
    assert len(plan) == count - MAX_READ_WASTE // MAX_READ_GAP


def test_random_layouts_are_planned_within_the_bounds() -> None:
    # Given many random sets of frames that do not overlap (as frames in an object do not)
    rng = random.Random(11)
    for _ in range(300):
        spans: list[Range] = []
        offset = 0
        for _ in range(20):
            offset += rng.choice([0, rng.randrange(1, 2 * MAX_READ_GAP)])
            length = rng.randrange(1, MAX_READ_SPAN // 4)
            spans.append((offset, length))
            offset += length
        rng.shuffle(spans)
        # When their reads are planned
        plan = coalesce_reads(spans)
        # Then every frame is in one read that holds it, no read joining frames exceeds the
        # span limit, and the bytes read beyond the frames' own stay within the waste budget
        check_plan(spans, plan)
        for read, members in plan:
            assert len(members) == 1 or read[1] <= MAX_READ_SPAN
        wasted = sum(length for (_, length), _ in plan) - sum(length for _, length in spans)
        assert 0 <= wasted <= MAX_READ_WASTE


@pytest.mark.parametrize(
    ("fragments", "span"),
    [([(100, 50)], (100, 50)), ([(100, 50), (158, 30), (196, 4)], (100, 100))],
    ids=["native-or-one-fragment", "fragments-with-item-headers-between"],
)
def test_a_frame_span_runs_from_its_first_fragment_to_its_last(fragments: list[Range], span: Range) -> None:
    # Given a frame's fragments / When its span is asked for / Then it covers them all
    assert frame_span(fragments) == span
