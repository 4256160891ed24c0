"""Run every benchmark section and print a Markdown report (also saved to .local/bench.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from infra.bench import qido, stow, wado


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(".local/bench.md"))
    parser.add_argument("--quick", action="store_true", help="smaller runs, for a smoke test")
    args = parser.parse_args()
    sections = [stow.run(quick=args.quick), qido.run(quick=args.quick), wado.run(quick=args.quick)]
    report = "\n\n".join(sections) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
