"""`make serve`: the whole stack on 127.0.0.1 with moto as AWS.

Starts a moto server, restores the previous state from $LOCAL_DIR, creates what the
template declares, starts one worker pool per function (the real Lambda handlers with
the layers on their path), issues role tokens, serves the routes of template.yaml
through the local API Gateway, and records every event on the bus in
$LOCAL_DIR/events.jsonl. Ctrl-C (or SIGTERM) saves the state and stops cleanly.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from moto.moto_api._internal.models import moto_api_backend
from moto.server import ThreadedMotoServer

from dicomweb_core.audit import FileSink
from infra.accounting.gateway import recorder_from_environment as gateway_recorder_from_environment
from infra.local import snapshot
from infra.local.auth import (
    DEFAULT_LIFETIME,
    ROLE_CLIENTS,
    JwtAuthorizer,
    LocalSigningKey,
    TokenIssuer,
    issue_role_tokens,
    role_scopes,
    write_tokens_file,
)
from infra.local.gateway import CorsPolicy, Gateway, LinkSigningKey, ObjectProxy, make_server
from infra.local.moto_atomic import serialise_dynamodb
from infra.local.moto_objects import read_object
from infra.local.provision import ACCOUNT_ID, provision
from infra.local.queues import QueuePoller
from infra.local.scheduler import REQUESTS_DIR, Scheduler, SchedulerOptions
from infra.local.streams import (
    POSITIONS_FILE,
    StreamPositions,
    stream_pollers,
    withdraw_cancelled_stream_records,
)
from infra.local.workers import FunctionConfig, FunctionPool
from infra.samtemplate import Template, load_template, object_routes
from infra.upload.uploader import upload_folder

REGION = "us-east-1"
EVENT_LOG_QUEUE = "local-event-log"
SNAPSHOT_INTERVAL_S = 30.0
# Browser viewers under development (OHIF's dev server, Vite, ...); CORS_ORIGINS overrides.
LOCAL_VIEWER_ORIGINS = (
    "http://localhost:3000",
    "http://127.0.0.1:3000",
    "http://localhost:5173",
    "http://127.0.0.1:5173",
    "http://localhost:8042",
)
# Credentials for moto (which accepts any), set before boto3 is imported by anything. The
# functions sign object links with a secret drawn at each start instead (LinkSigningKey).
_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "local",
    "AWS_SECRET_ACCESS_KEY": "local",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
}


@dataclass
class Options:
    host: str
    port: int
    local_dir: Path
    auth: bool
    load: Path | None
    cors_origins: tuple[str, ...]
    persist: bool = True  # snapshot moto to $LOCAL_DIR (the benchmarks turn it off)
    # The tables' stream consumers (DynamoDB streams -> InstanceStored, and the recounted
    # study and series aggregates); off for a benchmark that writes index items, aggregates
    # included, straight into moto, which must not all be announced.
    change_feed: bool = os.environ.get("CHANGE_FEED", "on").strip().lower() != "off"
    # Scheduled functions (reconciliation); off for benchmarks, whose figures they would blur.
    schedules: bool = os.environ.get("SCHEDULES", "on").strip().lower() != "off"
    # A series is stable after this quiet time; seconds locally so results show up quickly.
    stable_age_seconds: int = int(os.environ.get("STABLE_AGE_SECONDS", "3"))
    # Template parameters, as `sam deploy --parameter-overrides`: "Name=Value Name2=Value2".
    parameter_overrides: tuple[tuple[str, str], ...] = tuple(
        tuple(item.split("=", 1))  # type: ignore[misc]
        for item in os.environ.get("PARAMETER_OVERRIDES", "").split()
        if "=" in item
    )

    @classmethod
    def parse(cls, argv: list[str] | None = None) -> Options:
        parser = argparse.ArgumentParser(description=__doc__)
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
        parser.add_argument("--local-dir", type=Path, default=Path(os.environ.get("LOCAL_DIR", ".local")))
        parser.add_argument("--auth", choices=("on", "off"), default=os.environ.get("AUTH", "on") or "on")
        parser.add_argument(
            "--persist",
            choices=("on", "off"),
            default=os.environ.get("PERSIST", "on") or "on",
            help="snapshot the state to LOCAL_DIR (off: everything is gone on exit)",
        )
        parser.add_argument(
            "--load", type=Path, default=Path(os.environ["LOAD"]) if os.environ.get("LOAD") else None
        )
        args = parser.parse_args(argv)
        refusal = unauthenticated_exposure(auth=args.auth == "on", host=args.host)
        if refusal is not None:
            parser.error(refusal)
        origins = os.environ.get("CORS_ORIGINS")
        return cls(
            host=args.host,
            port=args.port,
            local_dir=args.local_dir.resolve(),
            auth=args.auth == "on",
            load=args.load,
            cors_origins=tuple(o.strip() for o in origins.split(",")) if origins else LOCAL_VIEWER_ORIGINS,
            persist=args.persist == "on",
        )


def is_loopback(host: str) -> bool:
    """True when a listener on ``host`` is reachable from this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name, or "" (every interface)


