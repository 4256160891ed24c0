"""Read template.yaml: the single source of truth for routes, functions and resources.

The local runtime builds its routing table, authorizer and resources from this module,
and the tests read routes and tables through it instead of repeating them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, cast

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
TEMPLATE_PATH = REPO_ROOT / "template.yaml"


class _CloudFormationLoader(yaml.SafeLoader):
    """A YAML loader that turns CloudFormation short-form tags into their long form."""


def _construct_intrinsic(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = "Ref" if tag_suffix == "Ref" else f"Fn::{tag_suffix}"
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if name == "Fn::GetAtt" and isinstance(value, str):
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {name: value}


_CloudFormationLoader.add_multi_constructor("!", _construct_intrinsic)


@dataclass(frozen=True)
class Route:
    """One HTTP API route of a function (an `HttpApi` event in template.yaml)."""

    method: str
    path: str  # SAM form, e.g. /studies/{study}
    function: str  # logical id
    scopes: tuple[str, ...]
    authorizer: str | None

    @property
    def route_key(self) -> str:
        return f"{self.method} {self.path}"

    @property
    def pattern(self) -> re.Pattern[str]:
        """A regex matching concrete paths; one named group per path parameter."""
        regex = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(self.path))
        return re.compile(f"^{regex}$")


@dataclass(frozen=True)
class QueueSource:
    """An SQS event source of a function (an `SQS` event in template.yaml)."""

    function: str
    queue: str  # logical id of the AWS::SQS::Queue
    batch_size: int
    reports_failures: bool


@dataclass(frozen=True)
class StreamSource:
    """A DynamoDB stream event source of a function (a `DynamoDB` event in template.yaml)."""

    function: str
    table: str  # logical id of the AWS::DynamoDB::Table whose stream it reads
    batch_size: int
    starting_position: str  # TRIM_HORIZON | LATEST
    batching_window_s: float
    maximum_retry_attempts: int  # -1: until the records expire
    bisect_on_error: bool
    reports_failures: bool
    on_failure: str | None  # logical id of the AWS::SQS::Queue failed batches are recorded in


@dataclass(frozen=True)
class ScheduleSource:
    """A schedule that invokes a function: an ``AWS::Scheduler::Schedule`` whose target is
    the function's ARN, or a SAM ``ScheduleV2``/``Schedule`` event of the function."""

    name: str  # logical id of the schedule (or of the function's event)
    function: str  # logical id of the function
    expression: Any  # ScheduleExpression as written (may be a Ref to a parameter)
    input: str | None  # the JSON the target receives (Target.Input / the event's Input)
    enabled: bool


@dataclass(frozen=True)
class FunctionSpec:
    logical_id: str
    code_uri: Path
    handler: str
    timeout: int
    memory: int
    environment: Mapping[str, Any]
    layers: tuple[str, ...]


