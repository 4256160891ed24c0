"""Run the reconciliation job now, in the running local runtime: ``python -m infra.local.reconcile``.

The runtime (``make serve``) runs ``ReconcileFunction`` on its schedule from template.yaml
(infra/local/scheduler.py); this asks it for a run at once, through its worker pool, and
prints the function's answer: the counts and where the report is
(``reports/reconcile/<start>.json`` in the instance bucket). The runtime's
``$LOCAL_DIR`` (default ``.local``) is where it listens for the request.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from infra.local.scheduler import request_run, runtime_running

FUNCTION = "ReconcileFunction"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--local-dir", type=Path, default=Path(os.environ.get("LOCAL_DIR", ".local")))
    parser.add_argument("--timeout", type=float, default=960.0, help="seconds to wait for the run")
    args = parser.parse_args(argv)
    local_dir = args.local_dir.resolve()
    if not runtime_running(local_dir):
        parser.error(f"no local runtime is running in {local_dir}: start one with `make serve`")
    answer = request_run(local_dir, FUNCTION, event={"trigger": "on-demand"}, timeout=args.timeout)
    print(json.dumps(answer, indent=2))
    return 0 if answer.get("ok") else 1


if __name__ == "__main__":
    raise SystemExit(main())
