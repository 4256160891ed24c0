"""The write paths' invariants (docs/write-safety.md), checked against moto's S3 and DynamoDB.

Every fault and race test ends by calling :func:`check`; it reads everything back the way
a retrieval would, and also the raw object versions that a lifecycle rule acts on.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Collection, Mapping
from typing import Any

from dicomweb_core.config import Limits
from dicomweb_core.dicom.instance import read_instance
from dicomweb_core.index.models import (
    DeletedStudyItem,
    IndexItem,
    InstanceItem,
    SeriesItem,
    SopItem,
    StudyItem,
    study_pk,
)
from dicomweb_core.storage import metadata_key
from tests.streams import settle

DELETED_PREFIXES = ("studies/{study}/", "cache/metadata/{study}/", "bundles/{study}/")


def check(
    s3: Any,
    bucket: str,
    *,
    acknowledged: Mapping[str, Collection[bytes]],
    deleted: Collection[str] = (),
    leaks: bool = False,
) -> None:
    """Assert the invariants over the whole store.

    ``acknowledged``: each SOP Instance UID a client was told is stored, with the contents
    it may read back as (one, or the acknowledged candidates of racing overwrites).
    ``deleted``: studies whose DELETE was answered 204. ``leaks``: a request died without an
    answer, or a best-effort cleanup after its commit failed, so unreferenced objects may
    remain (they are never read)."""
    claims = {_sop_uid(i): i for i in SopItem.scan() if isinstance(i, SopItem)}
    indexed = [i for i in InstanceItem.scan() if isinstance(i, InstanceItem)]
    duplicated = [sop for sop, n in Counter(i.sop_uid for i in indexed).items() if n > 1]
    assert not duplicated, f"SOP Instance UIDs indexed in two places: {duplicated}"
    instances = {i.sop_uid: i for i in indexed}
    for sop, instance in instances.items():
        claim = claims.get(sop)
        assert claim is not None, f"instance {sop} is indexed without its SOP claim"
        assert (claim.study_uid, claim.series_uid) == (instance.study_uid, instance.series_uid), (
            f"instance {sop} is indexed in another place than its SOP claim names"
        )
    if not leaks:
        unused = sorted(set(claims) - set(instances))
        assert not unused, f"refused or failed writes left SOP claims with no instance: {unused}"
    for sop, contents in acknowledged.items():
        assert sop in instances, f"acknowledged instance {sop} is not in the index"
        _readable_at_indexed_version(s3, bucket, instances[sop], contents)
    referenced = {i.s3_key for i in instances.values()}
    referenced |= {metadata_key(k) for k in referenced}
    for study in {i.study_uid for i in instances.values()}:
        _counts_exact(study)
    for study in deleted:
        _nothing_survives(s3, bucket, study, claims.values())
    if not leaks:
        unreferenced = set(_current_keys(s3, bucket, "studies/")) - referenced
        assert not unreferenced, f"refused or failed writes left current objects: {sorted(unreferenced)}"


def _readable_at_indexed_version(
    s3: Any, bucket: str, instance: InstanceItem, contents: Collection[bytes]
) -> None:
    key, version = instance.s3_key, instance.s3_version_id
    body = s3.get_object(Bucket=bucket, Key=key, VersionId=version)["Body"].read()
    assert body in contents, "the indexed version is not an acknowledged content"
    assert _latest(s3, bucket, key) == version, "the indexed version is noncurrent"
    document_key = metadata_key(key)
    document = json.loads(s3.get_object(Bucket=bucket, Key=document_key)["Body"].read())
    assert document == read_instance(memoryview(body), limits=Limits()).metadata, (
        "the metadata document does not belong to the indexed bytes"
    )


def _latest(s3: Any, bucket: str, key: str) -> str | None:
    listing = s3.list_object_versions(Bucket=bucket, Prefix=key)
    entries = [v for v in listing.get("Versions", []) + listing.get("DeleteMarkers", []) if v["Key"] == key]
    latest = [v for v in entries if v["IsLatest"]]
    assert len(latest) == 1
    return None if latest[0] in listing.get("DeleteMarkers", []) else latest[0]["VersionId"]


def _counts_exact(study: str) -> None:
    settle()  # the aggregates, as AggregatesFunction leaves them a moment after the writes
    items = list(IndexItem.query(study_pk(study), consistent_read=True))
    instances = [i for i in items if isinstance(i, InstanceItem)]
    series = [i for i in items if isinstance(i, SeriesItem)]
    (study_item,) = [i for i in items if isinstance(i, StudyItem)]
    assert study_item.deleting is None, "a study is left marked as being deleted"
    assert int(study_item.instance_count) == len(instances), "the study's instance count is off"
    assert int(study_item.series_count) == len(series), "the study's series count is off"
    per_series = Counter(i.series_uid for i in instances)
    for item in series:
        assert int(item.instance_count) == per_series[item.series_uid], "a series' instance count is off"


def _nothing_survives(s3: Any, bucket: str, study: str, claims: Collection[SopItem]) -> None:
    kinds = {type(i) for i in IndexItem.query(study_pk(study), consistent_read=True)}
    assert kinds <= {DeletedStudyItem}, f"index items of a deleted study survive: {kinds}"
    tombstone = DeletedStudyItem.get(*DeletedStudyItem.key(study), consistent_read=True)
    assert tombstone.deleting is None, "the tombstone still says a DELETE is under way"
    assert not [i for i in claims if i.study_uid == study], "SOP claims of a deleted study survive"
    for prefix in DELETED_PREFIXES:
        current = _current_keys(s3, bucket, prefix.format(study=study))
        assert not current, f"objects of a deleted study are current: {current}"


def _current_keys(s3: Any, bucket: str, prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def _sop_uid(item: SopItem) -> str:
    return item.pk.removeprefix("SOP#")
