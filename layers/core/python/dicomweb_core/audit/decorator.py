"""The per-request audit wrapper: exactly one record for each HTTP Lambda invocation.

:func:`audited` wraps a handler so that every invocation, answered or raised, leaves one
record (PS3.15 A.5) built by :func:`~dicomweb_core.audit.requests.http_message` and written
by :func:`~dicomweb_core.audit.sinks.emit`. A handler adds the objects its path does not
name with :func:`note`; the wrapper fills in the patient ID of each primary-store study
from the index, so that the record names the patient (the Patient participant object of the
PS3.15 A.5.3 instance messages) even when the request did not: from a study or series item
the handler read (``index.access.noting_patients``), else by reading the study item.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextvars import ContextVar
from functools import wraps
from typing import Any

from dicomweb_core.audit.message import Subject
from dicomweb_core.audit.requests import http_message
from dicomweb_core.audit.sinks import emit
from dicomweb_core.index.access import Index, noting_patients
from dicomweb_core.index.keys import first_value
from dicomweb_core.observability import logger

# The objects the current invocation noted: emptied before and restored after each by audited.
_noted: ContextVar[tuple[Subject, ...]] = ContextVar("audit_subjects", default=())


def note(subject: Subject) -> None:
    """Add an object the current request touched that its path does not name (STOW bodies)."""
    if subject not in _noted.get():
        _noted.set((*_noted.get(), subject))


_INDEX = Index()  # the function's own table (TABLE_NAME)


def _patient_of(study: str) -> str | None:
    """PatientID (0010,0020) of a study in the primary store's index (None when unknown).

    A failed read is logged and answered with None: the record is written without the
    patient ID rather than not at all."""
    try:
        item = _INDEX.find_study(study, consistent=False)
    except Exception:  # the record is written without it rather than not at all
        logger.exception("audit: the study's patient ID could not be read")
        return None
    if item is None:
        return None
    value = first_value(json.loads(item.dicom_json), "00100020")
    return str(value) if value else None


def audited(
    handler: Callable[[dict[str, Any], Any], dict[str, Any]],
) -> Callable[[dict[str, Any], Any], dict[str, Any]]:
    """Wrap an HTTP Lambda handler so each invocation leaves exactly one audit record.

    A handler that raises is recorded as a 500; a record that cannot be built in full (the
    patient lookup failed) is still written, without the noted objects and patient IDs."""

    @wraps(handler)
    def wrapper(event: dict[str, Any], context: Any) -> dict[str, Any]:
        token = _noted.set(())
        status = 500
        # The patient of a study whose study or series item the handler read is known here.
        with noting_patients() as read:
            try:
                response = handler(event, context)
                status = int(response.get("statusCode", 200))
                return response
            finally:
                subjects = _noted.get()
                _noted.reset(token)
                try:
                    message = http_message(
                        event,
                        status,
                        subjects=subjects,
                        patient_of=lambda study: read.get(study) or _patient_of(study),
                    )
                except Exception:
                    logger.exception("audit record could not be built in full")
                    message = http_message(event, status)  # still one record, without the extras
                emit(message)

    return wrapper
