"""OHIF 3 against `make serve`: ``python -m tests.e2e.ohif`` while the local runtime runs.

Installs OHIF's published build from the npm registry into ``.cache/ohif/`` (once), then
serves it on http://localhost:3000, an origin the runtime's CORS policy allows by default
(``LOCAL_VIEWER_ORIGINS``), configured for the runtime in ``LOCAL_DIR`` (``.local``) with its
viewer token. The token is read again on every page load, so a restarted runtime's fresh
tokens are picked up by reloading the page.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from tests.e2e.ohif.install import install
from tests.e2e.ohif.site import OhifSite, app_config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--local-dir", type=Path, default=Path(os.environ.get("LOCAL_DIR", ".local")))
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--role", default="viewer", help="whose token OHIF sends (tokens.json)")
    args = parser.parse_args(argv)
    runtime_file = args.local_dir / "runtime.json"
    if not runtime_file.exists():
        parser.error(f"{runtime_file} does not exist: start the runtime first (make serve)")
    runtime = json.loads(runtime_file.read_text())
    base_url = str(runtime["base_url"])
    tokens_file = Path(runtime["tokens_file"])

    def config() -> str:
        tokens = json.loads(tokens_file.read_text())["tokens"]
        return app_config(base_url, tokens[args.role])

    installed = install(driver=False)
    site = OhifSite(installed.dist, config, port=args.port).start()
    print(f"OHIF {installed.ohif.version} for {base_url}: http://localhost:{site.port}/ (Ctrl-C stops)")
    try:
        site.wait()
    except KeyboardInterrupt:
        site.stop()


if __name__ == "__main__":
    main()
