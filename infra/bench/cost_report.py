"""The cost section of ``make bench``: tables from a :class:`~infra.bench.cost.Measurement`.

Usage figures per operation come from the workers' records and the emulator's state
(infra/bench/cost.py); dollars from :mod:`infra.accounting.prices`. How each billing unit
is derived from what was measured:

- DynamoDB: write and read request units from the items as stored (infra.accounting.dynamodb);
- S3: PUT-class requests (PUT, COPY, POST, LIST, multipart) and GET-class requests (GET,
  HEAD, the rest) by the calls made, DELETE free; a GET through a presigned link (the
  object proxy) is counted from the redirect the client followed;
- EventBridge: each PutEvents entry, per 64 KB;
- SQS: each message delivered to a function is one send, and each batch a function
  received is one ReceiveMessage and one DeleteMessageBatch; empty long polls (a constant
  per queue, not per operation) are left out;
- Lambda: one request per invocation, GB-s from the template's MemorySize and the
  handler's measured duration here (on a shared 2-core machine against an emulator over
  HTTP: an upper bound for the cloud);
- API Gateway: the bench's requests, metered per 512 KB of body;
- CloudWatch Logs: the audit records' bytes (function logs are not measured).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from infra.accounting.calls import Tally
from infra.accounting.dynamodb import Units
from infra.accounting.prices import GIB, MILLION, PRICES, SOURCES, TAKEN, PriceList

if TYPE_CHECKING:
    from infra.bench.cost import AtRest, Measurement, Phase

SERVICES = ("dynamodb", "s3", "events", "sqs", "logs")
S3_FREE = {"DeleteObject", "DeleteObjects", "AbortMultipartUpload"}
S3_PUT_CLASS = ("Put", "Copy", "Post", "List", "CreateMultipartUpload", "UploadPart", "CompleteMultipart")
USAGE = (
    ("wru", "DynamoDB WRU"),
    ("rru", "DynamoDB RRU"),
    ("s3_put", "S3 PUT-class"),
    ("s3_get", "S3 GET-class"),
    ("events", "events"),
    ("sqs", "SQS requests"),
    ("lambda", "Lambda invocations"),
    ("gb_s", "Lambda GB-s"),
    ("http", "API requests"),
    ("audit", "audit bytes"),
)


def _tally(phase: Phase) -> Tally:
    tally = Tally()
    for invocation in phase.invocations:
        tally.merge(invocation.tally)
    return tally


def usage(phase: Phase, memory_mb: Mapping[str, int]) -> dict[str, float]:
    """The phase's billing units, in total (see the module docstring for the rules)."""
    tally = _tally(phase)
    s3_put = s3_get = 0
    for name, count in tally.calls.items():
        service, operation = name.split(".", 1)
        if service == "s3" and operation not in S3_FREE:
            if operation.startswith(S3_PUT_CLASS):
                s3_put += count
            else:
                s3_get += count
    batches = [i for i in phase.invocations if i.trigger.startswith("sqs:")]
    other_sqs = sum(
        count
        for name, count in tally.calls.items()
        if name.startswith("sqs.") and name not in ("sqs.SendMessage", "sqs.SendMessageBatch")
    )
    return {
        "wru": phase.dynamodb.write_total,
        "rru": phase.dynamodb.read_total,
        "s3_put": s3_put,
        "s3_get": s3_get + phase.proxied_gets,
        "events": tally.units["events.billed"],
        "sqs": sum(i.messages for i in batches) + 2 * len(batches) + other_sqs,
        "lambda": len(phase.invocations),
        "gb_s": sum(memory_mb.get(i.function, 128) / 1024 * i.duration_ms / 1000 for i in phase.invocations),
        "http": phase.http_requests,
        "audit": phase.audit_bytes,
    }


