"""Environment configuration, parsed and validated once per cold start."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cache


class DuplicatePolicy(StrEnum):
    """What STOW-RS does with a different object that reuses a stored SOP Instance UID."""

    REJECT = "reject"  # keep the original, report failure 0x0111 (default)
    OVERWRITE = "overwrite"  # replace it; same study and series only


class ConfigurationError(RuntimeError):
    """The function's environment is missing or has an invalid setting."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on everything a request can make the server parse (DESIGN: bounded parsing)."""

    max_parts: int = 1000
    max_part_header_bytes: int = 16 * 1024
    max_sequence_depth: int = 32
    max_inflated_bytes: int = 256 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Settings:
    table_name: str
    bucket_name: str
    event_bus_name: str
    public_base_url: str  # empty: derive from the request's host
    duplicate_policy: DuplicatePolicy
    limits: Limits
    event_source: str = "dicomweb"  # the research store publishes as dicomweb.deid

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Settings:
        missing = [name for name in ("TABLE_NAME", "BUCKET_NAME", "EVENT_BUS_NAME") if not environ.get(name)]
        if missing:
            raise ConfigurationError(f"missing environment variables: {', '.join(missing)}")
        policy = environ.get("DUPLICATE_POLICY", DuplicatePolicy.REJECT.value)
        try:
            duplicate_policy = DuplicatePolicy(policy)
        except ValueError:
            allowed = ", ".join(p.value for p in DuplicatePolicy)
            raise ConfigurationError(f"DUPLICATE_POLICY must be one of {allowed}") from None
        return cls(
            table_name=environ["TABLE_NAME"],
            bucket_name=environ["BUCKET_NAME"],
            event_bus_name=environ["EVENT_BUS_NAME"],
            public_base_url=environ.get("PUBLIC_BASE_URL", "").rstrip("/"),
            duplicate_policy=duplicate_policy,
            limits=Limits(),
            event_source=environ.get("EVENT_SOURCE", "dicomweb"),
        )


@cache
def settings() -> Settings:
    """The settings of this process, read from ``os.environ`` on first use."""
    return Settings.from_environ(os.environ)
