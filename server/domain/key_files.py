"""Development secrets generated once into the data directory, shared by every process."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def load_or_create(path: Path, create: Callable[[], bytes]) -> bytes:
    """Returns the file's bytes, first writing `create()` to it if it does not exist.

    The file is written to a temporary name and hard-linked into place, so when several processes
    start at once exactly one version wins and nobody reads a half-written file.
    """
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(create())
            handle.flush()
            os.fsync(handle.fileno())
        # If another process won the race, its file stands and is what everyone reads.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        os.unlink(tmp)
    return path.read_bytes()