def unauthenticated_exposure(*, auth: bool, host: str) -> str | None:
    """Why the runtime must not start without its authorizer on ``host``; None when it may."""
    if auth or is_loopback(host):
        return None
    return (
        "AUTH=off lets anyone who can reach the port read, store and delete every study; it is"
        " allowed on a loopback host only (127.0.0.1, ::1, localhost), not on"
        f" {host or 'every interface'!r}. Keep AUTH=on, or listen on HOST=127.0.0.1."
    )


class LocalStack:
    """Everything `make serve` runs, startable from tests too."""

    def __init__(self, options: Options, template: Template | None = None) -> None:
        refusal = unauthenticated_exposure(auth=options.auth, host=options.host)
        if refusal is not None:
            raise ValueError(refusal)
        self.options = options
        self.template = template or load_template()
        self.base_url = f"http://{options.host}:{options.port}"
        self.snapshot_path = options.local_dir / "state.pickle"
        self.events_path = options.local_dir / "events.jsonl"
        self.tokens_path = options.local_dir / "tokens.json"
        self.audit_path = options.local_dir / "audit.jsonl"
        self._stopping = threading.Event()
        self._dirty = threading.Event()
        # Object links (same-host presigned URLs) are signed by the functions and checked
        # by the object proxy with this key; a fresh one each start, held by nothing else.
        self.link_key = LinkSigningKey.generate(REGION)

    # ---------------------------------------------------------------- start
    def start(self) -> None:
        os.environ.update(_AWS_ENV)
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self.options.local_dir.mkdir(parents=True, exist_ok=True)
        serialise_dynamodb()
        withdraw_cancelled_stream_records()  # a cancelled transaction streams nothing, as in DynamoDB
        # moto's backends are this process's globals: a stack started after another one in
        # the same process (the benchmark sections) starts empty too, then from its snapshot.
        moto_api_backend.reset()
        self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.moto.start()
        _, moto_port = self.moto.get_host_and_port()
        self.moto_url = f"http://127.0.0.1:{moto_port}"
        restored = snapshot.load(self.snapshot_path)
        self.stack = provision(
            self.template,
            endpoint_url=self.moto_url,
            region=REGION,
            overrides={
                "PublicBaseUrl": self.base_url,
                "AllowedOrigins": ",".join(self.options.cors_origins),
                "StableAgeSeconds": str(self.options.stable_age_seconds),
                **dict(self.options.parameter_overrides),
            },
        )
        self._record_events()
        self.pools = {name: FunctionPool(config) for name, config in self._function_configs().items()}
        key = LocalSigningKey.load_or_create(self.options.local_dir / "signing-key.pem")
        # The authorizer's issuer and audiences are the template's, resolved against moto's
        # pool and clients: tokens carry the claims the cloud's would, whatever the port.
        jwt_config = self.stack.resolve(self.template.jwt_configuration())
        issuer_url = str(jwt_config["issuer"])
        client_ids = {role: self.stack.physical_ids[logical] for role, logical in ROLE_CLIENTS.items()}
        authorizer = (
            JwtAuthorizer(
                issuer=issuer_url, audiences=[str(a) for a in jwt_config["audience"]], jwks=key.jwks()
            )
            if self.options.auth
            else None
        )
        # Each role's scopes are its app client's in this stack's template, read now.
        scopes = role_scopes(self.template)
        tokens = issue_role_tokens(TokenIssuer(key, issuer_url), client_ids, scopes=scopes)
        write_tokens_file(
            self.tokens_path,
            tokens,
            scopes=scopes,
            base_url=self.base_url,
            expires_at=datetime.now(UTC) + DEFAULT_LIFETIME,
        )
        self.tokens = tokens
        api = self.template.http_api()
        self.gateway = Gateway(
            routes=self.template.routes(),
            functions=self.pools,
            authorizer=authorizer,
            cors=CorsPolicy.from_template(
                api.get("CorsConfiguration", {}), origins=self.options.cors_origins
            ),
            on_invoke=lambda function, took: self._dirty.set(),
            audit_sink=FileSink(self.audit_path),
            objects=ObjectProxy(
                [
                    (route.pattern, self.stack.physical_ids[route.bucket], route.methods)
                    for route in object_routes(self.template)
                ],
                self.moto_url,
                key=self.link_key,
                read=read_object,
            ),
            # COUNT_BACKEND_CALLS (make bench): the gateway's own time per request too.
            on_request=gateway_recorder_from_environment(),
        )
        self.server = make_server(self.gateway, self.options.host, self.options.port)
        self._threads = [
            threading.Thread(target=self.server.serve_forever, name="http", daemon=True),
            threading.Thread(target=self._drain_events, name="event-log", daemon=True),
            threading.Thread(target=self._snapshot_loop, name="snapshot", daemon=True),
        ]
        for source in self.template.queue_sources():
            poller = QueuePoller(
                source,
                sqs=self.stack.client("sqs"),
                queue_url=self.stack.physical_ids[source.queue],
                queue_arn=self.stack.attributes[source.queue]["Arn"],
                region=REGION,
                pool=self.pools[source.function],
                stopping=self._stopping,
                activity=self.gateway.activity,
            )
            self._threads.append(
                threading.Thread(target=poller.run, name=f"sqs-{source.function}", daemon=True)
            )
        # DynamoDB stream sources, from the checkpoint saved with the restored snapshot.
        self.stream_positions = StreamPositions(
            self.options.local_dir / POSITIONS_FILE if self.options.persist else None, resume=restored
        )
        pollers = stream_pollers(
            self.template,
            self.stack,
            self.pools,
            positions=self.stream_positions,
            stopping=self._stopping,
            activity=self.gateway.activity,
            region=REGION,
        )
        for stream_poller in pollers if self.options.change_feed else []:
            self._threads.append(
                threading.Thread(target=stream_poller.run, name=stream_poller.name, daemon=True)
            )
        # EventBridge Scheduler: the template's scheduled functions (infra/local/scheduler.py).
        self.scheduler = Scheduler(
            self.template.schedule_sources(),
            resolve=self.stack.resolve,
            pools=self.pools,
            stopping=self._stopping,
            request_dir=self.options.local_dir / REQUESTS_DIR,
            activity=self.gateway.activity,
            on_run=self._dirty.set,
            options=replace(SchedulerOptions.from_environ(os.environ), enabled=self.options.schedules),
        )
        self._threads.append(threading.Thread(target=self.scheduler.run, name="scheduler", daemon=True))
        for thread in self._threads:
            thread.start()
        for pool in self.pools.values():
            pool.warm_up()
        self._write_runtime_file(restored)

    def _function_configs(self) -> dict[str, FunctionConfig]:
        layers = self.template.layer_dirs()
        configs = {}
        for name, spec in self.template.functions().items():
            environment = {
                **_AWS_ENV,
                **self.stack.function_environment(spec),
                **self.link_key.environment(),
                "AWS_ENDPOINT_URL": self.moto_url,
                "AWS_LAMBDA_FUNCTION_NAME": name,
                "POWERTOOLS_TRACE_DISABLED": "true",
                "POWERTOOLS_METRICS_DISABLED": "true",
                "POWERTOOLS_DEV": os.environ.get("POWERTOOLS_DEV", "false"),
                "AUDIT_FILE": str(self.audit_path),
                # Without the authorizer there are no tokens for the functions to check.
                "REQUIRE_SCOPES": "true" if self.options.auth else "false",
            }
            configs[name] = FunctionConfig(
                name=name,
                handler=spec.handler,
                code_dir=spec.code_uri,
                layer_dirs=tuple(layers[layer] for layer in spec.layers),
                environment=environment,
                timeout=float(spec.timeout),
                memory_mb=spec.memory,
            )
        return configs

    def _write_runtime_file(self, restored: bool) -> None:
        document = {
            "base_url": self.base_url,
            "moto_endpoint_url": self.moto_url,
            "region": REGION,
            "restored_state": restored,
            "resources": self.stack.physical_ids,
            "tokens_file": str(self.tokens_path),
            "events_file": str(self.events_path),
            "pid": os.getpid(),
        }
        (self.options.local_dir / "runtime.json").write_text(json.dumps(document, indent=2) + "\n")

    # ---------------------------------------------------------------- events
    def _record_events(self) -> None:
        """A local-only rule that copies every event on the bus into a queue we drain."""
        events, sqs = self.stack.client("events"), self.stack.client("sqs")
        queue_url = sqs.create_queue(QueueName=EVENT_LOG_QUEUE)["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        for logical_id in self.template.resources_of_type("AWS::Events::EventBus"):
            bus = self.stack.physical_ids[logical_id]
            events.put_rule(
                Name=EVENT_LOG_QUEUE,
                EventBusName=bus,
                EventPattern=json.dumps({"account": [ACCOUNT_ID]}),
            )
            events.put_targets(
                Rule=EVENT_LOG_QUEUE, EventBusName=bus, Targets=[{"Id": "log", "Arn": queue_arn}]
            )
        self._event_queue_url = queue_url

    def _drain_events(self) -> None:
        sqs = self.stack.client("sqs")
        while not self._stopping.is_set():
            # Counted as activity, so a snapshot never pickles SQS in the middle of a receive.
            with self.gateway.activity.running():
                self._drain_once(sqs)

    def _drain_once(self, sqs: Any) -> None:
        try:
            messages = sqs.receive_message(
                QueueUrl=self._event_queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
            ).get("Messages", [])
        except Exception as exc:  # moto stopping under us at shutdown
            if not self._stopping.is_set():
                print(f"event log: {exc!r}", flush=True)
            time.sleep(0.5)
            return
        if not messages:
            return
        with open(self.events_path, "a", encoding="utf-8") as log:
            for message in messages:
                log.write(json.dumps(json.loads(message["Body"]), separators=(",", ":")) + "\n")
        sqs.delete_message_batch(
            QueueUrl=self._event_queue_url,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
        )
        self._dirty.set()

    # ---------------------------------------------------------------- state
    def _snapshot_loop(self) -> None:
        while not self._stopping.wait(SNAPSHOT_INTERVAL_S):
            if self._dirty.is_set():
                self.save()

    def save(self) -> None:
        if not self.options.persist:
            return
        with self.gateway.activity.paused():
            self._dirty.clear()
            snapshot.save(self.snapshot_path)
            self.stream_positions.save()  # after the state it belongs to, never ahead of it

    def stop(self) -> None:
        if self._stopping.is_set():
            return
        self._stopping.set()
        self.server.shutdown()
        self.save()
        for pool in self.pools.values():
            pool.close()
        self.moto.stop()


def main(argv: list[str] | None = None) -> int:
    options = Options.parse(argv)
    stack = LocalStack(options)
    stack.start()
    print(
        f"DICOMweb root: {stack.base_url}/studies\n"
        f"Tokens:        {stack.tokens_path} (roles: {', '.join(stack.tokens)})\n"
        f"Events:        {stack.events_path}\n"
        f"Auth:          {'on' if options.auth else 'OFF (AUTH=off)'}\n"
        "Press Ctrl-C to stop.",
        flush=True,
    )
    if options.load is not None:
        # The folder uploader's own path: STOW-RS batches, upload sessions for large files.
        report = upload_folder(options.load, base_url=stack.base_url, token=stack.tokens["uploader"])
        print(f"LOAD {options.load}:\n{report.summary()}", flush=True)
    stopped = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopped.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    # Wake up regularly: the kernel may deliver the signal to another thread, and Python
    # runs handlers only when the main thread next executes bytecode.
    while not stopped.wait(timeout=0.5):
        pass
    print("Stopping: saving state...", flush=True)
    stack.stop()
    print(f"State saved in {options.local_dir}.", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
