"""Atomic file writes: a run killed mid-write leaves the old file (or none), never half of one."""

from __future__ import annotations

import os
import tempfile


def current_umask() -> int:
    """The process's umask: from /proc on Linux, else by setting it and setting it back."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text(path: str, text: str) -> None:
    """Writes `text` to a sibling temporary file, syncs it, then renames it over `path`."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp.", suffix=".part")
    try:
        # mkstemp creates the file 0600; a written file gets what the umask allows, as open() does.
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
