"""Atomic file writes: a run killed mid-write leaves the old file (or none), never half of one."""

from __future__ import annotations

import os
import tempfile


def write_text(path: str, text: str) -> None:
    """Writes `text` to a sibling temporary file, syncs it, then renames it over `path`."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp.", suffix=".part")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
