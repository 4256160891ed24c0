"""Run every benchmark section and print a Markdown report (also saved to .local/bench.md).

The cost section also writes docs/cost.md, which the README links to; the orthanc and
breakdown sections write docs/bench-vs-orthanc.md (breakdown its "Where the time goes")."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from infra.bench import breakdown, cost, parallel, qido, render, stow, upload, versus_orthanc, wado

SECTIONS: dict[str, Callable[..., str]] = {
    "stow": stow.run,
    "parallel": parallel.run,  # 16 senders into one study (issue 14)
    "qido": qido.run,
    "wado": wado.run,
    "render": render.run,
    "upload": upload.run,
    "cost": cost.run,
    "orthanc": versus_orthanc.run,  # side by side with Orthanc (writes docs/bench-vs-orthanc.md)
    # where the missed operations' time goes, and the cloud path's estimate (after "orthanc",
    # whose figures it compares with)
    "breakdown": breakdown.run,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(".local/bench.md"))
    parser.add_argument("--quick", action="store_true", help="smaller runs, for a smoke test")
    parser.add_argument(
        "--only", nargs="+", choices=sorted(SECTIONS), default=list(SECTIONS), help="run these sections"
    )
    parser.add_argument(
        "--cost-instances", type=int, default=None, help="instances in the cost section's series (300)"
    )
    args = parser.parse_args()
    sections = []
    for name in args.only:
        if name == "cost":
            # A full run rewrites docs/cost.md; a quick one (a smoke test) leaves it alone.
            out = None if args.quick else cost.COST_DOC
            sections.append(cost.run(quick=args.quick, instances=args.cost_instances, out=out))
        else:
            sections.append(SECTIONS[name](quick=args.quick))
    report = "\n\n".join(sections) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
