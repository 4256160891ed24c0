"""The deployed stack in moto, for tests: resources from template.yaml, services wired to them."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from moto import mock_aws

from dicomweb_core.config import DuplicatePolicy, Limits, Settings
from dicomweb_core.index.table import use_by_default
from dicomweb_core.stow.service import StowService
from infra.local.provision import Stack, provision
from infra.local.streams import withdraw_cancelled_stream_records
from infra.samtemplate import load_template
from tests.streams import settle

BASE_URL = "https://dicom.example.test"
REGION = "us-east-1"


@contextmanager
def moto_account() -> Iterator[None]:
    """An empty in-process moto account whose DynamoDB (and its streams) behaves like the service."""
    withdraw_cancelled_stream_records()  # moto_atomic's fixes, and cancelled transactions stream nothing
    with mock_aws():
        yield


def provisioned(
    *,
    base_url: str = BASE_URL,
    policy: DuplicatePolicy = DuplicatePolicy.REJECT,
    parameters: Mapping[str, str] | None = None,
) -> tuple[Stack, Settings]:
    """Create the template's resources (inside :func:`moto_account`) and settings for them."""
    stack = provision(load_template(), endpoint_url=None, region=REGION, overrides=parameters or {})
    use_by_default(stack.physical_ids["IndexTable"])
    settings = Settings(
        table_name=stack.physical_ids["IndexTable"],
        bucket_name=stack.physical_ids["InstanceBucket"],
        event_bus_name=stack.physical_ids["EventBus"],
        public_base_url=base_url,
        duplicate_policy=policy,
        limits=Limits(),
    )
    return stack, settings


def stow_service(settings: Settings) -> StowService:
    return StowService.of(settings)


def store_ok(stow: StowService, *payloads: bytes) -> None:
    """Store Part 10 payloads through the ingest service; every one must be stored. Then the
    aggregates are recounted, as AggregatesFunction does a moment after the commits."""
    outcome = stow.store_all([memoryview(p) for p in payloads], study=None)
    assert not outcome.failures, outcome.failures
    settle()
