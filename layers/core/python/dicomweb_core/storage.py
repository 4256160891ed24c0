"""Instance bytes in S3: one object per write of an instance, keyed by validated UIDs.

Every write of an instance (first store or overwrite) gets keys of its own,
``.../instances/{sop}/{write}.dcm`` and its metadata document ``.../{write}.json``: no two
requests ever write the same key, so a losing, failed or concurrent write can neither make
the version the index points at noncurrent (where the lifecycle rule would expire it) nor
replace the metadata that belongs to it. The bucket is versioned for recoverable deletes;
the index records the exact object version each instance points at.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import time
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

DICOM_MEDIA_TYPE = "application/dicom"


def new_write_id() -> str:
    """A name for one write of an instance: time-ordered (hex nanoseconds), then random, so
    the objects of one SOP Instance list oldest first and two writes never share a key."""
    return f"{time.time_ns():016x}{secrets.token_hex(4)}"


def instance_key(study: str, series: str, sop: str, write_id: str) -> str:
    """S3 key of one write of an instance; callers pass UIDs already validated (PS3.5 §9.1)."""
    return f"studies/{study}/series/{series}/instances/{sop}/{write_id}.dcm"


def metadata_key(instance_key: str) -> str:
    """S3 key of the WADO-RS metadata document (built at ingest) of the instance stored
    under ``instance_key``: it belongs to exactly that write. Also right for the layout
    before per-write keys (``.../{sop}.dcm`` beside ``.../{sop}.json``)."""
    return instance_key.removesuffix(".dcm") + ".json"


def series_metadata_key(study: str, series: str, version: str) -> str:
    """S3 key of a series' pre-built metadata document; immutable per series version."""
    return f"cache/metadata/{study}/{series}/{version}.json.gz"


class InstanceStore(Protocol):
    def put(self, key: str, data: bytes, *, sha256_hex: str) -> str | None:
        """Store ``data`` under ``key``; return the new object version id."""

    def delete_version(self, key: str, version_id: str | None) -> None:
        """Remove one version this process wrote and no index item references."""

    def hide(self, key: str) -> None:
        """Make ``key`` noncurrent (a delete marker): its versions stay recoverable until the
        lifecycle rule expires them (``DeletedVersionRetentionDays``)."""

    def put_document(
        self, key: str, body: bytes, *, content_type: str, encoding: str | None = None
    ) -> str | None:
        """Store a derived document (metadata) next to the instances; return its version id."""


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

    def delete_version(self, key: str, version_id: str | None) -> None:
        if version_id is None:  # an unversioned bucket: the key is this write's alone
            self.client.delete_object(Bucket=self.bucket, Key=key)
        else:
            self.client.delete_object(Bucket=self.bucket, Key=key, VersionId=version_id)

    def hide(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)

    def put_document(
        self, key: str, body: bytes, *, content_type: str, encoding: str | None = None
    ) -> str | None:
        arguments: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": key,
            "Body": body,
            "ContentType": content_type,
        }
        if encoding:
            arguments["ContentEncoding"] = encoding
        return self.client.put_object(**arguments).get("VersionId")


class ObjectReader:
    """Reads stored objects, whole or by byte range, and counts what it read."""

    def __init__(self, bucket: str, *, client: Any = None) -> None:
        self.bucket = bucket
        self._client = client
        self.requests = 0
        self.bytes_read = 0

    @cached_property
    def client(self) -> S3Client:
        return self._client or boto3.client("s3")

    def read(
        self, key: str, *, version_id: str | None = None, byte_range: tuple[int, int] | None = None
    ) -> bytes:
        """The object's bytes; ``byte_range`` is (offset, length). Missing → KeyError."""
        arguments: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if version_id:
            arguments["VersionId"] = version_id
        if byte_range is not None:
            offset, length = byte_range
            arguments["Range"] = f"bytes={offset}-{offset + length - 1}"
        try:
            body: bytes = self.client.get_object(**arguments)["Body"].read()
        except self.client.exceptions.NoSuchKey:
            raise KeyError(key) from None
        self.requests += 1
        self.bytes_read += len(body)
        return body

    def exists(self, key: str) -> bool:
        """Whether the object is there now (one HEAD; S3 answers 404 for a missing key only to
        a caller with ``s3:ListBucket`` on its prefix, 403 otherwise, which is raised)."""
        self.requests += 1
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def same_host_url(
        self, key: str, *, version_id: str | None, public_base_url: str, expires_in: int = 300
    ) -> str:
        """A presigned GET of the object, on the API's own host: ``{public base}/{key}?{signature}``.

        CloudFront in front of the API routes these paths (``/studies/*.dcm``,
        ``/bundles/*``) to the bucket's regional endpoint, the host the URL is signed for,
        forwarding the query string and no other header; S3 checks the signature and the
        expiry. Clients that keep their Host header across redirects (dicomweb-client) can
        follow it, unlike a redirect to the bucket's own host."""
        params: dict[str, Any] = {"Key": key}
        if version_id:
            params["VersionId"] = version_id
        return self.same_host_link(
            "get_object", params, public_base_url=public_base_url, expires_in=expires_in
        )

    def same_host_link(
        self, operation: str, params: dict[str, Any], *, public_base_url: str, expires_in: int
    ) -> str:
        """Any presigned S3 operation on one of the bucket's objects (a GET, an upload's
        PUT or part), as a link on the API's own host (CloudFront's bucket behaviors)."""
        url = self._presigner.generate_presigned_url(
            operation, Params={"Bucket": self.bucket, **params}, ExpiresIn=expires_in
        )
        signed = urlsplit(str(url))
        path = signed.path
        if not signed.netloc.startswith(f"{self.bucket}."):  # path-style (a local endpoint)
            path = path.removeprefix(f"/{self.bucket}")
        return f"{public_base_url.rstrip('/')}{path}?{signed.query}"

    @cached_property
    def _presigner(self) -> S3Client:
        """SigV4 URLs; in AWS virtual-hosted on the regional endpoint (CloudFront's S3 origin)."""
        sigv4 = Config(signature_version="s3v4")
        if self._client is not None:  # the caller's endpoint and region
            meta = self._client.meta
            return boto3.client(
                "s3", endpoint_url=meta.endpoint_url, region_name=meta.region_name, config=sigv4
            )
        if os.environ.get("AWS_ENDPOINT_URL"):  # a local endpoint: path-style
            return boto3.client("s3", config=sigv4)
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        return boto3.client(
            "s3",
            region_name=region,
            endpoint_url=f"https://s3.{region}.amazonaws.com",
            config=sigv4.merge(Config(s3={"addressing_style": "virtual"})),
        )


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
