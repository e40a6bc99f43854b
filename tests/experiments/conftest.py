"""Experiment tests' fixture: outputs in a temporary $ALIGN_RUNS, and the repository left alone."""

import pathlib

import pytest

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[2] / "experiments"


def _snapshot() -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file under experiments/, bytecode caches aside."""
    return {str(p.relative_to(EXPERIMENTS)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in EXPERIMENTS.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


@pytest.fixture
def runs_home(tmp_path, monkeypatch):
    """$ALIGN_RUNS/experiments in tmp_path; fails the test if anything in experiments/ changed."""
    monkeypatch.setenv("ALIGN_RUNS", str(tmp_path / "align-runs"))
    before = _snapshot()
    yield tmp_path / "align-runs" / "experiments"
    after = _snapshot()
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"written into the repository's experiments/: {changed}"
