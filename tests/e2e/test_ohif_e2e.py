"""OHIF 3 in a real browser against the local runtime: the study list, the image, every thumbnail.

Everything comes from the package registries, installed by the test itself and reused when
already there (tests/e2e/ohif/install.py): Debian's ``chromium``; OHIF's published build
(``npm pack @ohif/app``, version and SHA-512 pinned in tests/e2e/ohif/package.json); and
``playwright-core``, the driver alone, which launches ``/usr/bin/chromium`` and never
downloads a browser. The browser is driven from Node (tests/e2e/ohif/drive.mjs) because
playwright-core is an npm package pinned by a lockfile; Python's ``playwright`` wheel would
carry a second copy of the same Node driver into requirements/dev.txt. The script records
what the page shows and every request to the store; this module judges.

The runtime is this module's own: its CORS policy allows the OHIF site's origin (a free port),
and de-identification and inference are off, so the study holds exactly the two CT series
stored here. The OHIF site is configured as a viewer would be (tests/e2e/ohif/site.py):
the viewer role's bearer token, server-side thumbnails (``/thumbnail?viewport=256,256``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
import requests
from PIL import Image

from infra.datasets.generate import to_part10
from infra.datasets.synthetic_ct import ROOT, SLICES, STUDY_UID, ct_series
from tests.e2e.conftest import REPO_ROOT, Runtime, start_runtime
from tests.e2e.debian import ensure_packages_fixture  # noqa: F401 (fixture)
from tests.e2e.helpers import stow
from tests.e2e.ohif.install import HERE as OHIF_DIR
from tests.e2e.ohif.install import Installed, InstallError, install
from tests.e2e.ohif.site import OhifSite, app_config

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
NODE_MAJOR = 20  # playwright-core's engines field
SERIES = {f"{ROOT}.2": (3, "Axial 2.5 mm"), f"{ROOT}.4": (4, "Axial 2.5 mm, repeat")}
PATIENT_TEXT = "Phantom, Body"  # OHIF shows Phantom^Body as "Family, Given"
STUDY_DESCRIPTION = "Synthetic body phantom"
STEP_TIMEOUT_MS = 60_000
DRIVE_TIMEOUT_S = 420
READY_TIMEOUT_S = 60
# A thumbnail or viewport "shows a picture" when some of its pixels are lit (a channel >= 40 of
# 255) and some are dark: neither a black square nor a flat placeholder.
MIN_LIT = 0.02
MIN_DARK = 0.02
# Where a screenshot for the README goes when UPDATE_SCREENSHOTS=1 (the test never changes a
# tracked file otherwise).
README_SCREENSHOT = REPO_ROOT / "docs" / "images" / "ohif-study.png"


@dataclass
class Viewer:
    """The OHIF site, the runtime it reads from, and what the browser reported."""

    runtime: Runtime
    site: OhifSite
    installed: Installed
    artifacts: Path
    report: dict[str, Any]


def _node_major() -> int | None:
    node = shutil.which("node")
    if node is None:
        return None
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=False).stdout
    match = re.match(r"v(\d+)\.", version.strip())
    return int(match.group(1)) if match else None


def _install(ensure_packages: Callable[..., None]) -> Installed:
    """Debian's chromium, then OHIF and playwright-core from npm; fails the test with the reason."""
    started = time.monotonic()
    ensure_packages("chromium")
    major = _node_major()
    if major is None or major < NODE_MAJOR:
        pytest.fail(f"Node.js {NODE_MAJOR} or newer is needed for playwright-core (found: {major})")
    try:
        installed = install()
    except InstallError as error:
        pytest.fail(str(error))
    print(f"\nOHIF harness ready in {time.monotonic() - started:.1f} s ({installed.dist})")
    return installed


def _study() -> list[bytes]:
    """Two CT series of the synthetic phantom in one study (20 slices of 64 x 64 each)."""
    payloads = []
    for seed, (series_uid, (number, description)) in zip((7, 11), SERIES.items(), strict=True):
        for ds in ct_series(seed=seed, shuffle=False, series_uid=series_uid):
            ds.SeriesNumber = number
            ds.SeriesDescription = description
            ds.StudyDescription = STUDY_DESCRIPTION
            payloads.append(to_part10(ds))
    return payloads


