"""X-Ray tracing records timings and calls, never PHI: no response and no error is captured.

Powertools' Tracer puts each decorated function's response and exception into the
subsegment's metadata unless told not to; a QIDO response is a list of patients' names,
IDs and birth dates. The handlers run here exactly as Lambda runs them, with the
environment template.yaml gives them, and a fake trace provider records everything the
tracer hands to X-Ray.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dicomweb_core import audit, config, observability
from infra.datasets.generate import PHI_VALUES, make_phi_rich, to_part10
from infra.samtemplate import load_template
from tests.integration.test_wado_service import wado_event
from tests.lambda_harness import LambdaContext, load_handler
from tests.moto_stack import provisioned, store_ok, stow_service

CAPTURE_SETTINGS = ("POWERTOOLS_TRACER_CAPTURE_RESPONSE", "POWERTOOLS_TRACER_CAPTURE_ERROR")


class RecordingSubsegment:
    """The subsegment interface the tracer writes to, keeping what it is given."""

    def __init__(self, provider: RecordingProvider) -> None:
        self.provider = provider

    def put_metadata(self, key: str, value: Any, namespace: str = "default") -> None:
        self.provider.metadata.append((key, value))

    def put_annotation(self, key: str, value: Any) -> None:
        self.provider.annotations.append((key, value))


class RecordingProvider:
    """Stands in for the X-Ray provider: the subsegments opened and all they were given."""

    def __init__(self) -> None:
        self.subsegments: list[str] = []
        self.metadata: list[tuple[str, Any]] = []
        self.annotations: list[tuple[str, Any]] = []

    @contextlib.contextmanager
    def in_subsegment(self, name: str, **_: Any) -> Iterator[RecordingSubsegment]:
        self.subsegments.append(name)
        yield RecordingSubsegment(self)


def texts(value: Any, depth: int = 0) -> Iterator[str]:
    """Every string a trace value carries, read as X-Ray's serialiser or a reader would:
    nested containers and objects walked, bytes and base64 bodies decoded."""
    if depth > 8:
        return
    if isinstance(value, bytes | bytearray | memoryview):
        yield bytes(value).decode("latin-1")
    elif isinstance(value, str):
        yield value
        with contextlib.suppress(binascii.Error, ValueError):
            yield base64.b64decode(value, validate=True).decode("latin-1")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from texts(item, depth + 1)
    elif isinstance(value, list | tuple | set):
        for item in value:
            yield from texts(item, depth + 1)
    else:
        yield repr(value)
        yield str(value)
        for item in getattr(value, "args", ()):  # an exception's message
            yield from texts(item, depth + 1)
        with contextlib.suppress(TypeError):
            yield from texts(vars(value), depth + 1)


def phi_in(provider: RecordingProvider) -> set[str]:
    found = set()
    for key, value in [*provider.metadata, *provider.annotations]:
        for text in [key, *texts(value)]:
            found.update(phi for phi in PHI_VALUES if phi in text)
    return found


@pytest.fixture
def provider(monkeypatch: pytest.MonkeyPatch) -> RecordingProvider:
    recording = RecordingProvider()
    monkeypatch.setattr(observability.tracer, "provider", recording)
    return recording


def search_all_studies(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, overrides: dict[str, str]
) -> dict[str, Any]:
    """Store a PHI-rich study and search it through the QIDO handler, as Lambda would."""
    stack, settings = provisioned()
    environment = stack.function_environment(load_template().functions()["QidoFunction"])
    for name, value in {**environment, **overrides}.items():
        monkeypatch.setenv(name, value)
    config.settings.cache_clear()
    monkeypatch.setattr(audit.sinks, "sink", lambda: audit.FileSink(tmp_path / "audit.jsonl"))
    store_ok(stow_service(settings), to_part10(make_phi_rich()))
    qido = load_handler("QidoFunction")  # decorators read the environment at cold start
    event = wado_event("/studies")
    event["routeKey"] = event["requestContext"]["routeKey"] = "GET /studies"
    try:
        return qido.handler(event, LambdaContext("QidoFunction"))
    finally:
        config.settings.cache_clear()


def test_a_search_leaves_no_phi_in_trace_metadata(
    aws: None, provider: RecordingProvider, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Given a stored study full of PHI and the QIDO function with its template environment
    # When a client searches all studies
    response = search_all_studies(monkeypatch, tmp_path, {})

    # Then the client gets the patient's attributes
    body = base64.b64decode(response["body"]).decode()
    assert response["statusCode"] == 200
    assert "PID-12345" in body and "Doe^Jane" in body
    # And the handler and the route were traced
    assert any(name.endswith("search_studies") for name in provider.subsegments), provider.subsegments
    assert "## handler" in provider.subsegments
    # But nothing of the patient reached the trace
    assert phi_in(provider) == set()


def test_the_tracer_captures_no_response_even_when_the_environment_asks_for_it(
    aws: None, provider: RecordingProvider, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Given a function environment that asks Powertools to capture responses and errors
    overrides = dict.fromkeys(CAPTURE_SETTINGS, "true")

    # When a client searches all studies
    response = search_all_studies(monkeypatch, tmp_path, overrides)

    # Then the search was traced and answered, but nothing of the patient reached the trace
    assert response["statusCode"] == 200
    assert provider.subsegments
    assert phi_in(provider) == set()


def test_an_error_raised_through_a_traced_method_is_not_captured(
    provider: RecordingProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a traced method, decorated while the environment asks for error capture
    for name in CAPTURE_SETTINGS:
        monkeypatch.setenv(name, "true")

    @observability.tracer.capture_method
    def failing() -> None:
        raise ValueError("no study for PatientID PID-12345 (Doe^Jane)")

    # When it raises an error that quotes the patient
    with pytest.raises(ValueError, match="PID-12345"):
        failing()

    # Then the caller still gets the error, and the trace has its subsegment but not the error
    (subsegment,) = provider.subsegments
    assert subsegment.endswith(".failing")
    assert provider.metadata == []
    assert phi_in(provider) == set()


@pytest.mark.parametrize("setting", ["capture_response", "capture_error"])
def test_asking_the_tracer_to_capture_is_refused(setting: str) -> None:
    # Given the shared tracer
    # When code asks it to capture a response or an error
    # Then it refuses at decoration time, before anything could be traced
    with pytest.raises(ValueError, match="never captured"):
        observability.tracer.capture_method(**{setting: True})
    with pytest.raises(ValueError, match="never captured"):
        observability.tracer.capture_lambda_handler(**{setting: True})


def test_the_trace_keeps_its_annotations(provider: RecordingProvider) -> None:
    # Given a traced Lambda handler
    @observability.tracer.capture_lambda_handler
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        return {"statusCode": 200, "body": json.dumps({"PatientName": "Doe^Jane"})}

    # When it is invoked
    handler({}, LambdaContext("QidoFunction"))

    # Then the cold start is still annotated, but the response is not in the metadata
    assert ("ColdStart", True) in provider.annotations or ("ColdStart", False) in provider.annotations
    assert provider.metadata == []
