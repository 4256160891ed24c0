"""Print the backend calls the local runtime recorded, per function and trigger.

Usage: ``COUNT_BACKEND_CALLS=1 make serve``, use the stack, then
``python -m infra.accounting [directory]`` (default ``$LOCAL_DIR/backend-calls``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from infra.accounting.invocations import calls_directory, load_invocations, summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("directory", type=Path, nargs="?", default=calls_directory("1"))
    args = parser.parse_args(argv)
    invocations = load_invocations(args.directory)
    if not invocations:
        print(f"no invocations recorded in {args.directory} (was COUNT_BACKEND_CALLS set?)")
        return 1
    print(summary(invocations))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
