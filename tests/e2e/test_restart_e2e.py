"""The local runtime keeps its data and its token trust across a restart (state.pickle, signing key)."""

from __future__ import annotations

from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path

import pytest

from tests.e2e.conftest import Runtime, free_port, start_runtime, stop_runtime
from tests.e2e.helpers import make_instance, referenced, stow, zero_preamble

pytestmark = pytest.mark.e2e


@pytest.fixture
def local_dir(tmp_path: Path) -> Path:
    return tmp_path / "local"


@pytest.fixture
def runtimes() -> Iterator[list[Runtime]]:
    """Every runtime a test starts; whatever still runs at the end is stopped."""
    started: list[Runtime] = []
    yield started
    for runtime in started:
        if runtime.process.poll() is None:
            runtime.stop()


def test_a_restart_keeps_instances_index_and_tokens(local_dir: Path, runtimes: list[Runtime]) -> None:
    # Given a runtime with one stored instance
    first = start_runtime(local_dir)
    runtimes.append(first)
    instance = make_instance()
    uploader = first.tokens["uploader"]
    stored = stow(first.base_url, [instance.data], token=uploader)
    assert stored.status_code == HTTPStatus.OK, stored.text
    # When it is stopped with SIGTERM and started again on another free port with the same local dir
    stop_runtime(first)
    port = free_port()
    while port == first.port:
        port = free_port()
    second = start_runtime(local_dir, port)
    runtimes.append(second)
    # Then the state was restored with the same user pool and app clients
    assert second.info["restored_state"] is True
    for logical_id in ("UserPool", "UploaderClient", "InstanceBucket", "IndexTable"):
        assert second.resources[logical_id] == first.resources[logical_id]
    # And the object is still in S3, once, and the instance still indexed
    assert second.instance_bytes(instance.sop) == zero_preamble(instance.data)
    assert len(second.instance_versions(instance.prefix)) == 1
    assert second.indexed_instance(instance.sop) is not None
    assert second.study_counts(instance.study) == (1, 1)
    # And a re-store is idempotent (200) and the study still counts one instance
    again = stow(second.base_url, [instance.data], token=second.tokens["uploader"])
    assert again.status_code == HTTPStatus.OK, again.text
    assert [i.sop_instance_uid for i in referenced(again.json())] == [instance.sop]
    assert second.study_counts(instance.study) == (1, 1)
    # And the token issued before the restart still works: same signing key and client ids
    with_old_token = stow(second.base_url, [instance.data], token=uploader)
    assert with_old_token.status_code == HTTPStatus.OK, (
        f"{with_old_token.status_code} {with_old_token.headers.get('www-authenticate')}"
    )
    assert second.study_counts(instance.study) == (1, 1)
    stop_runtime(second)
