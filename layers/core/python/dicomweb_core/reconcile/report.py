"""What one reconciliation run found and did: the report object, its metrics, its audit records.

The report goes three ways, each for its own reader:

- a JSON object ``reports/reconcile/<start>.json`` in the instance bucket (private like
  every object there; the ``ExpireReconcileReports`` lifecycle rule removes it), naming each
  instance the run indexed, hid, flagged or could not repair, for whoever investigates;
- CloudWatch metrics (Powertools EMF), one per count, which the ``ReconcileMissingObjects``
  alarm watches;
- PS3.15 audit records, one per study and kind of action, for the audit trail.

Why DICOM Instances Accessed (PS3.15 A.5.3.6, EventID 110103): it is the message for SOP
Instances being "utilized, updated, or deleted", with an EventActionCode saying which, and
each message is about a single patient. Application Activity (A.5.3.1) only says that an
application started or stopped, and names no instance. So each record names one study (one
patient) and the instances the run touched there: ``U`` for instances it made findable
again (their index entry was written), ``D`` for leftover objects it hid (recoverable delete
markers), ``R`` with a serious-failure outcome for indexed instances whose object is
missing, ``U`` with a minor-failure outcome for objects it could not index. A run that
changed and found nothing writes no record; its report and metrics still say it ran.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from aws_lambda_powertools import Metrics
from aws_lambda_powertools.metrics import MetricUnit

from dicomweb_core import audit
from dicomweb_core.audit.message import participants_of

REPORT_PREFIX = "reports/reconcile/"


@dataclass(frozen=True, slots=True)
class Finding:
    """One instance the run acted on or flagged: where it is, and what the run saw."""

    study: str
    series: str
    sop: str
    key: str  # the object this finding is about
    detail: str = ""  # the indexed object's key, a missing object's state, a refusal's reason
    patient_id: str | None = None  # known for instances the run indexed (primary store only)

    def to_json(self) -> dict[str, Any]:
        document = asdict(self)
        document.pop("patient_id")  # the report names instances, not patients
        return {k: v for k, v in document.items() if v}

    @property
    def subject(self) -> audit.Subject:
        return audit.Subject(self.study, self.series, self.sop, self.patient_id)


# Missing objects: the index names a version that is noncurrent (a delete marker hides it,
# or a later version replaced it; recoverable until the lifecycle rule expires it), or one
# that no longer exists at all.
NONCURRENT = "noncurrent"
GONE = "gone"


@dataclass(slots=True)
class Report:
    """The counts and findings of one run (also what the job returns)."""

    started: datetime
    trigger: str
    grace_seconds: int
    listed: int = 1000
    objects_scanned: int = 0  # keys listed under studies/
    instances_checked: int = 0  # instance objects old enough to be checked against the index
    young: int = 0  # instance objects within the grace period, left for a later run
    unrecognised: int = 0  # keys that are not an instance object nor its metadata document
    entries_scanned: int = 0  # instance items whose object was checked
    items_read: int = 0  # index items the Scan read (every kind)
    errors: int = 0  # objects or items whose check failed; the next pass tries again
    indexed: list[Finding] = field(default_factory=list)
    hidden: list[Finding] = field(default_factory=list)
    missing: list[Finding] = field(default_factory=list)
    released: list[Finding] = field(default_factory=list)  # SOP claims that never got an instance
    left_to_delete: list[Finding] = field(default_factory=list)
    refused: list[Finding] = field(default_factory=list)
    objects_pass_complete: bool = False  # the listing reached the end: the next run starts over
    entries_pass_complete: bool = False
    finished: datetime | None = None
    resume: dict[str, Any] = field(default_factory=dict)
    key: str | None = None  # where the report object was written

    @property
    def changed(self) -> bool:
        """Did the run write anything to the index or hide anything?"""
        return bool(self.indexed or self.hidden or self.released)

    def to_json(self) -> dict[str, Any]:
        return {
            "started": _iso(self.started),
            "finished": _iso(self.finished) if self.finished else None,
            "trigger": self.trigger,
            "graceSeconds": self.grace_seconds,
            "objects": {
                "scanned": self.objects_scanned,
                "instancesChecked": self.instances_checked,
                "young": self.young,
                "unrecognised": self.unrecognised,
                "passComplete": self.objects_pass_complete,
                "indexed": self._listing(self.indexed),
                "hiddenLeftovers": self._listing(self.hidden),
                "leftToDelete": self._listing(self.left_to_delete),
                "refused": self._listing(self.refused),
            },
            "indexEntries": {
                "scanned": self.entries_scanned,
                "itemsRead": self.items_read,
                "passComplete": self.entries_pass_complete,
                "missingObjects": self._listing(self.missing),
                "claimsReleased": self._listing(self.released),
            },
            "errors": self.errors,
            "resume": self.resume,
        }

    def body(self) -> bytes:
        return json.dumps(self.to_json(), indent=1).encode()

    def _listing(self, findings: list[Finding]) -> dict[str, Any]:
        listing: dict[str, Any] = {
            "count": len(findings),
            "instances": [f.to_json() for f in findings[: self.listed]],
        }
        if len(findings) > self.listed:
            listing["notListed"] = len(findings) - self.listed
        return listing

    def add_metrics(self, metrics: Metrics) -> None:
        """One metric per count (Powertools EMF, flushed by the handler's ``log_metrics``)."""
        for name, value in self.counts().items():
            metrics.add_metric(f"Reconcile{name}", MetricUnit.Count, value)

    def counts(self) -> dict[str, int]:
        return {
            "ObjectsScanned": self.objects_scanned,
            "IndexEntriesScanned": self.entries_scanned,
            "InstancesIndexed": len(self.indexed),
            "LeftoversHidden": len(self.hidden),
            "MissingObjects": len(self.missing),
            "ClaimsReleased": len(self.released),
            "LeftToDelete": len(self.left_to_delete),
            "Refused": len(self.refused),
            "Errors": self.errors,
        }

    def audit_records(self) -> Iterator[dict[str, Any]]:
        """PS3.15 A.5.3.6 records, one per study and kind of action (see the module docstring)."""
        kinds = (
            (self.indexed, "U", audit.Outcome.SUCCESS, _INDEXED),
            (self.hidden, "D", audit.Outcome.SUCCESS, _HIDDEN),
            (self.missing, "R", audit.Outcome.SERIOUS_FAILURE, _MISSING),
            (self.refused, "U", audit.Outcome.MINOR_FAILURE, _REFUSED),
            (self.released, "D", audit.Outcome.SUCCESS, _RELEASED),
        )
        for findings, action, outcome, description in kinds:
            by_study: dict[str, list[Finding]] = {}
            for finding in findings:
                by_study.setdefault(finding.study, []).append(finding)
            for group in by_study.values():
                yield audit.record(
                    audit.AuditEvent.INSTANCES_ACCESSED,
                    action=action,
                    outcome=outcome,
                    requestor=audit.SYSTEM,
                    objects=participants_of(f.subject for f in group),
                    description=f"{description} ({len(group)} instances)",
                    extra={"ReconcileReport": self.key} if self.key else None,
                )


_INDEXED = "reconciliation indexed instances stored without an index entry (the index write was lost)"
_HIDDEN = (
    "reconciliation hid leftover objects of instances indexed at another object "
    "(delete markers: recoverable for the retention period)"
)
_MISSING = "reconciliation found indexed instances whose object is missing; the index was left as it was"
_REFUSED = "reconciliation could not index objects stored without an index entry; they were left in place"

_RELEASED = (
    "reconciliation released SOP Instance UID claims of writes that failed before their commit "
    "(no instance was stored under them)"
)


def report_key(started: datetime) -> str:
    """``reports/reconcile/<start, ISO 8601 basic, UTC, to the microsecond>.json``."""
    return f"{REPORT_PREFIX}{started:%Y%m%dT%H%M%S.%fZ}.json"


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")