def _wait_until_listed(runtime: Runtime) -> None:
    """Wait for the study to be stable and listed with both series (aggregates are exact by then)."""
    runtime.wait_for_events(
        lambda events: any(
            e["detail-type"] == "StudyStable" and e["detail"].get("studyInstanceUID") == STUDY_UID
            for e in events
        ),
        timeout=READY_TIMEOUT_S,
    )
    deadline = time.monotonic() + READY_TIMEOUT_S
    expected = {"00201206": len(SERIES), "00201208": len(SERIES) * SLICES}
    while True:
        answer = requests.get(
            f"{runtime.base_url}/studies",
            params={"StudyInstanceUID": STUDY_UID, "includefield": "00201206,00201208"},
            headers=runtime.auth("viewer"),
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        studies = answer.json()
        found = {tag: studies[0][tag]["Value"][0] for tag in expected} if studies else {}
        if found == expected:
            return
        assert time.monotonic() < deadline, f"study not listed with {expected}: {found}\n{runtime.log_tail()}"
        time.sleep(0.5)


def _drive(viewer_site: OhifSite, runtime: Runtime, installed: Installed, out: Path) -> dict[str, Any]:
    """Run drive.mjs against the site; the report it wrote."""
    config = {
        "nodeModules": str(installed.node_modules),
        "chromium": CHROMIUM,
        "siteOrigin": viewer_site.origin,
        "storeRoot": runtime.base_url.rstrip("/"),
        "patientText": PATIENT_TEXT,
        "seriesCount": len(SERIES),
        "modeButton": "Basic Viewer",
        "scrollSlices": SLICES // 2,
        "outDir": str(out),
        "stepTimeoutMs": STEP_TIMEOUT_MS,
        "minLit": MIN_LIT,
        "minDark": MIN_DARK,
    }
    config_file = out / "config.json"
    config_file.write_text(json.dumps(config, indent=2))
    started = time.monotonic()
    try:
        result = subprocess.run(
            ["node", str(OHIF_DIR / "drive.mjs"), str(config_file)],
            cwd=out,
            capture_output=True,
            text=True,
            timeout=DRIVE_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"drive.mjs did not finish within {DRIVE_TIMEOUT_S} s: {error.stdout!r} {error.stderr!r}")
    report_file = out / "report.json"
    if result.returncode != 0 or not report_file.exists():
        pytest.fail(
            f"drive.mjs exited with {result.returncode}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    report: dict[str, Any] = json.loads(report_file.read_text())
    print(f"\nOHIF driven in {time.monotonic() - started:.1f} s; screenshots and report.json in {out}")
    return report


@pytest.fixture(scope="module")
def viewer(
    tmp_path_factory: pytest.TempPathFactory, ensure_packages: Callable[..., None]
) -> Iterator[Viewer]:
    """OHIF served for this module's runtime, the study stored, and one browser session's report."""
    installed = _install(ensure_packages)
    store: dict[str, str] = {}
    site = OhifSite(installed.dist, lambda: app_config(store["base_url"], store["token"])).start()
    runtime = None
    try:
        runtime = start_runtime(
            tmp_path_factory.mktemp("ohif-runtime"),
            persist=False,
            parameters="DeidModalities=none InferenceModels=none",
            cors_origins=(site.origin,),
        )
        store.update(base_url=runtime.base_url.rstrip("/"), token=runtime.tokens["viewer"])
        stored = stow(runtime.base_url, _study(), token=runtime.tokens["uploader"])
        assert stored.status_code == 200, stored.text
        _wait_until_listed(runtime)
        artifacts = tmp_path_factory.mktemp("ohif-screenshots")
        report = _drive(site, runtime, installed, artifacts)
        if os.environ.get("UPDATE_SCREENSHOTS") == "1" and "viewer" in report["screenshots"]:
            README_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(report["screenshots"]["viewer"], README_SCREENSHOT)
        yield Viewer(runtime, site, installed, artifacts, report)
    finally:
        site.stop()
        if runtime is not None:
            assert runtime.stop() == 0, runtime.log_tail()


def _where(viewer: Viewer) -> str:
    """What to look at when an assertion fails."""
    report = viewer.report
    return (
        f"\nscreenshots: {viewer.artifacts}\nsteps that failed: {report['stepErrors']}"
        f"\nfailed requests: {json.dumps(report['failedRequests'], indent=1)}"
    )


def _shows_a_picture(image: dict[str, Any]) -> bool:
    return bool(image.get("loaded")) and image["litFraction"] >= MIN_LIT and image["darkFraction"] >= MIN_DARK


def test_the_study_list_shows_the_patient(viewer: Viewer) -> None:
    # Given the study stored in the runtime, OHIF configured for it with the viewer's token
    # When the study list loads
    study_list = viewer.report["studyList"]
    # Then the patient's row is there, with the study's modality and instance count
    assert study_list["patientShown"], _where(viewer)
    assert "CT" in study_list["rowText"]
    assert str(len(SERIES) * SLICES) in study_list["rowText"]


def test_opening_the_study_renders_an_image(viewer: Viewer) -> None:
    # Given the study opened in OHIF's basic viewer and scrolled to the middle slice
    viewport = viewer.report["viewport"]
    # Then the viewport's canvas, read back in the page, holds a picture
    assert viewport is not None and _shows_a_picture(viewport), f"{viewport}{_where(viewer)}"
    # And so does the screenshot of it, read independently here
    shot = np.asarray(Image.open(viewer.report["screenshots"]["viewport"]).convert("L"))
    lit = float((shot >= 40).mean())
    assert lit >= MIN_LIT, f"viewport screenshot: {lit:.3f} of its pixels lit{_where(viewer)}"


@pytest.mark.parametrize("panel", ["previewThumbnails", "viewerThumbnails"])
def test_every_series_thumbnail_shows_a_picture(viewer: Viewer, panel: str) -> None:
    # Given the study list's preview panel and the viewer's study browser
    shown = viewer.report[panel]
    # Then each panel holds one thumbnail per series, and every one shows a picture
    assert shown is not None, _where(viewer)
    assert shown["thumbnails"] == len(SERIES), f"{shown}{_where(viewer)}"
    assert len(shown["images"]) == len(SERIES), f"{shown}{_where(viewer)}"
    for image in shown["images"]:
        assert _shows_a_picture(image), f"{panel}: {image}{_where(viewer)}"
        # And it is the store's thumbnail (fetched, a blob: URL), not one OHIF decoded itself
        assert image["src"].startswith("blob:"), f"{panel}: {image}{_where(viewer)}"


def test_ohif_asked_the_store_for_thumbnails_and_got_jpeg(viewer: Viewer) -> None:
    # Given every request the page sent to the store
    thumbnails = [
        r for r in viewer.report["storeResponses"] if urlsplit(r["url"]).path.endswith("/thumbnail")
    ]
    # Then OHIF asked for thumbnails (with its viewport parameter) and got JPEG images
    assert thumbnails, f"OHIF requested no thumbnail{_where(viewer)}"
    for response in thumbnails:
        assert "viewport=" in urlsplit(response["url"]).query
        assert response["status"] == 200, f"{response}{_where(viewer)}"
        assert (response["contentType"] or "").startswith("image/jpeg"), response


def test_no_dicomweb_request_failed(viewer: Viewer) -> None:
    # Given every request the page sent to the store, and the browser's console
    report = viewer.report
    # Then the store answered them all (QIDO-RS, metadata, frames, thumbnails)
    assert report["storeResponses"], _where(viewer)
    assert report["failedRequests"] == [], _where(viewer)
    # And the page logged no error and threw nothing
    assert report["consoleErrors"] == [], json.dumps(report["consoleErrors"], indent=1)
    assert report["pageErrors"] == [], report["pageErrors"]
    assert report["stepErrors"] == [], report["stepErrors"]


def test_the_site_falls_back_to_index_html_for_viewer_links_only(tmp_path: Path) -> None:
    # Given a site over a small dist/ folder, configured for a store
    (tmp_path / "index.html").write_text("<html>OHIF</html>")
    (tmp_path / "app.bundle.js").write_text("// bundle")
    site = OhifSite(tmp_path, lambda: app_config("http://127.0.0.1:9/", "t0ken")).start()
    try:
        # When a browser follows a link straight into the viewer
        link = requests.get(f"{site.origin}/viewer?StudyInstanceUIDs={STUDY_UID}", timeout=10)
        # Then it gets index.html, and OHIF routes the link in the page
        assert link.status_code == 200
        assert link.text == "<html>OHIF</html>"
        # And a missing asset is still a 404, a real file is served as it is
        assert requests.get(f"{site.origin}/missing.bundle.js", timeout=10).status_code == 404
        assert requests.get(f"{site.origin}/app.bundle.js", timeout=10).text == "// bundle"
        # And app-config.js is generated: the store's root and the token for its requests
        config = requests.get(f"{site.origin}/app-config.js", timeout=10)
        assert config.headers["Content-Type"].startswith("text/javascript")
        assert config.headers["Cache-Control"] == "no-store"
        assert '"qidoRoot": "http://127.0.0.1:9"' in config.text
        assert 'var root = "http://127.0.0.1:9";' in config.text
        assert "'Bearer ' + \"t0ken\"" in config.text
    finally:
        site.stop()
