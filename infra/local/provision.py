"""Create template.yaml's resources in moto and resolve the functions' environment.

Only what the local runtime needs is translated (buckets, tables, buses, queues, rules,
the Cognito pool, resource server and app clients); the property names are read from
the template itself, so a table's keys or indexes are never written twice.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.exceptions import ClientError

from infra.samtemplate import FunctionSpec, Template

ACCOUNT_ID = "123456789012"
STACK_NAME = "local"

_TABLE_PROPERTIES = (
    "AttributeDefinitions",
    "KeySchema",
    "GlobalSecondaryIndexes",
    "LocalSecondaryIndexes",
    "BillingMode",
)


@dataclass
class Stack:
    """Physical ids and attributes of the provisioned resources, by logical id."""

    template: Template
    region: str
    endpoint_url: str | None
    parameters: dict[str, str]
    physical_ids: dict[str, str] = field(default_factory=dict)
    attributes: dict[str, dict[str, str]] = field(default_factory=dict)

    def client(self, service: str) -> Any:
        return boto3.client(service, endpoint_url=self.endpoint_url, region_name=self.region)  # type: ignore[call-overload]

    # ------------------------------------------------------------ intrinsic functions
    def resolve(self, value: Any) -> Any:
        """Evaluate Ref, Fn::GetAtt, Fn::Sub, Fn::If, Fn::Join against this stack."""
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        if not isinstance(value, dict):
            return value
        if len(value) != 1:
            return {k: self.resolve(v) for k, v in value.items()}
        ((name, arg),) = value.items()
        match name:
            case "Ref":
                return self._ref(arg)
            case "Fn::GetAtt":
                return self.attributes[arg[0]][arg[1]]
            case "Fn::Sub":
                return self._sub(arg)
            case "Fn::If":
                condition, when_true, when_false = arg
                return self.resolve(when_true if self.condition(condition) else when_false)
            case "Fn::Join":
                separator, items = arg
                resolved = self.resolve(items)  # a list, or a Ref to a CommaDelimitedList
                return separator.join(str(self.resolve(i)) for i in resolved)
            case _:
                return {name: self.resolve(arg)}

    def condition(self, name: str) -> bool:
        return bool(self._evaluate(self.template.raw["Conditions"][name]))

    def _evaluate(self, expression: Any) -> Any:
        if isinstance(expression, dict) and len(expression) == 1:
            ((name, arg),) = expression.items()
            if name == "Fn::Equals":
                return self.resolve(arg[0]) == self.resolve(arg[1])
            if name == "Fn::Not":
                return not self._evaluate(arg[0])
            if name == "Fn::And":
                return all(self._evaluate(a) for a in arg)
            if name == "Fn::Or":
                return any(self._evaluate(a) for a in arg)
            if name == "Condition":
                return self.condition(arg)
        return self.resolve(expression)

    def _ref(self, name: str) -> Any:
        pseudo = {
            "AWS::StackName": STACK_NAME,
            "AWS::Region": self.region,
            "AWS::AccountId": ACCOUNT_ID,
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::Partition": "aws",
        }
        if name in pseudo:
            return pseudo[name]
        if name in self.parameters:
            value = self.parameters[name]
            kind = self.template.parameters[name].get("Type", "String")
            return [v.strip() for v in value.split(",")] if kind == "CommaDelimitedList" else value
        return self.physical_ids.get(name, f"{STACK_NAME}-{name}")

    def _sub(self, arg: Any) -> str:
        text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])

        def replace(match: re.Match[str]) -> str:
            ref = match.group(1)
            if ref in variables:
                return str(self.resolve(variables[ref]))
            if "." in ref:
                logical, attribute = ref.split(".", 1)
                return self.attributes[logical][attribute]
            return str(self._ref(ref))

        return re.sub(r"\$\{([^}!]+)\}", replace, text)

    # ------------------------------------------------------------ functions
    def function_environment(self, spec: FunctionSpec) -> dict[str, str]:
        return {name: str(self.resolve(value)) for name, value in spec.environment.items()}


def parameter_values(template: Template, overrides: Mapping[str, str]) -> dict[str, str]:
    values = {}
    for name, spec in template.parameters.items():
        default = spec.get("Default", "")
        values[name] = str(overrides.get(name, default))
    return values


def provision(
    template: Template, *, endpoint_url: str | None, region: str, overrides: Mapping[str, str]
) -> Stack:
    """Create (or find, after a restore) every supported resource of the template in moto."""
    stack = Stack(template, region, endpoint_url, parameter_values(template, overrides))
    for kind, create in _CREATORS:
        for logical_id, resource in template.resources_of_type(kind).items():
            create(stack, logical_id, resource.get("Properties", {}))
    return stack


def _name(logical_id: str) -> str:
    return f"{STACK_NAME}-{logical_id}".lower()


def _arn(stack: Stack, service: str, resource: str) -> str:
    return f"arn:aws:{service}:{stack.region}:{ACCOUNT_ID}:{resource}"


def _bucket(stack: Stack, logical_id: str, props: Mapping[str, Any]) -> None:
    name = _name(logical_id)
    s3 = stack.client("s3")
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if name not in existing:
        s3.create_bucket(Bucket=name)
    if props.get("VersioningConfiguration", {}).get("Status") == "Enabled":
        s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    notifications = _bucket_notifications(stack, props.get("NotificationConfiguration", {}))
    if notifications:  # moto delivers these to its SQS queues, as S3 does
        s3.put_bucket_notification_configuration(Bucket=name, NotificationConfiguration=notifications)
    stack.physical_ids[logical_id] = name
    stack.attributes[logical_id] = {"Arn": f"arn:aws:s3:::{name}"}


def _bucket_notifications(stack: Stack, config: Mapping[str, Any]) -> dict[str, Any]:
    """The template's QueueConfigurations in the API's shape (queues are created first)."""
    queues = []
    for entry in config.get("QueueConfigurations", []):
        rules = entry.get("Filter", {}).get("S3Key", {}).get("Rules", [])
        queue: dict[str, Any] = {"QueueArn": str(stack.resolve(entry["Queue"])), "Events": [entry["Event"]]}
        if rules:
            filter_rules = [{"Name": r["Name"], "Value": r["Value"]} for r in rules]
            queue["Filter"] = {"Key": {"FilterRules": filter_rules}}
        queues.append(queue)
    return {"QueueConfigurations": queues} if queues else {}


def _table(stack: Stack, logical_id: str, props: Mapping[str, Any]) -> None:
    name = _name(logical_id)
    dynamodb = stack.client("dynamodb")
    # CloudFormation's StreamSpecification names the view type only; the API enables it too.
    view = props.get("StreamSpecification", {}).get("StreamViewType")
    streams = {"StreamEnabled": True, "StreamViewType": str(view)} if view else None
    if name not in dynamodb.list_tables()["TableNames"]:
        definition = {k: stack.resolve(props[k]) for k in _TABLE_PROPERTIES if k in props}
        dynamodb.create_table(
            TableName=name, **definition, **({"StreamSpecification": streams} if streams else {})
        )
    elif streams and not dynamodb.describe_table(TableName=name)["Table"].get("LatestStreamArn"):
        dynamodb.update_table(TableName=name, StreamSpecification=streams)  # restored from an older snapshot
    stack.physical_ids[logical_id] = name
    stack.attributes[logical_id] = {"Arn": _arn(stack, "dynamodb", f"table/{name}")}
    stream_arn = dynamodb.describe_table(TableName=name)["Table"].get("LatestStreamArn") if streams else None
    if stream_arn:
        stack.attributes[logical_id]["StreamArn"] = stream_arn


def _event_bus(stack: Stack, logical_id: str, props: Mapping[str, Any]) -> None:
    name = str(stack.resolve(props.get("Name", _name(logical_id))))
    events = stack.client("events")
    if name not in {b["Name"] for b in events.list_event_buses()["EventBuses"]}:
        events.create_event_bus(Name=name)
    stack.physical_ids[logical_id] = name
    stack.attributes[logical_id] = {"Arn": _arn(stack, "events", f"event-bus/{name}"), "Name": name}


_QUEUE_ATTRIBUTES = ("DelaySeconds", "VisibilityTimeout", "MessageRetentionPeriod", "RedrivePolicy")


def _queue(stack: Stack, logical_id: str, props: Mapping[str, Any]) -> None:
    name = str(stack.resolve(props.get("QueueName", _name(logical_id))))
    attributes = {}
    for key in _QUEUE_ATTRIBUTES:
        if key in props:
            value = stack.resolve(props[key])
            attributes[key] = json.dumps(value) if isinstance(value, dict) else str(value)
    sqs = stack.client("sqs")
    try:
        url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    except ClientError as exc:  # restored from a snapshot with other settings
        if exc.response["Error"]["Code"] not in {"QueueAlreadyExists", "QueueNameExists"}:
            raise
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
        sqs.set_queue_attributes(QueueUrl=url, Attributes=attributes)
    stack.physical_ids[logical_id] = url
    stack.attributes[logical_id] = {"Arn": _arn(stack, "sqs", name), "QueueName": name, "QueueUrl": url}


def _rule(stack: Stack, logical_id: str, props: Mapping[str, Any]) -> None:
    events = stack.client("events")
    bus = str(stack.resolve(props.get("EventBusName", "default")))
    name = _name(logical_id)
    state = str(stack.resolve(props.get("State", "ENABLED")))
    events.put_rule(
        Name=name,
        EventBusName=bus,
        EventPattern=json.dumps(stack.resolve(props["EventPattern"])),
        State=state,
    )
    targets = [{"Id": t["Id"], "Arn": str(stack.resolve(t["Arn"]))} for t in props.get("Targets", [])]
    if targets and state == "ENABLED":  # moto delivers to a disabled rule's targets too
        events.put_targets(Rule=name, EventBusName=bus, Targets=targets)
    stack.physical_ids[logical_id] = name
    stack.attributes[logical_id] = {"Arn": _arn(stack, "events", f"rule/{bus}/{name}")}


def _user_pool(stack: Stack, logical_id: str, props: Mapping[str, Any]) -> None:
    cognito = stack.client("cognito-idp")
    name = str(stack.resolve(props.get("UserPoolName", _name(logical_id))))
    pools = cognito.list_user_pools(MaxResults=60)["UserPools"]
    pool_id = next((p["Id"] for p in pools if p["Name"] == name), None)
    if pool_id is None:
        pool_id = cognito.create_user_pool(PoolName=name)["UserPool"]["Id"]
    stack.physical_ids[logical_id] = pool_id
    stack.attributes[logical_id] = {
        "Arn": _arn(stack, "cognito-idp", f"userpool/{pool_id}"),
        "ProviderName": f"cognito-idp.{stack.region}.amazonaws.com/{pool_id}",
    }


def _resource_server(stack: Stack, logical_id: str, props: Mapping[str, Any]) -> None:
    cognito = stack.client("cognito-idp")
    pool_id = str(stack.resolve(props["UserPoolId"]))
    identifier = str(props["Identifier"])
    existing = cognito.list_resource_servers(UserPoolId=pool_id, MaxResults=50)["ResourceServers"]
    if not any(s["Identifier"] == identifier for s in existing):
        cognito.create_resource_server(
            UserPoolId=pool_id, Identifier=identifier, Name=str(props["Name"]), Scopes=props.get("Scopes", [])
        )
    stack.physical_ids[logical_id] = identifier


def _user_pool_client(stack: Stack, logical_id: str, props: Mapping[str, Any]) -> None:
    cognito = stack.client("cognito-idp")
    pool_id = str(stack.resolve(props["UserPoolId"]))
    name = str(props.get("ClientName", logical_id))
    clients = cognito.list_user_pool_clients(UserPoolId=pool_id, MaxResults=60)["UserPoolClients"]
    client_id = next((c["ClientId"] for c in clients if c["ClientName"] == name), None)
    if client_id is None:
        client_id = cognito.create_user_pool_client(
            UserPoolId=pool_id,
            ClientName=name,
            GenerateSecret=bool(props.get("GenerateSecret", False)),
            AllowedOAuthFlows=props.get("AllowedOAuthFlows", []),
            AllowedOAuthScopes=props.get("AllowedOAuthScopes", []),
            AllowedOAuthFlowsUserPoolClient=bool(props.get("AllowedOAuthFlowsUserPoolClient", False)),
        )["UserPoolClient"]["ClientId"]
    stack.physical_ids[logical_id] = client_id


def _secret(stack: Stack, logical_id: str, props: Mapping[str, Any]) -> None:
    """A generated secret (GenerateSecretString), created once and kept by the snapshot."""
    secrets = stack.client("secretsmanager")
    name = _name(logical_id)
    try:
        arn = secrets.describe_secret(SecretId=name)["ARN"]
    except secrets.exceptions.ResourceNotFoundException:
        length = int(props.get("GenerateSecretString", {}).get("PasswordLength", 32))
        value = secrets.get_random_password(PasswordLength=length, ExcludePunctuation=True)["RandomPassword"]
        arn = secrets.create_secret(Name=name, SecretString=value)["ARN"]
    stack.physical_ids[logical_id] = arn
    stack.attributes[logical_id] = {"Id": arn}


_CREATORS = (
    ("AWS::SecretsManager::Secret", _secret),
    ("AWS::DynamoDB::Table", _table),
    ("AWS::Events::EventBus", _event_bus),
    ("AWS::SQS::Queue", _queue),
    ("AWS::S3::Bucket", _bucket),  # after the queues its notifications name
    ("AWS::Events::Rule", _rule),
    ("AWS::Cognito::UserPool", _user_pool),
    ("AWS::Cognito::UserPoolResourceServer", _resource_server),
    ("AWS::Cognito::UserPoolClient", _user_pool_client),
)
