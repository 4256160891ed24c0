"""Installing OHIF's published build and playwright-core from the npm registry, once.

Everything comes through the registry's ordinary client, at versions pinned in this folder's
``package.json`` (committed with its ``package-lock.json``):

- ``playwright-core`` with ``npm ci``: the browser driver alone. It never downloads a browser;
  the test launches Debian's ``/usr/bin/chromium`` through ``executablePath``.
- OHIF's build with ``npm pack @ohif/app@<version>``: the package's tarball holds a ready
  ``dist/`` (the static site). Installing it as a dependency would pull OHIF's whole
  development tree, so the tarball alone is fetched, its SHA-512 checked against the pin in
  ``package.json``, and its ``dist/`` unpacked.

Both land in ``.cache/ohif/`` at the top of the checkout (git-ignored). A stamp file records
what was installed, so a second run costs a few file reads; a file lock keeps two test runs
from installing into the same folder at once.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[2]
CACHE = REPO_ROOT / ".cache" / "ohif"
PACKAGE_FILES = ("package.json", "package-lock.json")
NPM_TIMEOUT_S = 900.0
DIST_PREFIX = "package/dist/"


class InstallError(RuntimeError):
    """An install step failed; the message carries the command's own output."""


@dataclass(frozen=True)
class OhifPin:
    """The OHIF release the tests use: ``package.json``'s ``ohif`` entry."""

    package: str
    version: str
    integrity: str  # "sha512-<base64>", as the registry's metadata gives it

    @property
    def spec(self) -> str:
        return f"{self.package}@{self.version}"

    @classmethod
    def load(cls, package_json: Path = HERE / "package.json") -> OhifPin:
        entry = json.loads(package_json.read_text(encoding="utf-8"))["ohif"]
        return cls(str(entry["package"]), str(entry["version"]), str(entry["integrity"]))


@dataclass(frozen=True)
class Installed:
    """Where the installed pieces are."""

    dist: Path  # OHIF's static site (index.html, app-config.js, bundles)
    node_modules: Path  # holds playwright-core
    ohif: OhifPin


def _run(command: Sequence[str], *, cwd: Path) -> str:
    """Run an npm command; its stdout, or InstallError with its output."""
    env = {**os.environ, "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1", "npm_config_update_notifier": "false"}
    try:
        result = subprocess.run(
            list(command),
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise InstallError(f"{' '.join(command)!r} could not run: {error}") from error
    if result.returncode != 0:
        raise InstallError(
            f"{' '.join(command)!r} exited with {result.returncode}:\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return result.stdout


@contextmanager
def _locked(cache: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``cache`` (another test run waits for our install)."""
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fingerprint(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def sri_sha512(path: Path) -> str:
    """The Subresource Integrity string of a file (``sha512-`` and the base64 digest)."""
    digest = hashlib.sha512()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return "sha512-" + base64.b64encode(digest.digest()).decode()


def install_driver(cache: Path = CACHE) -> Path:
    """``npm ci`` this folder's lockfile into ``cache``; the ``node_modules`` folder."""
    sources = [HERE / name for name in PACKAGE_FILES]
    stamp = cache / "driver.stamp"
    fingerprint = _fingerprint(sources)
    node_modules = cache / "node_modules"
    if stamp.exists() and stamp.read_text() == fingerprint and (node_modules / "playwright-core").is_dir():
        return node_modules
    if shutil.which("npm") is None:
        raise InstallError("npm is not on PATH (Debian: apt-get install nodejs npm)")
    for source in sources:
        shutil.copyfile(source, cache / source.name)
    stamp.unlink(missing_ok=True)
    _run(["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=cache)
    stamp.write_text(fingerprint)
    return node_modules


def install_ohif(cache: Path = CACHE, pin: OhifPin | None = None) -> Path:
    """``npm pack`` the pinned OHIF release, check its SHA-512, unpack its ``dist/``; that folder."""
    pin = pin or OhifPin.load()
    target = cache / f"ohif-app-{pin.version}"
    stamp = target / ".installed"
    if stamp.exists() and stamp.read_text() == pin.integrity and (target / "dist" / "index.html").is_file():
        return target / "dist"
    if shutil.which("npm") is None:
        raise InstallError("npm is not on PATH (Debian: apt-get install nodejs npm)")
    with tempfile.TemporaryDirectory(dir=cache, prefix="pack-") as scratch:
        work = Path(scratch)
        command = ["npm", "pack", pin.spec, "--json", "--ignore-scripts", "--pack-destination", str(work)]
        packed = json.loads(_run(command, cwd=work))
        tarball = work / packed[0]["filename"]
        actual = sri_sha512(tarball)
        if actual != pin.integrity:
            raise InstallError(
                f"{pin.spec}: the tarball's integrity is {actual}, the pin says {pin.integrity}"
            )
        unpacked = work / "unpacked"
        with tarfile.open(tarball, "r:gz") as archive:
            members = [m for m in archive.getmembers() if m.name.startswith(DIST_PREFIX)]
            if not any(m.name == DIST_PREFIX + "index.html" for m in members):
                raise InstallError(f"{pin.spec}: the tarball has no {DIST_PREFIX}index.html")
            archive.extractall(unpacked, members=members, filter="data")
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        (unpacked / "package" / "dist").rename(target / "dist")
    stamp.write_text(pin.integrity)
    return target / "dist"


def install(cache: Path = CACHE, *, driver: bool = True) -> Installed:
    """Install OHIF (and playwright-core unless ``driver`` is False) into ``cache``, or reuse them."""
    with _locked(cache):
        dist = install_ohif(cache)
        node_modules = install_driver(cache) if driver else cache / "node_modules"
    return Installed(dist=dist, node_modules=node_modules, ohif=OhifPin.load())
