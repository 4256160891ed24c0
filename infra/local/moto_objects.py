"""Objects read straight from the moto server that runs in this process.

The local gateway's object proxy plays CloudFront in front of the bucket. Fetching a large
body from moto over HTTP costs a second trip through a web server and a client on the
same two cores (a 200 MB series body is read, framed, sent and read again), which the
cloud does not pay: there CloudFront streams it from S3. So, once the proxy has checked
a link's signature and expiry, a plain GET is answered from moto's own memory; anything
else (a missing key, a delete marker, a range, an upload) still goes to moto over HTTP
and gets S3's own answer. Never deployed.
"""

from __future__ import annotations

from dataclasses import dataclass

from moto.s3.models import FakeKey, s3_backends

from infra.local.provision import ACCOUNT_ID

_PARTITION = "aws"


@dataclass(frozen=True, slots=True)
class StoredBody:
    """A current object as S3's GetObject answers it: its headers and bytes."""

    headers: dict[str, str]
    body: bytes


def read_object(bucket: str, key: str, version_id: str | None) -> StoredBody | None:
    """The object (that version, or the current one), None when moto would answer anything
    but 200 with the whole object (absent, a delete marker, no such bucket)."""
    backend = s3_backends[ACCOUNT_ID][_PARTITION]
    if bucket not in backend.buckets:
        return None
    found = backend.get_object(bucket, key, version_id=version_id)
    if not isinstance(found, FakeKey):
        return None
    headers = {
        "content-type": str(found.metadata.get("content-type") or "binary/octet-stream"),
        "etag": found.etag,
        "last-modified": found.last_modified_RFC1123,
    }
    if found.version_id and found.version_id != "null":
        headers["x-amz-version-id"] = str(found.version_id)
    return StoredBody(headers, found.value)
