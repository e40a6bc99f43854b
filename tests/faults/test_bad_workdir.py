"""An impossible or read-only workdir is one line naming it, before anything runs."""

import os
import subprocess

from align import main

CONFIG = "configs/sft.py:size=tiny,steps=1"


def _one_line(capsys, workdir):
    code = main.main(["--config", CONFIG, "--workdir", str(workdir)])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    return err


def test_a_workdir_below_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    err = _one_line(capsys, tmp_path / "file" / "run")
    assert f"the workdir {tmp_path / 'file' / 'run'} cannot be written" in err, err
    err = _one_line(capsys, tmp_path / "file")  # a workdir that is a file
    assert "cannot be written" in err, err


def test_a_read_only_workdir_is_one_line(tmp_path, capsys, monkeypatch):
    """On a read-only mount where the machine allows one; else a file system that refuses the
    write the way a read-only one does (EROFS)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)],
                             capture_output=True).returncode == 0
    try:
        if not mounted:
            real_open = open

            def read_only(path, *args, **kwargs):
                if str(path).startswith(str(ro)) and args and "w" in args[0]:
                    raise OSError(30, os.strerror(30), str(path))
                return real_open(path, *args, **kwargs)

            monkeypatch.setattr("builtins.open", read_only)
        err = _one_line(capsys, ro / "run" if not mounted else ro)
        assert "cannot be written (Read-only file system)" in err, err
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(ro)], check=False)
