"""The local EventBridge Scheduler (infra/local/scheduler.py): expressions, the template's
schedules, runs on a period and on demand, through a real worker pool."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.local.provision import Stack, parameter_values
from infra.local.scheduler import (
    REQUESTS_DIR,
    ScheduleError,
    Scheduler,
    SchedulerOptions,
    rate_seconds,
    request_run,
)
from infra.local.workers import FunctionConfig, FunctionPool
from infra.samtemplate import ScheduleSource, Template, load_template

APP = """
import json, os

def handler(event, context):
    with open(os.environ["RUNS_FILE"], "a") as runs:
        runs.write(json.dumps(event) + "\\n")
    return {"seen": event}
"""


@pytest.mark.parametrize(
    ("expression", "seconds"),
    [("rate(1 day)", 86400), ("rate(1 minute)", 60), ("rate(5 minutes)", 300), ("rate(12 hours)", 43200)],
)
def test_rate_expressions_give_their_period(expression: str, seconds: float) -> None:
    assert rate_seconds(expression) == seconds


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("cron(0 3 * * ? *)", r"cron\(\) schedules are not run by the local runtime"),
        ("at(2026-01-01T00:00:00)", r"at\(\) schedules are not run by the local runtime"),
        ("rate(1 days)", r"write rate\(1 day\)"),
        ("rate(2 hour)", r"write rate\(2 hours\)"),
        ("rate(0 minutes)", "positive whole number"),
        ("rate(1 week)", "minute\\(s\\), hour\\(s\\) or day\\(s\\)"),
        ("daily", "is not a schedule expression"),
    ],
)
def test_other_expressions_are_refused_with_what_to_write(expression: str, message: str) -> None:
    with pytest.raises(ScheduleError, match=message):
        rate_seconds(expression)


def test_the_template_schedules_the_reconciliation_daily() -> None:
    # Given template.yaml and its parameters' defaults
    template = load_template()
    stack = Stack(template, "us-east-1", None, parameter_values(template, {}))

    # When its schedules are read
    (source,) = [s for s in template.schedule_sources() if s.function == "ReconcileFunction"]

    # Then the reconciliation runs once a day, with the schedule's input as its event
    assert rate_seconds(str(stack.resolve(source.expression))) == 86400
    assert source.enabled and json.loads(source.input or "") == {"trigger": "schedule"}
    # And a parameter override changes it, as `sam deploy --parameter-overrides` does
    hourly = Stack(
        template, "us-east-1", None, parameter_values(template, {"ReconcileSchedule": "rate(1 hour)"})
    )
    assert rate_seconds(str(hourly.resolve(source.expression))) == 3600


def test_sam_schedule_events_are_schedules_too() -> None:
    # Given a function with a SAM ScheduleV2 event (disabled) and a Schedule event
    template = Template(
        {
            "Resources": {
                "Nightly": {
                    "Type": "AWS::Serverless::Function",
                    "Properties": {
                        "Events": {
                            "Sweep": {
                                "Type": "ScheduleV2",
                                "Properties": {"ScheduleExpression": "rate(1 day)", "State": "DISABLED"},
                            },
                            "Tick": {
                                "Type": "Schedule",
                                "Properties": {"Schedule": "rate(5 minutes)", "Input": '{"a": 1}'},
                            },
                        }
                    },
                }
            }
        }
    )

    # Then both are read, with their expressions, inputs and states
    assert template.schedule_sources() == [
        ScheduleSource("NightlySweep", "Nightly", "rate(1 day)", None, enabled=False),
        ScheduleSource("NightlyTick", "Nightly", "rate(5 minutes)", '{"a": 1}', enabled=True),
    ]


class Running:
    """A scheduler over one probe function (a real worker pool), in its own thread."""

    def __init__(self, tmp_path: Path, sources: list[ScheduleSource], options: SchedulerOptions) -> None:
        code = tmp_path / "code"
        code.mkdir()
        (code / "app.py").write_text(APP)
        self.runs_file = tmp_path / "runs.jsonl"
        self.local_dir = tmp_path / "local"
        self.pool = FunctionPool(
            FunctionConfig(
                name="Probe",
                handler="app.handler",
                code_dir=code,
                layer_dirs=(),
                environment={"RUNS_FILE": str(self.runs_file)},
                timeout=30,
                memory_mb=128,
            ),
            max_concurrency=1,
        )
        self.log: list[str] = []
        self.stopping = threading.Event()
        self.scheduler = Scheduler(
            sources,
            resolve=lambda value: value,
            pools={"Probe": self.pool},
            stopping=self.stopping,
            request_dir=self.local_dir / REQUESTS_DIR,
            options=options,
            log=self.log.append,
        )
        self.thread = threading.Thread(target=self.scheduler.run, daemon=True)

    def __enter__(self) -> Running:
        self.pool.warm_up()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(timeout=10)
        self.pool.close()

    def runs(self) -> list[dict[str, object]]:
        if not self.runs_file.exists():
            return []
        return [json.loads(line) for line in self.runs_file.read_text().splitlines()]

    def wait_for_runs(self, count: int, timeout: float = 20.0) -> list[dict[str, object]]:
        deadline = time.monotonic() + timeout
        while len(self.runs()) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.runs()


SCHEDULE = ScheduleSource("ProbeSchedule", "Probe", "rate(1 day)", '{"trigger": "schedule"}', enabled=True)


@pytest.fixture
def every_half_second(tmp_path: Path) -> Iterator[Running]:
    options = SchedulerOptions(enabled=True, start_delay=0.0, period=0.5)
    with Running(tmp_path, [SCHEDULE], options) as running:
        yield running


def test_a_schedule_runs_shortly_after_start_and_then_every_period(every_half_second: Running) -> None:
    # Given a daily schedule whose period the environment shortened to half a second

    # When the scheduler has run for a while
    runs = every_half_second.wait_for_runs(3)

    # Then the function ran again and again, each time with the schedule's input
    assert len(runs) >= 3
    assert all(run == {"trigger": "schedule"} for run in runs)


def test_a_run_on_demand_answers_with_the_function_result(tmp_path: Path) -> None:
    # Given a scheduler whose schedules do not run on their own (SCHEDULES=off)
    options = SchedulerOptions.from_environ({"SCHEDULES": "off"})
    with Running(tmp_path, [SCHEDULE], options) as running:
        # When a run is asked for, with an event of its own
        answer = request_run(running.local_dir, "Probe", event={"trigger": "on-demand"}, timeout=30)

        # Then the function ran once, now, and its answer came back
        assert answer == {"ok": True, "function": "Probe", "result": {"seen": {"trigger": "on-demand"}}}
        time.sleep(1.0)
        assert running.runs() == [{"trigger": "on-demand"}]
        # And a function without a schedule is refused, saying which are scheduled
        refused = request_run(running.local_dir, "Other", timeout=30)
        assert refused["ok"] is False and "['Probe']" in refused["error"]
    assert not list((running.local_dir / REQUESTS_DIR).iterdir())  # nothing left behind


def test_a_cron_schedule_is_not_run_and_says_so(tmp_path: Path) -> None:
    # Given a schedule written as a cron expression
    cron = ScheduleSource("Nightly", "Probe", "cron(0 3 * * ? *)", None, enabled=True)
    options = SchedulerOptions(enabled=True, start_delay=0.0, period=None)

    # When the scheduler starts and runs for a moment
    with Running(tmp_path, [cron], options) as running:
        time.sleep(1.5)

        # Then it never ran, and the runtime said why
        assert running.runs() == []
    assert any("cron() schedules are not run by the local runtime" in line for line in running.log)
