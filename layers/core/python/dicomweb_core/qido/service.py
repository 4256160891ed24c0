"""One QIDO-RS request, from its parsed value to a reply (PS3.18 §10.6)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus

from dicomweb_core.index.table import IndexTable
from dicomweb_core.observability import MetricUnit, metrics
from dicomweb_core.qido.attributes import Level
from dicomweb_core.qido.query import parse_query
from dicomweb_core.qido.render import DICOM_XML, result, xml_multipart
from dicomweb_core.qido.search import search
from dicomweb_core.web.mediatype import MediaType
from dicomweb_core.web.multipart import multipart_content_type, new_boundary
from dicomweb_core.web.negotiation import negotiate
from dicomweb_core.web.reply import DICOM_JSON, Reply, warning_value
from dicomweb_core.web.uri import DicomWebURI

JSON_OFFER = MediaType(DICOM_JSON)
XML_OFFER = MediaType("multipart/related", (("type", DICOM_XML),))
PLAIN_JSON_OFFER = MediaType("application/json")


@dataclass(frozen=True, slots=True)
class SearchRequest:
    """A QIDO-RS request as the handler parsed it from the HTTP request."""

    level: Level
    base_url: str  # the public root of the store searched (``.../deid`` for the research store)
    query_string: str  # raw, as sent: parse_query keeps repeated keys and their order
    accept: str | None
    parameters: Mapping[str, str] = field(default_factory=dict)  # for ``accept=`` (§8.3.3.1)
    study: str | None = None
    series: str | None = None


def search_reply(request: SearchRequest, table: IndexTable | None = None) -> Reply:
    """The matches as DICOM JSON (an array) or multipart DICOM XML (PS3.18 §10.6.3).

    No match is ``200`` with an empty result: ``[]`` in JSON, a zero-length payload in XML
    (a multipart body needs at least one part). PS3.18 §8.3.4.4.1 said ``204 No Content``;
    CP-2473 (WG-27) replaces it with ``200``, which RFC 9110 §15.3.1 allows to be empty and
    which is what Orthanc's DICOMweb client and dicomtrolley can read (both fail on 204).
    """
    scope = DicomWebURI(request.base_url, study=request.study, series=request.series)  # validates UIDs
    chosen = negotiate(request.accept, [JSON_OFFER, XML_OFFER, PLAIN_JSON_OFFER], query=request.parameters)
    query = parse_query(request.level, request.query_string, study=scope.study, series=scope.series)
    found = search(query, table=table)
    metrics.add_metric("QidoResults", MetricUnit.Count, len(found.matches))
    metrics.add_metric("QidoItemsRead", MetricUnit.Count, found.reads.items)
    warnings = [warning_value(w) for w in found.warnings]
    if found.more:
        warnings.append(warning_value("There are additional results that can be requested."))
    headers: dict[str, str | list[str]] = {"Warning": warnings} if warnings else {}
    rows = [
        result(item, merged, base_url=request.base_url)
        for item, merged in zip(found.matches, found.views, strict=True)
    ]
    if chosen is XML_OFFER:
        if not rows:
            return Reply(int(HTTPStatus.OK), b"", multipart_content_type(new_boundary(), DICOM_XML), headers)
        body, content_type = xml_multipart(rows)
    else:
        body, content_type = json.dumps(rows, separators=(",", ":")).encode(), DICOM_JSON
    return Reply(int(HTTPStatus.OK), body, content_type, headers)
