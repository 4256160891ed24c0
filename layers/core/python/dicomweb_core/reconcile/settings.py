"""The reconciliation job's settings, parsed and validated once per cold start."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from dicomweb_core.config import ConfigurationError

# Longer than any Lambda invocation can run (15 minutes): an object older than this is not
# the first half of a write still under way, whichever function writes it.
MIN_GRACE = timedelta(minutes=15)
DEFAULT_GRACE = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class ReconcileSettings:
    """How far one run goes.

    ``grace``: objects written more recently are left alone (a write puts its objects
    before it indexes them). ``max_objects``: keys listed per run; ``max_scanned_items``:
    index items a run's Scan reads (of every kind: the filter on instance items and claims applies after
    the read). ``listed``: findings of each kind named in the report object, beyond which
    only their count is given."""

    grace: timedelta = DEFAULT_GRACE
    max_objects: int = 200_000
    max_scanned_items: int = 200_000
    listed: int = 1000

    def __post_init__(self) -> None:
        if self.grace < MIN_GRACE:
            raise ConfigurationError(
                f"RECONCILE_GRACE_SECONDS must be at least {int(MIN_GRACE.total_seconds())}: an object "
                "younger than the longest write may belong to a write still under way."
            )
        for name in ("max_objects", "max_scanned_items", "listed"):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"the reconciliation's {name} must be a positive number")

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> ReconcileSettings:
        """``RECONCILE_GRACE_SECONDS``, ``RECONCILE_MAX_OBJECTS``, ``RECONCILE_MAX_SCANNED_ITEMS``."""
        defaults = cls()
        return cls(
            grace=timedelta(
                seconds=_number(environ, "RECONCILE_GRACE_SECONDS", int(defaults.grace.total_seconds()))
            ),
            max_objects=_number(environ, "RECONCILE_MAX_OBJECTS", defaults.max_objects),
            max_scanned_items=_number(environ, "RECONCILE_MAX_SCANNED_ITEMS", defaults.max_scanned_items),
        )


def _number(environ: Mapping[str, str], name: str, default: int) -> int:
    text = environ.get(name, "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise ConfigurationError(f"{name} must be a whole number, not {text[:20]!r}") from None
