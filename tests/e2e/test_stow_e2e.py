"""STOW-RS end to end: every usable test file through dicomweb-client, then S3, the index and the bus.

The corpus is every Part 10 file of pydicom's test files and pydicom-data that the server's own
``read_instance`` accepts and that fits the API's request limit. Several files reuse a SOP
Instance UID (the same image in other transfer syntaxes): the first one is stored, the others
must be refused as duplicates with different content (0x0111) or acknowledged if identical.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from dicomweb_client import DICOMwebClient

from dicomweb_core.config import Limits
from dicomweb_core.dicom.failures import InstanceRejected
from dicomweb_core.dicom.instance import read_instance
from infra.datasets.dicom_files import part10_files
from tests.e2e.conftest import Runtime
from tests.e2e.helpers import (
    API_LIMIT_BYTES,
    DUPLICATE_SOP_INSTANCE,
    TIMEOUT_S,
    failed,
    instance_prefix,
    instance_url,
    referenced,
    stow,
    zero_preamble,
)

pytestmark = pytest.mark.e2e

SINGLE_FILE_CALLS = 3  # the first few files go one per request, the rest in batches
PART_OVERHEAD = 128  # boundary line, part headers and CRLF per part, generously
CHUNKED_ABOVE = 10**6  # dicomweb-client sends bodies over its chunk_size (1 MB) chunked


@dataclass(frozen=True)
class CorpusFile:
    path: Path
    data: bytes
    sha256: str  # of the bytes as stored: preamble zeroed
    study: str
    series: str
    sop: str
    sop_class: str
    client_sends_file_bytes: bool  # dicomweb-client's re-encoding (dcmwrite) reproduces the file

    @property
    def prefix(self) -> str:
        return instance_prefix(self.study, self.series, self.sop)

    def dataset(self) -> pydicom.Dataset:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(io.BytesIO(self.data))


@dataclass
class Corpus:
    primary: list[CorpusFile] = field(default_factory=list)  # first file of each SOP Instance UID
    duplicates: list[CorpusFile] = field(default_factory=list)  # later files reusing a stored UID
    oversize: list[CorpusFile] = field(default_factory=list)  # accepted, but over the API limit

    def original(self, sop: str) -> CorpusFile:
        return next(f for f in self.primary if f.sop == sop)


def _client_sends_file_bytes(data: bytes) -> bool:
    """Whether dicomweb-client (dcmread + dcmwrite) would send exactly these bytes."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            buffer = io.BytesIO()
            pydicom.dcmwrite(buffer, pydicom.dcmread(io.BytesIO(data)))
    except Exception:
        return False
    return buffer.getvalue() == data


@cache
def corpus() -> Corpus:
    """Classify the test files exactly as the server would (same code, default limits)."""
    result = Corpus()
    seen: set[str] = set()
    for path in part10_files():
        data = path.read_bytes()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                instance = read_instance(data, limits=Limits())
        except InstanceRejected:
            continue
        entry = CorpusFile(
            path=path,
            data=data,
            sha256=hashlib.sha256(zero_preamble(data)).hexdigest(),
            study=instance.study_instance_uid,
            series=instance.series_instance_uid,
            sop=instance.sop_instance_uid,
            sop_class=instance.sop_class_uid,
            client_sends_file_bytes=len(data) <= API_LIMIT_BYTES and _client_sends_file_bytes(data),
        )
        if len(data) > API_LIMIT_BYTES:
            result.oversize.append(entry)
        elif instance.sop_instance_uid in seen:
            result.duplicates.append(entry)
        else:
            seen.add(instance.sop_instance_uid)
            result.primary.append(entry)
    return result


def batches(files: Sequence[CorpusFile], *, singles: int = 0) -> Iterator[list[CorpusFile]]:
    """``singles`` one-file batches, then batches whose request body stays under the API limit."""
    for entry in files[:singles]:
        yield [entry]
    batch: list[CorpusFile] = []
    size = 0
    for entry in files[singles:]:
        cost = len(entry.data) + PART_OVERHEAD
        if batch and size + cost > API_LIMIT_BYTES:
            yield batch
            batch, size = [], 0
        batch.append(entry)
        size += cost
    if batch:
        yield batch


@dataclass
class Call:
    files: list[CorpusFile]
    status: int
    payload: dict[str, Any]
    chunked: bool


@dataclass
class StoreRun:
    calls: list[Call]


