"""LiPO on the pool world (Tier A): the frontier maths, a tiny run end to end, and the verdict
rule on a null world where every "loss" is the same one.

Dimension letters: R seeds.
"""

import importlib.util
import json
import math
import pathlib

import numpy as np
import pytest

from align.evaluate import stats
from align.objectives import listwise
from third_party import published

_POOL_PY = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "lipo" / "pool.py"


def _load():
    spec = importlib.util.spec_from_file_location("lipo_pool", _POOL_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lipo_pool = _load()


def test_pareto_frontier_is_the_running_maximum_interpolated_between_corners():
    # Sorted by KL: (0, 50) pi_ref, (1, 60), (2, 55) dominated, (3, 70).
    got = lipo_pool.pareto_at([2.0, 1.0, 3.0], [55.0, 60.0, 70.0], [0.5, 2.0, 3.0])
    np.testing.assert_allclose(got, [55.0, 65.0, 70.0])


def test_judge_of_identical_arms_is_a_point_interval():
    a_R = np.array([80.0, 81.0, 79.5])
    j = lipo_pool.judge(a_R, a_R.copy(), paper_effect=1.8)
    assert (j["estimate"], j["low"], j["high"]) == (0.0, 0.0, 0.0)
    assert j["verdict"] == stats.CONTRADICTED and math.isnan(j["mde"])
    better = lipo_pool.judge(a_R + np.array([2.0, 2.5, 1.5]), a_R, paper_effect=1.8)
    assert better["verdict"] == stats.REPRODUCED and better["low"] > 0


@pytest.mark.experiment
def test_tiny_run_writes_tables_plots_and_verdicts(runs_home):
    assert lipo_pool.main(["--tiny"]) == 0
    out = runs_home / "lipo_pool_tiny"
    for name in ("results.md", "results.json", *lipo_pool.PLOTS):
        assert (out / name).is_file(), name
    data = json.loads((out / "results.json").read_text())
    seeds = lipo_pool.MODES["tiny"]["seeds"]
    for loss in lipo_pool.LOSSES:
        win_R = np.asarray(data["results"]["main"][loss]["win_rate"])[0]
        assert win_R.shape == (seeds,) and np.all((win_R > 0) & (win_R < 1))
    assert set(data["results"]["list_size"]) == {"2", "8"}
    texts = [c["claim"] for c in data["claims"]]
    assert texts[:4] == list(published.LIPO["claims"]) and "matched KL" in texts[4]
    for c in data["claims"]:
        assert c["verdict"] in stats.VERDICTS
        for part in c["parts"]:
            assert part["verdict"] in stats.VERDICTS and part["low"] <= part["high"]
            assert {"estimate", "mde", "paper_effect", "held_after_holm"} <= set(part)
    md = (out / "results.md").read_text()
    assert "paper TL;DR" in md and md.count("power: ") == len(texts) and "matched KL" in md


@pytest.mark.experiment
def test_a_null_world_reproduces_no_claim(tmp_path):
    same = {name: listwise.pair_logistic for name in lipo_pool.loss_fns()}
    mode = lipo_pool.MODES["tiny"]
    res = lipo_pool.run_all(mode, str(tmp_path), same)
    found = lipo_pool.claims(res, mode)
    assert len(found) == 5
    for c in found:
        assert c["verdict"] != stats.REPRODUCED, c["claim"]
        for part in c["parts"]:
            if part["comparison"].startswith("LiPO-λ: slope"):
                continue  # one loss's own slope, not a difference between losses
            assert part["estimate"] == 0.0 and part["verdict"] == stats.CONTRADICTED