def dollars(units: Mapping[str, float], prices: PriceList = PRICES) -> dict[str, float]:
    """Dollars per service for the given billing units."""
    return {
        "DynamoDB": (
            units["wru"] * prices.dynamodb_per_million_wru + units["rru"] * prices.dynamodb_per_million_rru
        )
        / MILLION,
        "S3": (units["s3_put"] * prices.s3_per_thousand_put + units["s3_get"] * prices.s3_per_thousand_get)
        / 1000,
        "EventBridge": units["events"] * prices.eventbridge_per_million_events / MILLION,
        "SQS": units["sqs"] * prices.sqs_per_million_requests / MILLION,
        "Lambda": units["lambda"] * prices.lambda_per_million_requests / MILLION
        + units["gb_s"] * prices.lambda_per_gb_second,
        "API Gateway": units["http"] * prices.http_api_per_million_requests / MILLION,
        "CloudWatch Logs": units["audit"] / GIB * prices.logs_per_gb_ingested,
    }


def _number(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}".rstrip("0").rstrip(".")


def _table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> list[str]:
    header = list(header)
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def _calls_rows(phases: list[Phase]) -> list[list[str]]:
    rows = []
    for phase in phases:
        tally = _tally(phase)
        services = tally.by_service()
        detail = ", ".join(
            f"{name} {_number(count / phase.per)}" for name, count in sorted(tally.calls.items())
        )
        rows.append(
            [
                f"{phase.label} (per {phase.unit})",
                *(_number(services[s] / phase.per) for s in SERVICES),
                _number(sum(services.values()) / phase.per),
                detail or "-",
            ]
        )
    return rows


def _functions_rows(phase: Phase, memory_mb: Mapping[str, int]) -> list[list[str]]:
    groups: dict[str, list[float]] = {}
    calls: dict[str, Counter[str]] = {}
    for invocation in phase.invocations:
        groups.setdefault(invocation.function, []).append(invocation.duration_ms)
        calls.setdefault(invocation.function, Counter()).update(invocation.tally.by_service())
    rows = []
    for function, durations in sorted(groups.items()):
        gb_s = memory_mb.get(function, 128) / 1024 * sum(durations) / 1000
        by_service = ", ".join(f"{s} {_number(c / phase.per)}" for s, c in sorted(calls[function].items()))
        units = phase.by_function[function]
        rows.append(
            [
                function,
                _number(len(durations) / phase.per),
                f"{sum(durations) / len(durations):.0f}",
                _number(gb_s / phase.per),
                by_service or "-",
                _number(units.write_total / phase.per),
                _number(units.read_total / phase.per),
            ]
        )
    return rows


def _units_rows(phases: list[Phase], memory_mb: Mapping[str, int]) -> list[list[str]]:
    rows = []
    for phase in phases:
        units = usage(phase, memory_mb)
        total = sum(dollars(units).values())
        rows.append(
            [
                f"{phase.label} (per {phase.unit})",
                *(_number(units[key] / phase.per) for key, _ in USAGE),
                f"${total / phase.per * MILLION:,.2f}",
            ]
        )
    return rows


def _at_rest_rows(rest: AtRest, m: Measurement) -> list[list[str]]:
    rows = []
    for table, storage in rest.tables.items():
        if storage.items:
            indexes = ", ".join(f"{n} {_number(b / m.instances)}" for n, b in sorted(storage.indexes.items()))
            rows.append(
                [
                    f"DynamoDB {m.table_names[table]}",
                    _number(storage.items / m.instances),
                    _number(storage.base / m.instances),
                    _number(sum(storage.indexes.values()) / m.instances),
                    _number(storage.total / m.instances),
                    indexes or "-",
                ]
            )
    for bucket, sizes in rest.s3_bytes.items():
        for kind, size in sorted(sizes.items()):
            count = rest.s3_objects[bucket][kind]
            rows.append(
                [
                    f"S3 {m.bucket_names[bucket]} `{kind}`",
                    _number(count / m.instances),
                    "",
                    "",
                    _number(size / m.instances),
                    "",
                ]
            )
    return rows


def _where(m: Measurement, consumed: str) -> str:
    """``table[/index]`` with the table's logical id from template.yaml."""
    table, _, index = consumed.partition("/")
    return m.table_names.get(table, table) + (f"/{index}" if index else "")


def _table_units(m: Measurement, units: Mapping[str, float], per: int, logical: str) -> float:
    return sum(v for k, v in units.items() if _where(m, k).split("/")[0] == logical) / per


def _price(value: float) -> str:
    text = f"{value:.10f}".rstrip("0")
    return text if len(text.split(".")[1]) >= 2 else f"{value:.2f}"


