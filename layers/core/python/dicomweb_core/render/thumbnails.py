"""Thumbnails kept in S3: generated once per content version, read back afterwards (PS3.18 §10.4.4).

A thumbnail's key names what it shows and the version of that content:

``cache/thumbnails/{study}/{series|-}/{instance|-}/{frame-N|-}/{version}/{parameters}.{jpeg|png|gif}``

where the version is the instance's checksum for an instance or frame, the series'
content version for a series and the study's for a study (``index.models.content_version``:
it changes whenever an instance is added or replaced). A series that changes therefore
gets new thumbnails, and its older ones are never read again. The key is built from
validated UIDs and parsed parameters only. ``DELETE /studies/{study}`` removes the
study's ``cache/thumbnails/{study}/`` prefix with its other objects.

The render function may write here and nowhere else (template.yaml).
"""

from __future__ import annotations

from dicomweb_core.render.images import RenderedType
from dicomweb_core.render.parameters import RenderParameters
from dicomweb_core.storage import InstanceStore, ObjectReader
from dicomweb_core.web.uri import DicomWebURI

PREFIX = "cache/thumbnails"


def thumbnail_key(
    uri: DicomWebURI,
    version: str,
    parameters: RenderParameters,
    media_type: RenderedType,
    *,
    frame: int | None = None,
) -> str:
    """Where the thumbnail of a resource version lives (``frame``: the frame of a frame list)."""
    assert uri.study is not None
    levels = [uri.study, uri.series or "-", uri.instance or "-", f"frame-{frame}" if frame else "-"]
    return f"{PREFIX}/{'/'.join(levels)}/{version}/{parameters.tag}.{media_type.extension}"


class ThumbnailStore:
    """Reads and writes thumbnails in the instance bucket."""

    def __init__(self, reader: ObjectReader, writer: InstanceStore) -> None:
        self.reader = reader
        self.writer = writer

    def get(self, key: str) -> bytes | None:
        """The kept thumbnail, or None when it has not been generated yet."""
        try:
            return self.reader.read(key)
        except KeyError:
            return None

    def put(self, key: str, body: bytes, media_type: RenderedType) -> None:
        self.writer.put_document(key, body, content_type=media_type.value)
