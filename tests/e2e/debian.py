"""Debian packages that end-to-end tests need (Orthanc, dcmtk, chromium...), installed on demand.

The tests install what they use the way CI would on a fresh machine: ``dpkg-query`` says whether
a package is there, and a missing one is installed with ``apt-get`` (as root, or through
``sudo -n`` when the tests do not run as root). A package that cannot be installed fails the
test with apt's own output: a real sender that is absent must never turn into a skipped test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence

import pytest

APT_TIMEOUT_S = 900.0
_INSTALLED = "install ok installed"


def is_installed(name: str) -> bool:
    """Whether dpkg reports ``name`` as installed (``${Status}`` is ``install ok installed``)."""
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", name], capture_output=True, text=True, check=False
    )
    return result.returncode == 0 and result.stdout.strip() == _INSTALLED


def _as_root(command: Sequence[str]) -> list[str]:
    """``command`` as root: as is when we are root, else through non-interactive sudo."""
    if os.geteuid() == 0:
        return list(command)
    if shutil.which("sudo") is None:
        pytest.fail(f"cannot run {' '.join(command)!r}: not root and no sudo on this machine")
    return ["sudo", "-n", *command]


def _run(command: Sequence[str]) -> None:
    """Run an apt command; fail the test with its output when it does not succeed."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        result = subprocess.run(
            _as_root(command),
            capture_output=True,
            text=True,
            env=env,
            timeout=APT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        pytest.fail(f"{' '.join(command)!r} could not run: {error}")
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(command)!r} exited with {result.returncode}:\n{result.stdout[-4000:]}\n"
            f"{result.stderr[-4000:]}"
        )


class PackageInstaller:
    """Installs missing Debian packages, running ``apt-get update`` at most once per session."""

    def __init__(self) -> None:
        self._updated = False

    def __call__(self, *names: str) -> None:
        missing = [name for name in names if not is_installed(name)]
        if not missing:
            return
        if shutil.which("apt-get") is None:
            pytest.fail(f"Debian packages {', '.join(missing)} are missing and there is no apt-get")
        if not self._updated:
            _run(["apt-get", "update"])
            self._updated = True
        _run(["apt-get", "install", "-y", "--no-install-recommends", *missing])
        still_missing = [name for name in missing if not is_installed(name)]
        if still_missing:
            pytest.fail(f"apt-get reported success but {', '.join(still_missing)} is not installed")


@pytest.fixture(scope="session", name="ensure_packages")
def ensure_packages_fixture() -> Callable[..., None]:
    """``ensure_packages("orthanc", "orthanc-dicomweb")``: install what is missing, or fail.

    A test module imports this fixture (``from tests.e2e.debian import ensure_packages_fixture``)
    or a fixture that uses it; ``apt-get update`` runs at most once per session."""
    return PackageInstaller()
