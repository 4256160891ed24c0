"""One QIDO-RS request, from payload-v2 event to response (PS3.18 §10.6)."""

from __future__ import annotations

import json
from http import HTTPStatus

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEventV2

from dicomweb_core import http
from dicomweb_core.config import Settings
from dicomweb_core.mediatype import MediaType
from dicomweb_core.negotiation import negotiate
from dicomweb_core.observability import MetricUnit, metrics
from dicomweb_core.qido.attributes import Level
from dicomweb_core.qido.query import parse_query
from dicomweb_core.qido.render import result, xml_multipart
from dicomweb_core.qido.search import search
from dicomweb_core.stores import StoreRoot
from dicomweb_core.uri import DicomWebURI

JSON_OFFER = MediaType("application/dicom+json")
XML_OFFER = MediaType("multipart/related", (("type", "application/dicom+xml"),))
PLAIN_JSON_OFFER = MediaType("application/json")


def respond(
    event: APIGatewayProxyEventV2,
    level: Level,
    *,
    settings: Settings,
    root: StoreRoot,
    study: str | None = None,
    series: str | None = None,
) -> Response[bytes]:
    base_url = root.base_url(http.base_url(event, settings.public_base_url))
    scope = DicomWebURI(base_url, study=study, series=series)  # validates the path UIDs
    raw_query = event.get("rawQueryString") or ""
    chosen = negotiate(
        http.header(event, "accept"),
        [JSON_OFFER, XML_OFFER, PLAIN_JSON_OFFER],
        query=dict(event.get("queryStringParameters") or {}),
    )
    query = parse_query(level, raw_query, study=scope.study, series=scope.series)
    found = search(query)
    metrics.add_metric("QidoResults", MetricUnit.Count, len(found.matches))
    metrics.add_metric("QidoItemsRead", MetricUnit.Count, found.reads.items)
    warnings = [http.warning_value(w) for w in found.warnings]
    if found.more:
        warnings.append(http.warning_value("There are additional results that can be requested."))
    headers: dict[str, str | list[str]] = {"Warning": warnings} if warnings else {}
    if not found.matches:
        return Response(status_code=int(HTTPStatus.NO_CONTENT), body=b"", headers=headers)
    rows = [result(item, base_url=base_url) for item in found.matches]
    if chosen is XML_OFFER:
        body, content_type = xml_multipart(rows)
    else:
        body, content_type = json.dumps(rows, separators=(",", ":")).encode(), http.DICOM_JSON
    return Response(status_code=int(HTTPStatus.OK), content_type=content_type, body=body, headers=headers)
