"""Online IPO round-robin experiment: its pure helpers, the pre-registered verdicts, a tiny run.

Dimension letters: R seeds, N policies.
"""

import importlib.util
import json
import math
import pathlib

import numpy as np
import pytest

_RUN_PY = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "online_ipo" / "run.py"


def _load_run():
    spec = importlib.util.spec_from_file_location("online_ipo_run", _RUN_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run = _load_run()
NAMES = ["sft", *run.ONLINE, *run.OFFLINE]


def _matrix_from_strengths(strength_N, noise_RxNxN=None):
    """Bradley–Terry win matrices P(i ≻ j) = σ(s_i − s_j), per seed, made consistent."""
    s_N = np.asarray(strength_N, np.float64)
    upper_NxN = 1.0 / (1.0 + np.exp(-(s_N[:, None] - s_N[None, :])))
    noise_RxNxN = np.zeros((1, *upper_NxN.shape)) if noise_RxNxN is None else noise_RxNxN
    return np.stack([run.complete_matrix(np.clip(upper_NxN + n, 0, 1)) for n in noise_RxNxN])


def test_complete_matrix_is_a_valid_tournament():
    upper = np.array([[0.5, 0.8, 0.3], [0.0, 0.5, 0.6], [0.0, 0.0, 0.5]])
    full = run.complete_matrix(upper)
    np.testing.assert_allclose(full + full.T, np.ones((3, 3)))
    np.testing.assert_allclose(np.diag(full), 0.5)
    assert full[1, 0] == pytest.approx(0.2) and full[2, 1] == pytest.approx(0.4)
    with pytest.raises(ValueError, match="square"):
        run.complete_matrix(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="probabilities"):
        run.complete_matrix(np.array([[0.5, 1.5], [0.0, 0.5]]))


def test_average_win_rates_excludes_self_and_non_members():
    win = run.complete_matrix(np.array([[0.5, 0.9, 0.1], [0, 0.5, 0.7], [0, 0, 0.5]]))[None]
    np.testing.assert_allclose(run.average_win_rates(win, [0, 1, 2])[0],
                               [(0.9 + 0.1) / 2, (0.1 + 0.7) / 2, (0.9 + 0.3) / 2])
    np.testing.assert_allclose(run.average_win_rates(win, [0, 2])[0], [0.1, 0.9])
    with pytest.raises(ValueError, match="at least two"):
        run.average_win_rates(win, [1])


def test_verdicts_when_the_paper_holds():
    # Strengths: IPO = IPO-MD > DPO = SLiC = Nash-MD > PPO; offline counterparts weaker.
    strength = {"sft": -1.0, "online_ipo": 1.0, "ipo_md": 1.0, "online_dpo": 0.3,
                "online_slic": 0.3, "nash_md": 0.3, "ppo": -0.5, "dpo": 0.0, "ipo": 0.0,
                "slic_norm": 0.0}
    noise = np.random.default_rng(0).normal(scale=0.01, size=(3, len(NAMES), len(NAMES)))
    win = _matrix_from_strengths([strength[n] for n in NAMES], noise)
    assert run.evaluate_claims(win, NAMES) == {
        "top": "reproduced", "bottom": "reproduced", "online_vs_offline": "reproduced"}


def test_verdicts_when_the_paper_fails():
    # PPO on top, online IPO well ahead of IPO-MD, offline DPO beats online DPO.
    strength = {"sft": -1.0, "online_ipo": 0.8, "ipo_md": -0.3, "online_dpo": 0.0,
                "online_slic": 0.1, "nash_md": -0.4, "ppo": 1.5, "dpo": 0.5, "ipo": 0.6,
                "slic_norm": 0.0}
    noise = np.random.default_rng(1).normal(scale=0.01, size=(3, len(NAMES), len(NAMES)))
    win = _matrix_from_strengths([strength[n] for n in NAMES], noise)
    assert run.evaluate_claims(win, NAMES) == {
        "top": "partly", "bottom": "not reproduced", "online_vs_offline": "partly"}
    # IPO and IPO-MD top two but far apart: not "about equal".
    strength.update(online_ipo=2.0, ipo_md=1.6, ppo=-1.0)
    win = _matrix_from_strengths([strength[n] for n in NAMES], noise)
    verdicts = run.evaluate_claims(win, NAMES)
    assert verdicts["top"] == "partly" and verdicts["bottom"] == "reproduced"


def test_verdicts_need_the_methods_they_compare():
    win = _matrix_from_strengths([0.0, 1.0])
    assert run.evaluate_claims(win, ["sft", "dpo"]) == {
        "top": "n/a", "bottom": "n/a", "online_vs_offline": "n/a"}


@pytest.mark.experiment
def test_tiny_run_writes_tables_plots_and_finite_results(runs_home):
    # No --out: the default folder under $ALIGN_RUNS; `runs_home` checks that nothing was
    # written into experiments/.
    out = runs_home / "online_ipo"
    assert run.main(["--tiny"]) == 0
    text = (out / "results.md").read_text()
    assert "**Round-robin**" in text and "Pre-registered verdicts" in text
    for name in run.PLOTS:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((out / "results.json").read_text())
    methods = run.MODES["tiny"]["methods"]
    n = len(methods) + 1
    win = np.asarray(results["win_RxNxN"])
    assert win.shape == (1, n, n) and np.all(np.isfinite(win))
    np.testing.assert_allclose(win[0] + win[0].T, np.ones((n, n)), atol=1e-12)
    assert sorted(results["online_ranking"]) == sorted(m for m in methods if m in run.ONLINE)
    for m in methods:
        record = results["per_method"][m]
        for key in ("kl_R", "win_rate_vs_sft_R", "h2h_vs_sft_R", "avg_all_R"):
            assert len(record[key]) == 1 and all(math.isfinite(v) for v in record[key]), (m, key)
    assert set(results["verdicts"]) == {"top", "bottom", "online_vs_offline"}
