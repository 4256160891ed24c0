"""Invoking the real Lambda handlers in tests: context, handler modules, route keys.

Route keys come from template.yaml's routes, never from a copy of them.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from infra.samtemplate import Route, load_template


class LambdaContext:
    """The parts of the Lambda context the handlers and Powertools read."""

    aws_request_id = "test-request"

    def __init__(self, function: str) -> None:
        spec = load_template().functions()[function]
        self.function_name = function
        self.memory_limit_in_mb = spec.memory
        self.invoked_function_arn = f"arn:aws:lambda:us-east-1:123456789012:function:{function}"
        self._timeout_ms = spec.timeout * 1000

    def get_remaining_time_in_millis(self) -> int:
        return self._timeout_ms


def load_handler(function: str) -> ModuleType:
    """The function's handler module, freshly imported (its cold start runs now)."""
    spec = load_template().functions()[function]
    module_name, _ = spec.handler.rsplit(".", 1)
    location = spec.code_uri / f"{module_name}.py"
    module_spec = importlib.util.spec_from_file_location(f"{function}_{module_name}", location)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def route_for(method: str, path: str) -> Route:
    """The template's route that serves ``method path`` (as API Gateway matches it)."""
    for route in load_template().routes():
        if route.method == method and route.pattern.match(path):
            return route
    raise LookupError(f"no route in template.yaml serves {method} {path}")


def sqs_record(message_id: str, body: Mapping[str, Any], *, queue: str = "local-queue") -> dict[str, Any]:
    """One record of an SQS event source mapping's batch, as Lambda delivers it."""
    return {
        "messageId": message_id,
        "receiptHandle": f"handle-{message_id}",
        "body": json.dumps(body),
        "attributes": {"ApproximateReceiveCount": "1"},
        "messageAttributes": {},
        "md5OfBody": "",
        "eventSource": "aws:sqs",
        "eventSourceARN": f"arn:aws:sqs:us-east-1:123456789012:{queue}",
        "awsRegion": "us-east-1",
    }
