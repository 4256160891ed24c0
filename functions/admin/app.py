"""Admin handler: POST /admin/deidentify/studies/{study} queues its de-identification (202)."""

from __future__ import annotations

import json
import os
from http import HTTPStatus
from typing import Any

import boto3
from aws_lambda_powertools.event_handler import Response

from dicomweb_core.config import settings
from dicomweb_core.entry.api import api_app, api_handler, respond
from dicomweb_core.hooks.deid.requests import enqueue, study_requests
from dicomweb_core.index.access import Index
from dicomweb_core.observability import MetricUnit, metrics, tracer
from dicomweb_core.web import responses
from dicomweb_core.web.reply import Reply
from dicomweb_core.web.uri import DicomWebURI

app = api_app()
SETTINGS = settings()
QUEUE_URL = os.environ["DEID_QUEUE_URL"]
SQS = boto3.client("sqs")
INDEX = Index.for_table(SETTINGS.table_name)


@app.post("/admin/deidentify/studies/<study>")
@tracer.capture_method
def deidentify_study(study: str) -> Response[Any]:
    uri = DicomWebURI(responses.base_url(app.current_event, SETTINGS.public_base_url), study=study)
    assert uri.study is not None
    queued = enqueue(SQS, QUEUE_URL, study_requests(INDEX, uri.study))
    metrics.add_metric("DeidRequested", MetricUnit.Count, queued)
    body = {"study": uri.study, "instancesQueued": queued, "status": "accepted"}
    return respond(Reply(int(HTTPStatus.ACCEPTED), json.dumps(body), "application/json"))


handler = api_handler(app)
