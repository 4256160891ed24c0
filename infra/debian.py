"""Debian packages installed on demand, the way CI installs them on a fresh machine.

``dpkg-query`` says whether a package is there; a missing one is installed with ``apt-get``
(as root, or through ``sudo -n`` otherwise), after one ``apt-get update``. Anything that
goes wrong raises :class:`PackageError` carrying apt's own output: the end-to-end tests turn
it into a failure (a real sender that is absent must never become a skipped test), and
``make bench`` stops with it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence

APT_TIMEOUT_S = 900.0
_INSTALLED = "install ok installed"


class PackageError(RuntimeError):
    """A Debian package is missing and could not be installed."""

    def __init__(self, message: str = "a Debian package could not be installed") -> None:
        super().__init__(message)


def is_installed(name: str) -> bool:
    """Whether dpkg reports ``name`` as installed (``${Status}`` is ``install ok installed``)."""
    # A fixed argument list, no shell; names come from this code, not from a request.
    result = subprocess.run(  # noqa: S603
        ["dpkg-query", "-W", "-f=${Status}", name],  # noqa: S607 (on PATH, as apt puts it)
        capture_output=True,
        text=True,
        check=False,
    )
    return result.returncode == 0 and result.stdout.strip() == _INSTALLED


def _as_root(command: Sequence[str]) -> list[str]:
    """``command`` as root: as is when we are root, else through non-interactive sudo."""
    if os.geteuid() == 0:
        return list(command)
    if shutil.which("sudo") is None:
        raise PackageError(f"cannot run {' '.join(command)!r}: not root and no sudo on this machine")
    return ["sudo", "-n", *command]


def _run(command: Sequence[str]) -> None:
    """Run an apt command; raise :class:`PackageError` with its output when it fails."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        result = subprocess.run(  # noqa: S603 (apt-get with fixed arguments, no shell)
            _as_root(command),
            capture_output=True,
            text=True,
            env=env,
            timeout=APT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise PackageError(f"{' '.join(command)!r} could not run: {error}") from error
    if result.returncode != 0:
        raise PackageError(
            f"{' '.join(command)!r} exited with {result.returncode}:\n{result.stdout[-4000:]}\n"
            f"{result.stderr[-4000:]}"
        )


class PackageInstaller:
    """Installs missing Debian packages, running ``apt-get update`` at most once per installer."""

    def __init__(self) -> None:
        self._updated = False

    def __call__(self, *names: str) -> None:
        missing = [name for name in names if not is_installed(name)]
        if not missing:
            return
        if shutil.which("apt-get") is None:
            raise PackageError(f"Debian packages {', '.join(missing)} are missing and there is no apt-get")
        if not self._updated:
            _run(["apt-get", "update"])
            self._updated = True
        _run(["apt-get", "install", "-y", "--no-install-recommends", *missing])
        still_missing = [name for name in missing if not is_installed(name)]
        if still_missing:
            raise PackageError(f"apt-get reported success but {', '.join(still_missing)} is not installed")


_installer = PackageInstaller()


def ensure_packages(*names: str) -> None:
    """Install whichever of ``names`` is missing (one ``apt-get update`` per process), or raise."""
    _installer(*names)