def _totals(rest: AtRest) -> tuple[int, int]:
    """Index bytes (every table) and S3 bytes (every version in every bucket)."""
    index = sum(s.total for s in rest.tables.values())
    s3 = sum(sum(sizes.values()) for sizes in rest.s3_bytes.values())
    return index, s3


def _index_table_bytes(rest: AtRest, m: Measurement, logical: str) -> int:
    return sum(s.total for name, s in rest.tables.items() if m.table_names.get(name) == logical)


def _bucket_bytes(rest: AtRest, m: Measurement, logical: str) -> int:
    return sum(sum(s.values()) for name, s in rest.s3_bytes.items() if m.bucket_names.get(name) == logical)


def _dollar_rows(m: Measurement, stow: Phase, prices: PriceList) -> tuple[list[list[str]], float, float]:
    per_instance = {k: v / stow.per for k, v in usage(stow, m.memory_mb).items()}
    ingest = {service: cost * MILLION for service, cost in dollars(per_instance, prices).items()}
    assert m.stored is not None
    index, s3 = _totals(m.stored)
    audit_per_instance = stow.audit_bytes / stow.per
    month = {
        "DynamoDB": index / m.instances * MILLION / GIB * prices.dynamodb_per_gb_month,
        "S3": s3 / m.instances * MILLION / GIB * prices.s3_per_gb_month,
        "CloudWatch Logs": audit_per_instance * MILLION / GIB * prices.logs_per_gb_month,
    }
    services = list(ingest)
    rows = [[s, f"${ingest[s]:,.2f}", f"${month.get(s, 0.0):,.2f}"] for s in services]
    total_ingest, total_month = sum(ingest.values()), sum(month.values())
    rows.append(["**total**", f"**${total_ingest:,.2f}**", f"**${total_month:,.2f}**"])
    return rows, total_ingest, total_month


def _summary(m: Measurement, prices: PriceList) -> list[str]:
    stow = m.phases[0]
    assert m.stored is not None and m.deleted is not None
    index, s3 = _totals(m.stored)
    primary = _bucket_bytes(m.stored, m, "InstanceBucket")
    index_table = _index_table_bytes(m.stored, m, "IndexTable")
    held_after_delete = _totals(m.deleted)[1]
    _, total_ingest, total_month = _dollar_rows(m, stow, prices)
    wru, per = stow.dynamodb.write, stow.per
    request_path = stow.by_function.get("StowFunction", Units())
    gsi = sum(v for k, v in wru.items() if "/" in k) / per
    deid = _table_units(m, wru, per, "DeidTable")
    return [
        f"- **DynamoDB write units per stored instance: {stow.dynamodb.write_total / per:.1f}** "
        f"(request path and hooks, every table and index), {gsi:.1f} of them index (GSI) writes. "
        f"IndexTable {_table_units(m, wru, per, 'IndexTable'):.1f}, of which the STOW request "
        f"itself {request_path.write_total / per:.1f}; DeidTable {deid:.1f}.",
        f"- **Index storage per instance: {index / m.instances / 1000:.1f} kB** "
        f"(IndexTable {index_table / m.instances / 1000:.1f} kB; every table, GSI copies and "
        "100-byte overheads included).",
        f"- **S3 bytes at rest: {s3 / m.sent_bytes:.2f}x the bytes sent** (every version in every "
        f"bucket, once the series is stable); the primary store alone {primary / m.sent_bytes:.2f}x. "
        "A series retrieved whole adds its body (about 1x more) for BundleRetentionDays after "
        "the first such retrieval (the retrieve rows below count building it). After the DELETE, "
        f"{held_after_delete / m.sent_bytes:.2f}x is still held (noncurrent versions, recoverable).",
        f"- **Dollars per million instances: ${total_ingest:,.0f} to ingest, ${total_month:,.0f} per "
        f"month at rest**, at {prices.region} list prices taken {TAKEN}.",
    ]