@dataclass(frozen=True)
class Template:
    raw: Mapping[str, Any]

    @property
    def resources(self) -> Mapping[str, Any]:
        return cast(Mapping[str, Any], self.raw["Resources"])

    @property
    def parameters(self) -> Mapping[str, Any]:
        return cast(Mapping[str, Any], self.raw.get("Parameters", {}))

    def resources_of_type(self, resource_type: str) -> dict[str, Mapping[str, Any]]:
        return {name: res for name, res in self.resources.items() if res["Type"] == resource_type}

    def parameter_default(self, name: str) -> Any:
        return self.parameters[name].get("Default")

    @property
    def global_function(self) -> Mapping[str, Any]:
        return cast(Mapping[str, Any], self.raw.get("Globals", {}).get("Function", {}))

    def functions(self) -> dict[str, FunctionSpec]:
        globals_ = self.global_function
        specs = {}
        for name, res in self.resources_of_type("AWS::Serverless::Function").items():
            props = res["Properties"]
            env = dict(globals_.get("Environment", {}).get("Variables", {}))
            env.update(props.get("Environment", {}).get("Variables", {}))
            layers = [*globals_.get("Layers", []), *props.get("Layers", [])]
            specs[name] = FunctionSpec(
                logical_id=name,
                code_uri=REPO_ROOT / props["CodeUri"],
                handler=props.get("Handler", globals_.get("Handler", "app.handler")),
                timeout=int(props.get("Timeout", globals_.get("Timeout", 3))),
                memory=int(props.get("MemorySize", globals_.get("MemorySize", 128))),
                environment=env,
                layers=tuple(layer["Ref"] for layer in layers),
            )
        return specs

    def layer_dirs(self) -> dict[str, Path]:
        return {
            name: REPO_ROOT / res["Properties"]["ContentUri"]
            for name, res in self.resources_of_type("AWS::Serverless::LayerVersion").items()
        }

    def http_api(self) -> Mapping[str, Any]:
        (api,) = self.resources_of_type("AWS::Serverless::HttpApi").values()
        return cast(Mapping[str, Any], api["Properties"])

    def jwt_configuration(self, authorizer: str | None = None) -> Mapping[str, Any]:
        """The JwtConfiguration (issuer, audience) of an HttpApi authorizer, unresolved."""
        auth = self.http_api()["Auth"]
        name = authorizer or auth["DefaultAuthorizer"]
        return cast(Mapping[str, Any], auth["Authorizers"][name]["JwtConfiguration"])

    def queue_sources(self) -> list[QueueSource]:
        sources = []
        for name, res in self.resources_of_type("AWS::Serverless::Function").items():
            for event in res["Properties"].get("Events", {}).values():
                if event["Type"] != "SQS":
                    continue
                props = event["Properties"]
                queue = props["Queue"]
                logical = queue["Fn::GetAtt"][0] if isinstance(queue, dict) else str(queue)
                sources.append(
                    QueueSource(
                        function=name,
                        queue=logical,
                        batch_size=int(props.get("BatchSize", 10)),
                        reports_failures="ReportBatchItemFailures" in props.get("FunctionResponseTypes", []),
                    )
                )
        return sources

    def stream_sources(self) -> list[StreamSource]:
        sources = []
        for name, res in self.resources_of_type("AWS::Serverless::Function").items():
            for event in res["Properties"].get("Events", {}).values():
                if event["Type"] != "DynamoDB":
                    continue
                props = event["Properties"]
                on_failure = props.get("DestinationConfig", {}).get("OnFailure", {}).get("Destination")
                sources.append(
                    StreamSource(
                        function=name,
                        table=_logical_id(props["Stream"]),
                        batch_size=int(props.get("BatchSize", 100)),
                        starting_position=str(props["StartingPosition"]),
                        batching_window_s=float(props.get("MaximumBatchingWindowInSeconds", 0)),
                        maximum_retry_attempts=int(props.get("MaximumRetryAttempts", -1)),
                        bisect_on_error=bool(props.get("BisectBatchOnFunctionError", False)),
                        reports_failures="ReportBatchItemFailures" in props.get("FunctionResponseTypes", []),
                        on_failure=_logical_id(on_failure) if on_failure is not None else None,
                    )
                )
        return sources

    def schedule_sources(self) -> list[ScheduleSource]:
        """Every schedule that invokes one of the template's functions."""
        functions = set(self.resources_of_type("AWS::Serverless::Function"))
        sources = []
        for name, res in self.resources_of_type("AWS::Scheduler::Schedule").items():
            props = res["Properties"]
            target = props["Target"]
            arn = target.get("Arn")
            if not (isinstance(arn, dict) and "Fn::GetAtt" in arn and arn["Fn::GetAtt"][0] in functions):
                continue
            sources.append(
                ScheduleSource(
                    name=name,
                    function=arn["Fn::GetAtt"][0],
                    expression=props["ScheduleExpression"],
                    input=target.get("Input"),
                    enabled=props.get("State", "ENABLED") == "ENABLED",
                )
            )
        for function in sorted(functions):
            events = self.resources[function]["Properties"].get("Events", {})
            for event_name, event in events.items():
                if event["Type"] not in ("ScheduleV2", "Schedule"):
                    continue
                props = event["Properties"]
                state = props.get("State", "ENABLED" if props.get("Enabled", True) else "DISABLED")
                expression = props.get("ScheduleExpression", props.get("Schedule"))  # V2, V1
                sources.append(
                    ScheduleSource(
                        name=f"{function}{event_name}",
                        function=function,
                        expression=expression,
                        input=props.get("Input"),
                        enabled=state == "ENABLED",
                    )
                )
        return sources

    def routes(self) -> list[Route]:
        default_authorizer = self.http_api().get("Auth", {}).get("DefaultAuthorizer")
        routes = []
        for name, res in self.resources_of_type("AWS::Serverless::Function").items():
            for event in res["Properties"].get("Events", {}).values():
                if event["Type"] != "HttpApi":
                    continue
                props = event["Properties"]
                auth = props.get("Auth", {})
                authorizer = auth.get("Authorizer", default_authorizer)
                routes.append(
                    Route(
                        method=props["Method"].upper(),
                        path=props["Path"],
                        function=name,
                        scopes=tuple(auth.get("AuthorizationScopes", ())),
                        authorizer=None if authorizer == "NONE" else authorizer,
                    )
                )
        return routes


def _logical_id(reference: Any) -> str:
    """The resource a `!GetAtt Resource.Attribute` or `!Ref Resource` names."""
    if isinstance(reference, dict) and "Fn::GetAtt" in reference:
        return str(reference["Fn::GetAtt"][0])
    if isinstance(reference, dict) and "Ref" in reference:
        return str(reference["Ref"])
    return str(reference)


@dataclass(frozen=True)
class ObjectRoute:
    """A CloudFront cache behavior that serves a bucket's objects by presigned URL."""

    path_pattern: str  # CloudFront form: * matches any characters, / included
    bucket: str  # logical id
    methods: frozenset[str] = frozenset({"GET", "HEAD"})  # the behavior's AllowedMethods

    @property
    def pattern(self) -> re.Pattern[str]:
        return re.compile("^" + re.escape(self.path_pattern).replace(r"\*", ".*") + "$")


def object_routes(template: Template) -> list[ObjectRoute]:
    """The distribution's behaviors whose origin is one of the template's buckets."""
    routes = []
    for distribution in template.resources_of_type("AWS::CloudFront::Distribution").values():
        config = distribution["Properties"]["DistributionConfig"]
        origins = {origin["Id"]: origin for origin in config["Origins"]}
        for behavior in config.get("CacheBehaviors", []):
            origin = origins[behavior["TargetOriginId"]]
            if "S3OriginConfig" in origin:
                bucket = origin["DomainName"]["Fn::GetAtt"][0]
                methods = frozenset(behavior.get("AllowedMethods", ("GET", "HEAD")))
                routes.append(ObjectRoute(behavior["PathPattern"], bucket, methods))
    return routes


@cache
def load_template(path: Path = TEMPLATE_PATH) -> Template:
    with open(path, encoding="utf-8") as fh:
        return Template(yaml.load(fh, Loader=_CloudFormationLoader))  # noqa: S506 (safe loader subclass)
