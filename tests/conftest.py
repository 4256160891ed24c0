"""Shared fixtures: fake AWS credentials, moto-backed resources from template.yaml."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.faults import Faults

# Never reach a real AWS account from tests, whatever the developer's environment holds.
for _name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
    os.environ.pop(_name, None)
os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_METRICS_DISABLED": "true",
        "POWERTOOLS_SERVICE_NAME": "dicomweb-tests",
        "SAM_CLI_TELEMETRY": "0",
    }
)


@pytest.fixture
def aws() -> Iterator[None]:
    """An empty in-process moto account for one test."""
    from tests.moto_stack import moto_account

    with moto_account():
        yield


@pytest.fixture
def faults(monkeypatch: pytest.MonkeyPatch) -> Faults:
    """Fault injection at every AWS call (tests/faults.py)."""
    from tests.faults import install

    return install(monkeypatch)
