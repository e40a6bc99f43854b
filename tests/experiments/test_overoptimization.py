"""Over-optimisation experiment: curves, the pre-registered criteria on made-up inputs, and a tiny run.

Dimension letters: R seeds, B prompts, K samples per prompt, M points of a curve.
"""

import importlib.util
import json
import math
import pathlib

import numpy as np
import pytest

_RUN_PY = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "overoptimization" / "run.py"


def _load_run():
    spec = importlib.util.spec_from_file_location("overoptimization_run", _RUN_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run = _load_run()


def _curve(d_M, gold_M, proxy_M=None):
    d_M = np.asarray(d_M, float)
    return {"d": list(d_M), "gold": list(np.asarray(gold_M, float)),
            "proxy": list(d_M if proxy_M is None else np.asarray(proxy_M, float))}


def _humped(peak, scale=1.0, noise=0.0, rng=None):
    d_M = np.linspace(0.0, 4.0, 9)
    gold_M = scale * d_M * (peak - 0.5 * d_M)  # argmax at d = peak
    if noise:
        gold_M = gold_M + noise * rng.normal(size=d_M.size)
    return _curve(d_M, gold_M)


def _rl_humped(peak, noise, rng, beta=0.5):
    """Gao's RL form d(α − β log d) with its maximum at d = peak."""
    d_M = np.linspace(0.25, 4.0, 10)
    gold_M = d_M * (beta * (1 + math.log(peak)) - beta * np.log(d_M))
    return _curve(d_M, gold_M + noise * rng.normal(size=d_M.size))


def test_bon_curve_is_relative_to_n1_and_matches_kl():
    rng = np.random.default_rng(0)
    gold_BxK = rng.normal(size=(6, 8))
    curve = run.bon_curve(gold_BxK + 0.1 * rng.normal(size=(6, 8)), gold_BxK)
    assert curve["n"] == [1, 2, 4, 8]
    np.testing.assert_allclose(curve["d"][0], 0.0)
    np.testing.assert_allclose(curve["d"][3], math.sqrt(math.log(8) - 7 / 8))
    assert curve["gold"][0] == 0.0 and curve["proxy"][0] == 0.0
    # A nearly exact proxy: best-of-n's gold climbs with n.
    assert np.all(np.diff(curve["gold"]) > 0)


def test_window_means():
    np.testing.assert_allclose(run.window_means([1, 2, 3, 4, 5], 2), [1.5, 3.5, 5.0])
    np.testing.assert_allclose(run.window_means([1, 2, 3], 5), [2.0])
    with pytest.raises(ValueError, match="window must be >= 1"):
        run.window_means([1.0], 0)


def test_hump_needs_a_rise_a_fall_and_a_rising_proxy():
    rng = np.random.default_rng(1)
    humped = [_humped(2.0, noise=0.01, rng=rng) for _ in range(3)]
    h = run.hump(humped)
    assert h["holds"] and not h["censored"]
    np.testing.assert_allclose(h["peak_d"], 2.0)
    # Monotone gold (the peak is the last point): no hump.
    rising = [_curve(np.linspace(0, 2, 5), np.linspace(0, 1, 5) + 0.01 * i) for i in range(3)]
    assert run.hump(rising)["censored"] and not run.hump(rising)["holds"]
    # Gold falls from the start: no rise, no hump.
    falling = [_curve(np.linspace(0, 2, 5), -np.linspace(0, 1, 5)) for _ in range(3)]
    assert not run.hump(falling)["holds"]
    # Gold humps but the proxy falls after the peak: not over-optimisation.
    flat_proxy = [dict(c, proxy=list(-np.asarray(c["d"]))) for c in humped]
    assert not run.hump(flat_proxy)["holds"]


def test_later_with_more_data_is_seed_paired_and_strict():
    rng = np.random.default_rng(2)
    curves = {p: [_humped(peak, noise=0.005, rng=rng) for _ in range(3)]
              for p, peak in ((128, 1.0), (512, 2.0), (2048, 3.0))}
    assert run.later_with_more_data(curves)["holds"]
    swapped = {128: curves[2048], 512: curves[512], 2048: curves[128]}
    assert not run.later_with_more_data(swapped)["holds"]
    assert not run.later_with_more_data({128: curves[128]})["holds"]


def test_frontier_gap():
    free = _humped(2.0)
    on = _curve(free["d"][:4], free["gold"][:4])
    assert abs(run.frontier_gap(on, free)) < 1e-12
    above = _curve(free["d"][:4], np.asarray(free["gold"][:4]) + 0.3)
    np.testing.assert_allclose(run.frontier_gap(above, free), 0.3)
    outside = _curve([10.0, 11.0], [0.0, 0.0])
    assert math.isnan(run.frontier_gap(outside, free))


def test_fit_recovers_gao_forms():
    d_M = np.linspace(0.1, 3.0, 12)
    bon = run.fit_curve("bon", _curve(d_M, d_M * (1.0 - 0.3 * d_M)))
    np.testing.assert_allclose([bon["alpha"], bon["beta"]], [1.0, 0.3], atol=1e-9)
    assert bon["r2"] > 0.999 and bon["extrapolation_rmse"] < 1e-9
    rl = run.fit_curve("rl", _curve(d_M, d_M * (0.5 - 0.4 * np.log(d_M))))
    np.testing.assert_allclose([rl["alpha"], rl["beta"]], [0.5, 0.4], atol=1e-9)


def test_analyse_verdicts_on_made_up_runs():
    rng = np.random.default_rng(3)
    mode = dict(run.MODES["quick"], pairs=(128, 512, 2048), kl_coefs=(0.0, 0.1))
    seeds = 3
    bon = {(p, s): _humped(1.0 + 0.1 * i, noise=0.002, rng=rng)
           for i, p in enumerate(mode["pairs"]) for s in range(seeds)}
    rl = {(p, 0.0, s): _rl_humped(1.0 + i, noise=0.002, rng=rng)
          for i, p in enumerate(mode["pairs"]) for s in range(seeds)}
    # The penalised runs follow the unpenalised frontier of their seed and stop early.
    for s in range(seeds):
        free = rl[(512, 0.0, s)]
        rl[(512, 0.1, s)] = _curve(free["d"][:5], free["gold"][:5])
    rm_eval = {(p, s): {"gold_agreement": 0.7} for p in mode["pairs"] for s in range(seeds)}
    raw = {"bon": bon, "rl": rl, "rm_eval": rm_eval, "sweep_pairs": 512}
    res = run.analyse(raw, mode, seeds)
    assert res["claims"]["hump"]["verdict"] == "reproduced"
    assert res["claims"]["later"]["verdict"] == "reproduced"
    assert res["claims"]["frontier"]["verdict"] == "reproduced"
    assert res["claims"]["forms"]["verdict"] == "reproduced"
    # The penalised runs beat the frontier by 0.3: not the paper's claim any more.
    for s in range(seeds):
        c = rl[(512, 0.1, s)]
        rl[(512, 0.1, s)] = dict(c, gold=list(np.asarray(c["gold"]) + 0.3))
    assert run.analyse(raw, mode, seeds)["claims"]["frontier"]["verdict"] == "not reproduced"


@pytest.mark.experiment
def test_tiny_run_writes_table_plots_and_finite_results(runs_home):
    # No --out: the default folder under $ALIGN_RUNS; `runs_home` checks that nothing was
    # written into experiments/.
    out = runs_home / "overoptimization"
    assert run.main(["--tiny"]) == 0
    text = (out / "results.md").read_text()
    assert "## Claims" in text and "| pairs | kl_coef |" in text
    for name in run.PLOTS:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = json.loads((out / "results.json").read_text())
    mode = run.MODES["tiny"]
    assert set(res["proxies"]) == {str(p) for p in mode["pairs"]}
    n_points = int(math.log2(mode["bon_samples"])) + 1
    for proxy in res["proxies"].values():
        for key in ("d", "gold", "proxy"):
            assert len(proxy["bon_curve"][key]) == n_points
            assert np.all(np.isfinite(proxy["bon_curve"][key]))
        assert np.all(np.isfinite(list(proxy["bon_fit"].values())[1:]))
    windows = math.ceil(mode["ppo_steps"] / mode["window"])
    assert len(res["ppo"]) == len(mode["pairs"]) + sum(1 for c in mode["kl_coefs"] if c)
    for ppo in res["ppo"].values():
        assert len(ppo["curve"]["d"]) == windows
        for key in ("d", "gold", "proxy"):
            assert np.all(np.isfinite(ppo["curve"][key]))
        assert np.all(np.asarray(ppo["curve"]["d"]) >= 0)
    assert {c["verdict"] for c in res["claims"].values()} <= {
        "reproduced", "partly", "not reproduced"}
