"""Test data on disk: pydicom's bundled files and pydicom-data, never the network."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import data_store  # pydicom-data
import pydicom

PYDICOM_TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
PYDICOM_DATA_FILES = Path(data_store.__file__).parent / "data"


@cache
def part10_files() -> tuple[Path, ...]:
    """Every file of both collections that starts like a Part 10 file ('DICM' at 128)."""
    found = []
    for folder in (PYDICOM_TEST_FILES, PYDICOM_DATA_FILES):
        for path in sorted(folder.rglob("*")):
            if path.is_file() and _has_part10_prefix(path):
                found.append(path)
    return tuple(found)


def _has_part10_prefix(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(132)
    return len(head) == 132 and head[128:] == b"DICM"


def test_file(name: str) -> Path:
    """A named file from either collection (e.g. ``CT_small.dcm``)."""
    for folder in (PYDICOM_TEST_FILES, PYDICOM_DATA_FILES):
        matches = sorted(folder.rglob(name))
        if matches:
            return matches[0]
    raise FileNotFoundError(name)
