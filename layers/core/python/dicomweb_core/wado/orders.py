"""Bodies of large retrievals ordered from the bundle builder: one SQS message per order
(``BundleQueue``, read by BundleFunction; ``wado.redirects`` places them)."""

from __future__ import annotations

from functools import cached_property
from typing import Any

import boto3

from dicomweb_core.wado.prebuilt import BundleOrder


class QueuedBundleOrders:
    """Places orders on the bundle queue."""

    def __init__(self, queue_url: str, *, client: Any = None) -> None:
        self.queue_url = queue_url
        self._client = client

    @cached_property
    def client(self) -> Any:
        return self._client or boto3.client("sqs")

    def place(self, order: BundleOrder) -> None:
        self.client.send_message(QueueUrl=self.queue_url, MessageBody=order.to_json())
