"""The bodies WADO-RS ordered, built as BundleFunction builds them (tests drive the queue)."""

from __future__ import annotations

import boto3

from dicomweb_core.storage import ObjectReader
from dicomweb_core.wado.bundles import BundleBuilder, BundleComposer
from dicomweb_core.wado.prebuilt import BundleOrder


def fulfil_bundle_orders(queue_url: str, bucket: str) -> list[str]:
    """Build every order waiting on the bundle queue and delete its message; the outcomes."""
    sqs = boto3.client("sqs")
    builder = BundleBuilder(BundleComposer(bucket, ObjectReader(bucket)))
    outcomes: list[str] = []
    while messages := sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", []):
        for message in messages:
            outcomes.append(builder.build(BundleOrder.from_json(message["Body"])))
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
    return outcomes
