"""Store DICOM files too large for a STOW-RS request into a running `make serve`.

A STOW-RS request carries about 4.4 MB of raw DICOM (the Lambda payload limit, as in the
cloud). Larger instances (whole-slide images, long multi-frame series) are stored here
through the same ingest service the STOW function uses: the same Part 10 validation, S3
object, index items and ``InstanceStored`` event, against the runtime's moto::

    python -m infra.local.ingest FILE... [--local-dir .local]

The deployed stack has no equivalent yet (a presigned-upload path indexed by an S3 event
is planned); see docs/conformance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--local-dir", type=Path, default=Path(os.environ.get("LOCAL_DIR", ".local")))
    args = parser.parse_args(argv)
    runtime = json.loads((args.local_dir / "runtime.json").read_text())
    resources = runtime["resources"]
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": runtime["moto_endpoint_url"],
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "AWS_DEFAULT_REGION": runtime["region"],
            "TABLE_NAME": resources["IndexTable"],
            "BUCKET_NAME": resources["InstanceBucket"],
            "EVENT_BUS_NAME": resources["EventBus"],
            "PUBLIC_BASE_URL": runtime["base_url"],
        }
    )
    # Imported after the environment names the runtime's resources and endpoint.
    from dicomweb_core.config import settings  # noqa: PLC0415
    from dicomweb_core.index.models import bind_table  # noqa: PLC0415
    from dicomweb_core.stow.service import StowService  # noqa: PLC0415

    bind_table(resources["IndexTable"], region=runtime["region"])
    config = settings()
    service = StowService.of(config)
    failed = 0
    for path in args.files:
        outcome = service.store_all([memoryview(path.read_bytes())], study=None)
        for stored in outcome.stored:
            print(json.dumps({"file": str(path), "stored": stored.sop_instance_uid}))
        for failure in outcome.failures:
            failed += 1
            print(json.dumps({"file": str(path), "failure": failure.reason, "message": failure.message}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
