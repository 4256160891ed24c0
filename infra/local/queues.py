"""Lambda's SQS event source mapping, locally: poll a queue, invoke the function, delete.

As in the cloud: batches of up to BatchSize messages in the SQS event shape; with
ReportBatchItemFailures only the failed messages stay; a failed batch or message becomes
visible again and, after the queue's maxReceiveCount, SQS moves it to the dead-letter
queue. Locally a failed message is retried after a few seconds instead of the queue's
visibility timeout, so tests see retries and dead-lettering quickly.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from infra.local.workers import FunctionError, FunctionPool, InvocationTimeout
from infra.samtemplate import QueueSource

RETRY_AFTER_S = 2


class QueuePoller:
    def __init__(
        self,
        source: QueueSource,
        *,
        sqs: Any,
        queue_url: str,
        queue_arn: str,
        region: str,
        pool: FunctionPool,
        stopping: threading.Event,
        activity: Any,
    ) -> None:
        self.source = source
        self.sqs = sqs
        self.queue_url = queue_url
        self.queue_arn = queue_arn
        self.region = region
        self.pool = pool
        self.stopping = stopping
        self.activity = activity

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                with self.activity.running():
                    self.poll_once(wait_seconds=1)
            except Exception as exc:  # keep polling, as the managed poller does
                if not self.stopping.is_set():
                    print(f"[{self.source.function}] poller: {exc!r}", flush=True)
                time.sleep(1)

    def poll_once(self, *, wait_seconds: int = 0) -> int:
        messages = self.sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=min(self.source.batch_size, 10),
            WaitTimeSeconds=wait_seconds,
            AttributeNames=["All"],
        ).get("Messages", [])
        if not messages:
            return 0
        failed = self._invoke(messages)
        done = [m for m in messages if m["MessageId"] not in failed]
        if done:
            self.sqs.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)],
            )
        for message in messages:
            if message["MessageId"] in failed:
                self.sqs.change_message_visibility(
                    QueueUrl=self.queue_url,
                    ReceiptHandle=message["ReceiptHandle"],
                    VisibilityTimeout=RETRY_AFTER_S,
                )
        return len(messages)

    def _invoke(self, messages: list[dict[str, Any]]) -> set[str]:
        event = {"Records": [self._record(m) for m in messages]}
        try:
            result = self.pool.invoke(event)
        except (FunctionError, InvocationTimeout) as exc:
            print(f"[{self.source.function}] batch failed: {exc}", flush=True)
            return {m["MessageId"] for m in messages}
        if not self.source.reports_failures or not isinstance(result, dict):
            return set()
        return {f["itemIdentifier"] for f in result.get("batchItemFailures", [])}

    def _record(self, message: dict[str, Any]) -> dict[str, Any]:
        return {
            "messageId": message["MessageId"],
            "receiptHandle": message["ReceiptHandle"],
            "body": message["Body"],
            "attributes": message.get("Attributes", {}),
            "messageAttributes": message.get("MessageAttributes", {}),
            "md5OfBody": message.get("MD5OfBody", ""),
            "eventSource": "aws:sqs",
            "eventSourceARN": self.queue_arn,
            "awsRegion": self.region,
        }