@pytest.fixture(scope="module")
def stored(runtime: Runtime) -> StoreRun:
    """Given the corpus, when every usable file is stored (dicomweb-client where it sends the file
    bytes unchanged, raw requests for the few files pydicom would re-encode), return each call."""
    files = corpus()
    statuses: list[requests.Response] = []

    def record(response: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
        statuses.append(response)
        return response

    client = DICOMwebClient(
        url=runtime.base_url,
        headers={"Authorization": f"Bearer {runtime.tokens['uploader']}"},
        callback=record,
        timeout=TIMEOUT_S,
    )
    by_client = [f for f in files.primary if f.client_sends_file_bytes]
    by_requests = [f for f in files.primary if not f.client_sends_file_bytes]
    calls = []
    for batch in batches(by_client, singles=SINGLE_FILE_CALLS):
        result = client.store_instances([entry.dataset() for entry in batch])
        response = statuses[-1]
        chunked = response.request.headers.get("Transfer-Encoding", "").lower() == "chunked"
        calls.append(Call(batch, response.status_code, result.to_json_dict(), chunked))
    with requests.Session() as session:
        for batch in batches(by_requests):
            response = stow(
                runtime.base_url,
                [entry.data for entry in batch],
                token=runtime.tokens["uploader"],
                session=session,
            )
            assert response.status_code == HTTPStatus.OK, f"{response.text}\n{runtime.log_tail()}"
            calls.append(Call(batch, response.status_code, response.json(), chunked=False))
    return StoreRun(calls)


def test_corpus_is_large_enough_to_mean_something() -> None:
    # Given the classified corpus
    files = corpus()
    # Then it has many instances, over several studies, and the batching exercises chunked bodies
    assert len(files.primary) > 100
    assert len({f.study for f in files.primary}) > 20
    client_batches = list(batches([f for f in files.primary if f.client_sends_file_bytes], singles=3))
    assert any(sum(len(f.data) for f in batch) > CHUNKED_ABOVE for batch in client_batches)
    assert any(len(batch) > 1 for batch in client_batches)


def test_every_instance_is_acknowledged_with_its_retrieve_url(runtime: Runtime, stored: StoreRun) -> None:
    # Given the store calls made by the fixture
    # Then each call succeeded and its ReferencedSOPSequence lists exactly the instances it sent
    assert any(call.chunked for call in stored.calls), "no request was sent with chunked encoding"
    for call in stored.calls:
        names = [f.path.name for f in call.files]
        assert call.status == HTTPStatus.OK, (names, call.payload)
        assert failed(call.payload) == [], names
        items = referenced(call.payload)
        assert sorted(i.sop_instance_uid for i in items) == sorted(f.sop for f in call.files), names
        by_sop = {i.sop_instance_uid: i for i in items}
        for entry in call.files:
            item = by_sop[entry.sop]
            assert item.retrieve_url == instance_url(runtime.base_url, entry.study, entry.series, entry.sop)
            assert item.sop_class_uid == entry.sop_class
    stored_sops = [f.sop for call in stored.calls for f in call.files]
    assert sorted(stored_sops) == sorted(f.sop for f in corpus().primary)


def test_every_object_is_in_s3_as_sent_with_the_preamble_zeroed(runtime: Runtime, stored: StoreRun) -> None:
    # Given every file stored
    files = corpus().primary
    # When each object is read back from the bucket
    # Then it is under studies/{st}/series/{se}/instances/{sop}/, byte-identical but for the preamble
    listed = {
        obj["Key"]
        for page in runtime.s3.get_paginator("list_objects_v2").paginate(
            Bucket=runtime.bucket, Prefix="studies/"
        )
        for obj in page.get("Contents", [])
    }
    missing = [f.path.name for f in files if not any(k.startswith(f.prefix) for k in listed)]
    assert missing == []
    for entry in files:
        body = runtime.instance_bytes(entry.sop)
        assert body is not None, entry.path.name
        assert body[:128] == bytes(128), entry.path.name
        assert body == zero_preamble(entry.data), entry.path.name


INFERENCE_RESULT_CLASSES = {"1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34"}  # SEG, 3D SR


def test_index_has_every_instance_and_true_study_counts(runtime: Runtime, stored: StoreRun) -> None:
    # Given every file stored
    files = corpus().primary
    # When the index table is scanned
    items = runtime.scan_index()
    # Then every SOP Instance UID is claimed for its study and series, and its instance item
    # there points at its object
    claims = {item["pk"]["S"]: item for item in items if item["pk"]["S"].startswith("SOP#")}
    indexed = {item["sop_uid"]["S"]: item for item in items if item["sk"]["S"].startswith("INSTANCE#")}
    for entry in files:
        claim, item = claims.get(f"SOP#{entry.sop}"), indexed.get(entry.sop)
        assert claim is not None and item is not None, entry.path.name
        assert (claim["study_uid"]["S"], claim["series_uid"]["S"]) == (entry.study, entry.series)
        assert (item["study_uid"]["S"], item["series_uid"]["S"]) == (entry.study, entry.series)
        assert item["s3_key"]["S"].startswith(entry.prefix)
        assert item["sha256"]["S"] == entry.sha256
    # And each study item counts exactly the instances and series the files hold, plus the
    # AI results the inference hook added to CT studies (SEG and SR, nothing else)
    instances: Counter[str] = Counter(f.study for f in files)
    series: defaultdict[str, set[str]] = defaultdict(set)
    for entry in files:
        series[entry.study].add(entry.series)
    ours = {f.sop for f in files}
    for sop, item in indexed.items():
        study = item["study_uid"]["S"]
        if sop in ours or study not in instances:
            continue
        assert item["sop_class_uid"]["S"] in INFERENCE_RESULT_CLASSES, item
        instances[study] += 1
        series[study].add(item["series_uid"]["S"])
    studies = {item["pk"]["S"]: item for item in items if item["sk"]["S"] == "STUDY"}
    for study, count in instances.items():
        item = studies.get(f"STUDY#{study}")
        assert item is not None, study
        assert int(item["instance_count"]["N"]) == count, study
        assert int(item["series_count"]["N"]) == len(series[study]), study
    # And each series item counts its instances
    per_series: Counter[tuple[str, str]] = Counter((f.study, f.series) for f in files)
    series_items = {(item["pk"]["S"], item["sk"]["S"]): item for item in items}
    for (study, series_uid), count in per_series.items():
        item = series_items[(f"STUDY#{study}", f"SERIES#{series_uid}")]
        assert int(item["instance_count"]["N"]) == count, (study, series_uid)


def test_an_instance_stored_event_per_instance(runtime: Runtime, stored: StoreRun) -> None:
    # Given every file stored
    files = corpus().primary
    expected = {f.sop for f in files}

    def stored_sops(events: list[dict[str, Any]]) -> set[str]:
        return {e["detail"]["sopInstanceUID"] for e in events if e.get("detail-type") == "InstanceStored"}

    # When the bus has delivered its events to events.jsonl
    events = runtime.wait_for_events(lambda events: expected <= stored_sops(events))
    # Then each instance has an InstanceStored event with its UIDs and object
    assert expected - stored_sops(events) == set()
    by_sop = {e["detail"]["sopInstanceUID"]: e for e in events if e.get("detail-type") == "InstanceStored"}
    for entry in files:
        event = by_sop[entry.sop]
        assert event["source"] == "dicomweb"
        detail = event["detail"]
        assert detail["studyInstanceUID"] == entry.study
        assert detail["seriesInstanceUID"] == entry.series
        assert detail["sopClassUID"] == entry.sop_class
        assert detail["bucket"] == runtime.bucket
        assert detail["s3Key"].startswith(entry.prefix)
        assert detail["size"] == len(entry.data)


def test_files_reusing_a_stored_sop_instance_uid_are_refused(runtime: Runtime, stored: StoreRun) -> None:
    # Given files whose SOP Instance UID is already stored (other transfer syntaxes of one image)
    files = corpus()
    assert files.duplicates, "the corpus has no reused SOP Instance UIDs any more"
    for batch in batches(files.duplicates):
        # When they are stored
        response = stow(runtime.base_url, [f.data for f in batch], token=runtime.tokens["uploader"])
        payload = response.json()
        # Then identical content is acknowledged and different content refused with 0x0111
        same = [f for f in batch if f.sha256 == files.original(f.sop).sha256]
        different = [f for f in batch if f.sha256 != files.original(f.sop).sha256]
        if not same:
            expected_status = HTTPStatus.CONFLICT
        elif different:
            expected_status = HTTPStatus.ACCEPTED
        else:
            expected_status = HTTPStatus.OK
        assert response.status_code == expected_status, payload
        assert sorted(i.sop_instance_uid for i in referenced(payload)) == sorted(f.sop for f in same)
        assert sorted((f.sop_instance_uid, f.reason) for f in failed(payload)) == sorted(
            (f.sop, DUPLICATE_SOP_INSTANCE) for f in different
        )
    # And the originals are still what S3 holds and the index counts
    for entry in files.duplicates:
        original = files.original(entry.sop)
        assert runtime.instance_bytes(original.sop) == zero_preamble(original.data), entry.path.name
    studies = Counter(f.study for f in files.primary)
    for study in {f.study for f in files.duplicates} & set(studies):
        counts = runtime.study_counts(study)
        assert counts is not None
        assert counts[0] == studies[study], study


def test_a_file_over_the_api_payload_limit_is_413(runtime: Runtime, stored: StoreRun) -> None:
    # Given the largest accepted file (its base64 event exceeds Lambda's 6 MB request payload)
    largest = max(corpus().oversize, key=lambda f: len(f.data))
    assert len(largest.data) * 4 / 3 > 6 * 1024 * 1024
    before = runtime.indexed_instance(largest.sop)
    # When it is stored in one request
    response = requests.post(
        f"{runtime.base_url}/studies",
        data=largest.data,
        headers={**runtime.auth("uploader"), "Content-Type": "application/dicom"},
        timeout=TIMEOUT_S,
    )
    # Then the API refuses it with 413 and nothing changes
    assert response.status_code == HTTPStatus.REQUEST_ENTITY_TOO_LARGE, response.text
    assert runtime.indexed_instance(largest.sop) == before
