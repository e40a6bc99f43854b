"""DPO vs PPO reward-KL frontier experiment: its frontier maths and a tiny end-to-end run.

Dimension letters: M checkpoints, R seeds, G KL grid values.
"""

import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

_RUN_PY = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "dpo_vs_ppo" / "run.py"


def _load_run():
    spec = importlib.util.spec_from_file_location("dpo_vs_ppo_run", _RUN_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run = _load_run()


def test_budget_frontier_is_the_best_reward_within_each_budget():
    kl_M = [0.0, 1.0, 2.0, 3.0, 0.5]
    reward_M = [0.0, 0.4, 0.3, 0.9, 0.1]
    frontier_G = run.budget_frontier(kl_M, reward_M, [-0.5, 0.0, 0.7, 1.0, 2.5, 10.0])
    np.testing.assert_allclose(frontier_G, [np.nan, 0.0, 0.1, 0.4, 0.4, 0.9])
    assert np.all(np.diff(frontier_G[1:]) >= 0)  # a larger budget never does worse
    with pytest.raises(ValueError, match="same length"):
        run.budget_frontier([0.0, 1.0], [0.0], [1.0])


def test_shared_range_covers_every_family_and_seed():
    points = {
        "a": [(0, np.array([0.0, 0.5, 4.0]), np.zeros(3)),
              (1, np.array([0.0, 0.8, 3.0]), np.zeros(3))],
        "b": [(0, np.array([0.0, 1.5, 6.0]), np.zeros(3))],
    }
    assert run.shared_range(points) == (1.5, 3.0)
    points["b"] = [(0, np.array([0.0, 3.5]), np.zeros(2))]
    assert run.shared_range(points) is None  # b starts above a's seed-1 maximum
    points["b"] = [(0, np.array([0.0]), np.zeros(1))]
    assert run.shared_range(points) is None  # b never left the reference


def test_compare_applies_the_tolerance_at_every_grid_value():
    ppo_RxG = np.array([[0.2, 0.5, 0.6], [0.3, 0.5, 0.7]])
    ok = run.compare(ppo_RxG - 0.04, ppo_RxG, tolerance=0.05)
    assert ok["holds"] and ok["holds_at"] == [True, True, True]
    np.testing.assert_allclose(ok["diff_mean"], [-0.04] * 3)
    np.testing.assert_allclose(ok["diff_half"], [0.0] * 3, atol=1e-12)
    dpo_RxG = ppo_RxG.copy()
    dpo_RxG[:, 2] -= [0.1, 0.02]  # mean -0.06 at the last grid value
    bad = run.compare(dpo_RxG, ppo_RxG, tolerance=0.05)
    assert not bad["holds"] and bad["holds_at"] == [True, True, False]
    assert bad["diff_half"][2] > 0
    with pytest.raises(ValueError, match="undefined"):
        run.compare(np.full((2, 3), np.nan), ppo_RxG)


def test_verdict_needs_both_ppo_families():
    yes, no = {"holds": True}, {"holds": False}
    assert run.verdict({"ppo_rm": yes, "ppo_gold": yes}) == "reproduced"
    assert run.verdict({"ppo_rm": yes, "ppo_gold": no}).startswith("partly")
    assert run.verdict({"ppo_rm": no, "ppo_gold": no}) == "not reproduced"
    assert run.verdict(None).startswith("not reproduced")


@pytest.mark.experiment
def test_tiny_run_writes_table_plot_and_finite_results(runs_home):
    # No --out: the default folder under $ALIGN_RUNS; `runs_home` checks that nothing was
    # written into experiments/.
    out = runs_home / "dpo_vs_ppo"
    # A subprocess: the run turns on JAX's persistent compilation cache, a process-wide setting.
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, str(_RUN_PY), "--tiny"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (out / "results.md").read_text()
    assert "| DPO | beta=0.03 |" in table and "Verdict" in table
    assert (out / run.PLOT).stat().st_size > 1000
    results = json.loads((out / "results.json").read_text())
    assert results["mode"] == "tiny" and results["seeds"] == 1
    for family in run.FAMILIES:
        (entry,) = results["points"][family]
        assert entry["step"][0] == 0 and entry["kl"][0] == 0.0
        assert len(entry["step"]) == len(entry["kl"]) == len(entry["gold_reward"]) >= 2
        assert all(math.isfinite(x) for x in entry["kl"] + entry["gold_reward"])
        assert all(-1.0 <= r <= 1.0 for r in entry["gold_reward"])
    if results["shared_range"] is not None:
        assert len(results["grid_kl"]) == run.GRID_POINTS
        for family in run.FAMILIES:
            assert np.isfinite(results["frontier"][family]["per_seed"]).all()
            assert np.array(results["frontier"][family]["per_seed"]).shape == (1, run.GRID_POINTS)
    assert results["verdict"] == run.verdict(results["comparisons"])