def _prices_note(prices: PriceList) -> str:
    items = [
        (prices.dynamodb_per_million_wru, "M DynamoDB on-demand WRU"),
        (prices.dynamodb_per_million_rru, "M RRU"),
        (prices.dynamodb_per_gb_month, "GB-month of DynamoDB"),
        (prices.s3_per_thousand_put, "1,000 S3 Standard PUT"),
        (prices.s3_per_thousand_get, "1,000 GET"),
        (prices.s3_per_gb_month, "GB-month of S3 Standard"),
        (prices.eventbridge_per_million_events, "M EventBridge custom events"),
        (prices.sqs_per_million_requests, "M SQS requests"),
        (prices.lambda_per_gb_second, "Lambda x86 GB-s"),
        (prices.lambda_per_million_requests, "M Lambda requests"),
        (prices.http_api_per_million_requests, "M HTTP API requests"),
        (prices.logs_per_gb_ingested, "GB of CloudWatch Logs ingested"),
        (prices.logs_per_gb_month, "GB-month of logs"),
    ]
    listed = "; ".join(f"${_price(price)}/{unit}" for price, unit in items)
    sources = ", ".join(source.split(" ", 1)[0] for source in SOURCES)
    return f"List prices, {prices.region}, taken {TAKEN} (free tiers left out): {listed}. Sources: {sources}."


METHOD = (
    "How: every Lambda worker counts its AWS calls with a botocore hook "
    "(`COUNT_BACKEND_CALLS`, infra/accounting); write and read units are computed from the "
    "items as stored in the emulator by DynamoDB's published rules (transactional writes "
    "twice, each GSI entry written once, an updated aggregate sized as the operation left "
    "it); storage is every item and index entry plus 100 bytes each. Lambda GB-s use "
    "durations measured here, an upper bound for the cloud. Not counted: empty SQS long "
    "polls, function logs, KMS requests, data transfer out. The reads run against a store "
    "holding this one study (the QIDO section measures them at 10,000 studies)."
)


def render(m: Measurement, prices: PriceList = PRICES) -> str:
    """The cost section, in Markdown."""
    stow, delete = m.phases[0], m.phases[-1]
    assert m.stored is not None
    wru = stow.dynamodb.write
    by_table = ", ".join(f"{_where(m, k)} {_number(v / stow.per)}" for k, v in sorted(wru.items()))
    cancelled = stow.dynamodb.cancelled
    lines = [
        "## Cost per operation (local runtime, every hook on, backend calls counted)",
        "",
        f"Measured by `make bench` (infra/bench/cost.py) on a series of {m.instances} CT instances "
        f"of 512x512 ({m.sent_bytes / m.instances / 1000:.0f} kB each), sent by STOW-RS in requests "
        "of at most 4 MiB, with the template's defaults (de-identification, inference, series "
        "metadata, bundles on). Figures per stored instance, or per request for reads.",
        "",
        *_summary(m, prices),
        "",
        "### Backend calls per operation, by service",
        "",
        *_table(
            ["operation", *SERVICES, "all", "calls (service.Operation, per unit)"], _calls_rows(m.phases)
        ),
        "",
        f"### {stow.label}: per function, per instance",
        "",
        *_table(
            ["function", "invocations", "mean ms", "GB-s", "calls by service", "WRU", "RRU"],
            _functions_rows(stow, m.memory_mb),
        ),
        "",
        "### Billing units per operation",
        "",
        *_table(["operation", *(n for _, n in USAGE), "$ per million"], _units_rows(m.phases, m.memory_mb)),
        "",
        f"DynamoDB write units of the STOW, per instance, by table and index: {by_table}"
        + (f"; {cancelled} cancelled transactions left out." if cancelled else "."),
        f"DELETE: {delete.dynamodb.write_total / delete.per:.1f} write units per instance.",
        "",
        "### At rest after the STOW and its hooks, per instance",
        "",
        *_table(
            ["where", "items or objects", "base bytes", "GSI bytes", "bytes", "by index"],
            _at_rest_rows(m.stored, m),
        ),
        "",
        f"Bytes sent: {m.sent_bytes / m.instances:,.0f} per instance.",
        "",
        "### Dollars per million instances stored",
        "",
        *_table(["service", "ingest (STOW + hooks)", "at rest, per month"], _dollar_rows(m, stow, prices)[0]),
        "",
        _prices_note(prices),
        "",
        METHOD,
    ]
    return "\n".join(lines)
