"""Atomic writes: the whole text or the old file, with the permissions the umask allows."""

import os
import stat

import pytest

from align import atomic


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_get_the_umask_permissions(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        assert atomic.current_umask() == umask
        path = tmp_path / "config.json"
        atomic.write_text(str(path), "{}\n")
    finally:
        os.umask(old)
    assert path.read_text() == "{}\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == mode
    assert os.listdir(tmp_path) == ["config.json"]  # no temporary file left behind
