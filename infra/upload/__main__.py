"""Upload folders and zip files of DICOM files to a DICOMweb store.

    python -m infra.upload DIR_OR_ZIP... [--url URL]
        [--token T | --client-id ID --client-secret S --token-url URL [--scope dicomweb/write]]
        [--concurrency 4] [--journal PATH] [--no-progress]

Without a URL or credentials it targets the local stack (``make serve``) with the token of
its ``uploader`` role, read from ``$LOCAL_DIR/tokens.json``. For a deployed stack, give
the ``DicomWebUrl`` output as ``--url`` and either a token or the ``uploader`` app client's
id and secret with the ``TokenEndpoint`` output (client-credentials grant); each may also
come from the environment: DICOMWEB_URL, DICOMWEB_TOKEN, DICOMWEB_CLIENT_ID,
DICOMWEB_CLIENT_SECRET, DICOMWEB_TOKEN_URL.

Exit code: 0 every file stored (or already stored), 1 some failed (each is listed with its
reason), 2 a usage, credential or connection error.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from infra.upload.auth import AuthError, resolve_target
from infra.upload.client import UploadClient
from infra.upload.journal import Journal, default_path
from infra.upload.uploader import Uploader, UploadOptions

USAGE_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m infra.upload",
        description=(__doc__ or "").split("\n\n")[0],
        epilog=(__doc__ or "").split("\n\n", 2)[-1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "paths", nargs="+", type=Path, metavar="DIR_OR_ZIP", help="folders, zip files or files"
    )
    parser.add_argument("--url", help="the DICOMweb base URL (default: the local stack's)")
    parser.add_argument("--token", help="a bearer token (or DICOMWEB_TOKEN)")
    parser.add_argument("--client-id", help="a Cognito app client id, for the client-credentials grant")
    parser.add_argument("--client-secret", help="its secret (better: DICOMWEB_CLIENT_SECRET)")
    parser.add_argument("--token-url", help="the token endpoint (the stack's TokenEndpoint output)")
    parser.add_argument(
        "--scope", default="dicomweb/write", help="the scope to ask for (default: %(default)s)"
    )
    parser.add_argument("--concurrency", type=int, default=4, help="parallel requests (default: %(default)s)")
    parser.add_argument(
        "--journal", type=Path, help="the resume journal (default: <first DIR>/.dicomweb-upload.jsonl)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.paths if not p.exists()]
    if missing:
        parser.error(f"no such file or folder: {', '.join(missing)}")
    if not 1 <= args.concurrency <= 64:
        parser.error("--concurrency must be 1 to 64")
    journal_path = (args.journal or default_path(args.paths[0])).resolve()
    if not os.access(journal_path.parent, os.W_OK):
        parser.error(
            f"cannot write the journal in {journal_path.parent}; choose another place with --journal"
        )
    try:
        target = resolve_target(
            url=args.url,
            token=args.token,
            client_id=args.client_id,
            client_secret=args.client_secret,
            token_url=args.token_url,
            scope=args.scope,
        )
    except AuthError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    client = UploadClient(target.base_url, target.auth, concurrency=args.concurrency)
    try:
        with Journal(journal_path) as journal:
            uploader = Uploader(
                client,
                journal=journal,
                options=UploadOptions(concurrency=args.concurrency, progress=not args.no_progress),
            )
            report = uploader.run(args.paths)
    finally:
        client.close()
    print(report.summary(), flush=True)
    return report.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
