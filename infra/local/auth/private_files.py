"""Private files of the local runtime: the signing key and the tokens file (mode 0600).

Both hold secrets that are worthless in AWS but must not leak to other users of the
developer's machine, so they are written atomically with owner-only permissions.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import Final

PRIVATE_FILE_MODE: Final = 0o600


def write_private_file(path: Path, data: bytes, *, overwrite: bool) -> bool:
    """Atomically write ``data`` to ``path`` with mode 0600; never exposes a partial file.

    With ``overwrite=False`` an existing file is kept (it may have been created concurrently)
    and False is returned; otherwise True.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), PRIVATE_FILE_MODE)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if overwrite:
            tmp.replace(path)
            return True
        try:
            os.link(tmp, path)  # fails instead of clobbering a key created meanwhile
        except FileExistsError:
            return False
        return True
    finally:
        tmp.unlink(missing_ok=True)


def restrict_mode(path: Path) -> None:
    """Take group and other permissions away from an existing private file."""
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        path.chmod(PRIVATE_FILE_MODE)
