"""Instance bytes in S3: one object per instance, keyed by validated UIDs.

The bucket is versioned; the index records the exact version each instance points at,
so a concurrent or repeated upload of the same key can never change what an
acknowledged instance reads back as.
"""

from __future__ import annotations

import base64
import hashlib
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol

import boto3

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

DICOM_MEDIA_TYPE = "application/dicom"


def instance_key(study: str, series: str, sop: str) -> str:
    """S3 key of an instance; callers pass UIDs already validated (PS3.5 §9.1)."""
    return f"studies/{study}/series/{series}/instances/{sop}.dcm"


class InstanceStore(Protocol):
    def put(self, key: str, data: bytes, *, sha256_hex: str) -> str | None:
        """Store ``data`` under ``key``; return the new object version id."""

    def delete_version(self, key: str, version_id: str) -> None:
        """Remove one version this process wrote and no index item references."""


class S3InstanceStore:
    """The S3 implementation of :class:`InstanceStore`."""

    def __init__(self, bucket: str, *, client: Any = None) -> None:
        self.bucket = bucket
        self._client = client

    @cached_property
    def client(self) -> S3Client:
        return self._client or boto3.client("s3")

    def put(self, key: str, data: bytes, *, sha256_hex: str) -> str | None:
        # S3 verifies the SHA-256 on receipt, so a corrupted upload is refused, not stored.
        checksum = base64.b64encode(bytes.fromhex(sha256_hex)).decode("ascii")
        response = self.client.put_object(
            Bucket=self.bucket,
            Key=key,
            Body=data,
            ContentType=DICOM_MEDIA_TYPE,
            ChecksumSHA256=checksum,
            Metadata={"sha256": sha256_hex},
        )
        return response.get("VersionId")

    def delete_version(self, key: str, version_id: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key, VersionId=version_id)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
