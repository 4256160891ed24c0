"""Debian packages that end-to-end tests need (Orthanc, dcmtk, chromium...), installed on demand.

The installing itself is :mod:`infra.debian` (``make bench`` uses it too); here a package that
cannot be installed fails the test with apt's own output: a real sender that is absent must
never turn into a skipped test.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from infra import debian
from infra.debian import APT_TIMEOUT_S, is_installed

__all__ = ["APT_TIMEOUT_S", "PackageInstaller", "ensure_packages_fixture", "is_installed"]


class PackageInstaller(debian.PackageInstaller):
    """:class:`infra.debian.PackageInstaller` that fails the test instead of raising."""

    def __call__(self, *names: str) -> None:
        try:
            super().__call__(*names)
        except debian.PackageError as error:
            pytest.fail(str(error))


@pytest.fixture(scope="session", name="ensure_packages")
def ensure_packages_fixture() -> Callable[..., None]:
    """``ensure_packages("orthanc", "orthanc-dicomweb")``: install what is missing, or fail.

    A test module imports this fixture (``from tests.e2e.debian import ensure_packages_fixture``)
    or a fixture that uses it; ``apt-get update`` runs at most once per session."""
    return PackageInstaller()
