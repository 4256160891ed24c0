"""What a service answers, free of any web framework: status, headers, body.

Services (STOW, QIDO, WADO, DELETE) take a parsed request value and return a
:class:`Reply`; only the edge (``entry.api.respond``) turns it into an API Gateway response.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

DICOM_JSON = "application/dicom+json"
SERVICE_NAME = "dicomweb"


@dataclass(frozen=True, slots=True)
class Reply:
    status: int = int(HTTPStatus.OK)
    body: bytes | str = b""
    content_type: str | None = None
    headers: Mapping[str, str | list[str]] = field(default_factory=dict)


def dicom_json_reply(
    status: int, payload: Any, *, headers: Mapping[str, str | list[str]] | None = None
) -> Reply:
    """A DICOM JSON (PS3.18 Annex F) answer."""
    body = json.dumps(payload, separators=(",", ":"))
    return Reply(int(status), body, DICOM_JSON, dict(headers or {}))


def warning_value(text: str) -> str:
    """A ``Warning: 299`` header value (PS3.18 §8.3.4.3) that cannot inject headers."""
    safe = "".join(ch if 32 <= ord(ch) < 127 and ch != '"' else " " for ch in text)
    return f'299 {SERVICE_NAME} "{safe[:200]}"'
