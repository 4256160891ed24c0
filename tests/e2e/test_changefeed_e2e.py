"""The change feed in the local runtime: InstanceStored from the index table's stream, across a restart."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Runtime, free_port, start_runtime, stop_runtime
from tests.e2e.helpers import make_instance, stow

pytestmark = pytest.mark.e2e


@pytest.fixture
def runtimes() -> Iterator[list[Runtime]]:
    """Every runtime a test starts; whatever still runs at the end is stopped."""
    started: list[Runtime] = []
    yield started
    for runtime in started:
        if runtime.process.poll() is None:
            runtime.stop()


def announced(events: list[dict[str, Any]]) -> Counter[str]:
    return Counter(e["detail"]["sopInstanceUID"] for e in events if e.get("detail-type") == "InstanceStored")


def test_a_restart_resumes_the_stream_without_announcing_anything_twice(
    tmp_path: Path, runtimes: list[Runtime]
) -> None:
    # Given a runtime that stored an instance and announced it from the table's stream
    local_dir = tmp_path / "local"
    first = start_runtime(local_dir)
    runtimes.append(first)
    before = make_instance()
    assert stow(first.base_url, [before.data], token=first.tokens["uploader"]).status_code == HTTPStatus.OK
    assert announced(first.wait_for_events(lambda e: before.sop in announced(e)))[before.sop] == 1
    # When it is stopped, started again with the same local dir, and stores another instance
    stop_runtime(first)
    port = free_port()
    while port == first.port:
        port = free_port()
    second = start_runtime(local_dir, port)
    runtimes.append(second)
    assert second.info["restored_state"] is True
    after = make_instance()
    assert stow(second.base_url, [after.data], token=second.tokens["uploader"]).status_code == HTTPStatus.OK
    # Then the new instance is announced, and the first one was not announced again (a
    # replay would have come before it: the stream is read in commit order)
    second.wait_for_events(lambda e: after.sop in announced(e))
    time.sleep(1.5)  # one more poll of the stream and of the event log
    counts = announced(second.read_events())
    assert (counts[before.sop], counts[after.sop]) == (1, 1)
    stop_runtime(second)
