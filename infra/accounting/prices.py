"""AWS list prices, us-east-1, that the bench turns measured usage into dollars with.

Taken on :data:`TAKEN` from the AWS pricing pages (and, where the stored copy of the page
was older, from dated third-party summaries of them, listed in :data:`SOURCES`). Free
tiers are left out: the figures are for a store past them. Update the numbers and the
date together.
"""

from __future__ import annotations

from dataclasses import dataclass

TAKEN = "2026-12-04"
GIB = 2**30  # AWS bills storage and ingestion per GB of 2^30 bytes
MILLION = 1_000_000


@dataclass(frozen=True)
class PriceList:
    region: str = "us-east-1"
    # DynamoDB on-demand, Standard table class (after the November 2024 price cut).
    dynamodb_per_million_wru: float = 0.625
    dynamodb_per_million_rru: float = 0.125
    dynamodb_per_gb_month: float = 0.25
    # S3 Standard: PUT/COPY/POST/LIST, GET/HEAD and others; DELETE is free. First 50 TB.
    s3_per_thousand_put: float = 0.005
    s3_per_thousand_get: float = 0.0004
    s3_per_gb_month: float = 0.023
    # EventBridge custom events, per 64 KB chunk of an entry.
    eventbridge_per_million_events: float = 1.00
    # SQS standard queues, per 64 KB chunk of a request, first 100 billion a month.
    sqs_per_million_requests: float = 0.40
    # Lambda, x86_64 (template.yaml: Architectures [x86_64]), first 6 billion GB-s a month.
    lambda_per_gb_second: float = 0.0000166667
    lambda_per_million_requests: float = 0.20
    # API Gateway HTTP API, first 300 million a month, metered per 512 KB of request.
    http_api_per_million_requests: float = 1.00
    # CloudWatch Logs, Standard log class.
    logs_per_gb_ingested: float = 0.50
    logs_per_gb_month: float = 0.03


PRICES = PriceList()

SOURCES = (
    "https://aws.amazon.com/dynamodb/pricing/on-demand/ (WRU $0.625/M, RRU $0.125/M since 2024-11)",
    "https://aws.amazon.com/s3/pricing/",
    "https://aws.amazon.com/eventbridge/pricing/",
    "https://aws.amazon.com/sqs/pricing/",
    "https://aws.amazon.com/lambda/pricing/",
    "https://aws.amazon.com/api-gateway/pricing/",
    "https://aws.amazon.com/cloudwatch/pricing/",
)
