"""An instance's index copies stay under 1 KB, one write unit each, with the longest UIDs.

DynamoDB bills a GSI write by the size of the index entry: the table and index keys plus
the projected attributes (docs/index-design.md). The projection (index.models.
INDEX_PROJECTION) keeps an instance's three entries under 1 KB even when every UID has the
64 characters DICOM allows (906-962 bytes against the item's 1,827 when this was written:
a thin margin, which this test guards); the object's location and checksums stay in the
base item.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from dicomweb_core.config import Limits
from dicomweb_core.dicom.instance import read_instance
from dicomweb_core.index import items
from dicomweb_core.index.write_results import StoredObject
from dicomweb_core.storage import instance_key, new_write_id
from infra.accounting.dynamodb import TableSchema
from infra.accounting.itemsize import item_size
from infra.datasets.generate import make_dataset, to_part10
from infra.samtemplate import load_template

KB = 1024


def _uid(tail: int) -> str:
    """A 64-character UID (the longest PS3.5 allows), as some vendors' UIDs are."""
    root = "1.2.840.113619.2.55.3.604688119.868.1234567890."
    return (root + str(tail) * 64)[:64].rstrip(".")


def _schema(name: str) -> TableSchema:
    properties = load_template().resources_of_type("AWS::DynamoDB::Table")[name]["Properties"]
    return TableSchema.from_description({"TableName": name, **properties})


def _instance_item() -> dict[str, Any]:
    ds = make_dataset(
        study=_uid(1),
        series=_uid(2),
        sop=_uid(3),
        rows=512,
        columns=512,
        InstanceNumber=123,
        ContentDate="20240102",
        ContentTime="101010.123456",
        AcquisitionNumber=1,
        ImageType=["ORIGINAL", "PRIMARY", "AXIAL"],
    )
    ds.PixelData = bytes(512 * 512 * 2)
    instance = read_instance(memoryview(to_part10(ds)), limits=Limits())
    key = instance_key(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, new_write_id())
    stored = StoredObject(
        key, "3sL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY+MTRCxf3vjVBH40Nr8X8gdRQBpUMLUo", "ab" * 32, 525_000
    )
    study_sort = f"20240102101010#{ds.StudyInstanceUID}"
    item = items.instance_item(
        instance, stored, datetime.now(UTC), series_sort=f"{study_sort}#{ds.SeriesInstanceUID}"
    )
    serialized: dict[str, Any] = item.serialize()
    return serialized


@pytest.mark.parametrize("table", ["IndexTable", "DeidTable"])
def test_an_instance_index_entry_is_one_write_unit_with_64_character_uids(table: str) -> None:
    # Given an instance item whose UIDs all have 64 characters
    item = _instance_item()
    schema = _schema(table)
    # Then it is in gsi2, gsi3 and gsi4, each entry under 1 KB, though the item itself is not
    entries = {index.name: schema.entry_size(item, index) for index in schema.indexes}
    sizes = {name: size for name, size in entries.items() if size is not None}
    assert set(sizes) == {"gsi2", "gsi3", "gsi4"}
    assert all(size <= KB for size in sizes.values()), sizes
    assert item_size(item) > KB
