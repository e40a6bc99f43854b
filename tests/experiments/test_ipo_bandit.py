"""IPO bandit experiment: closed form, the library losses on a tabular policy, short runs, outputs.

Dimension letters: A actions, U tau values, R seeds, S steps.
"""

import importlib.util
import math
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

_RUN_PY = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "ipo_bandit" / "run.py"


def _load_run():
    spec = importlib.util.spec_from_file_location("ipo_bandit_run", _RUN_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run = _load_run()
D1 = run.DATASETS["D1"]
D3P = run.DATASETS["D3'"]


SHORT_STEPS, SHORT_SEEDS = 3000, 2
TAU1 = run.TAUS.index(1.0)


@pytest.fixture(scope="module")
def short_runs():
    """3000 steps, 2 seeds on D1: probs_UxRxSxA per method (all tau, so main() reuses the jit)."""
    return {m: run.train_grid(D1, run.TAUS, list(range(SHORT_SEEDS)), method=m, steps=SHORT_STEPS)
            for m in run.METHODS}


def test_closed_form_hand_examples():
    # D3', tau = 1/2: (a>b) and (b>a) force theta_a = theta_b; (b>c) gives theta_b - theta_c = 1.
    e = math.exp(-1.0)
    np.testing.assert_allclose(run.ipo_closed_form(D3P, 0.5),
                               [1 / (2 + e), 1 / (2 + e), e / (2 + e)], rtol=1e-12)
    # D1, tau = 1: normal equations give theta_a - theta_b = theta_b - theta_c = 1/3.
    z = 1 + math.exp(-1 / 3) + math.exp(-2 / 3)
    np.testing.assert_allclose(run.ipo_closed_form(D1, 1.0),
                               [1 / z, math.exp(-1 / 3) / z, math.exp(-2 / 3) / z], rtol=1e-12)
    for tau in run.TAUS:
        np.testing.assert_allclose(run.ipo_closed_form(D1, tau), run.ipo_d1_analytic(tau), rtol=1e-9)


def test_closed_form_minimises_population_loss():
    rng = np.random.default_rng(0)
    h = 1 / (2 * 0.7)

    def population_loss(theta_A):
        return sum((theta_A[w] - theta_A[l] - h) ** 2 for w, l in D1)

    theta_A = np.log(run.ipo_closed_form(D1, 0.7))
    best = population_loss(theta_A)
    for _ in range(20):
        assert population_loss(theta_A + 0.05 * rng.normal(size=3)) > best


def test_minibatch_loss_at_uniform_policy():
    theta_A = jnp.zeros(3)
    pairs_Nx2 = jnp.asarray(D1 * 3)
    for tau in (0.1, 1.0, 10.0):
        dpo = run.minibatch_loss(theta_A, pairs_Nx2, tau, method="dpo")
        ipo = run.minibatch_loss(theta_A, pairs_Nx2, tau, method="ipo")
        np.testing.assert_allclose(float(dpo), math.log(2), rtol=1e-6)
        np.testing.assert_allclose(float(ipo), 1 / (4 * tau ** 2), rtol=1e-6)
    with pytest.raises(ValueError, match="unknown method 'slic'"):
        run.minibatch_loss(theta_A, pairs_Nx2, 1.0, method="slic")


def test_ipo_approaches_closed_form_on_d1(short_runs):
    probs_RxSxA = short_runs["ipo"][TAU1]
    star_A = run.ipo_closed_form(D1, 1.0)
    # Minibatch noise keeps Adam jittering around the optimum; its time average sits on it.
    late_A = probs_RxSxA[:, -1000:].mean(axis=(0, 1))
    np.testing.assert_allclose(late_A, star_A, atol=0.01)
    assert np.max(np.abs(probs_RxSxA[:, -1] - star_A)) < 0.03
    assert np.all(np.abs(probs_RxSxA[:, 0] - 1 / 3) < 0.02)  # started from uniform


def test_dpo_on_d1_goes_deterministic(short_runs):
    dpo_RxSxA = short_runs["dpo"][TAU1]
    ipo_RxSxA = short_runs["ipo"][TAU1]
    assert np.all(dpo_RxSxA[:, -1, 0] > ipo_RxSxA[:, -1, 0] + 0.4)
    assert np.all(dpo_RxSxA[:, -1, 0] > 0.99)
    # No fixed point: the losers' mass keeps shrinking between mid-run and the end.
    assert np.all(dpo_RxSxA[:, -1, 2] < dpo_RxSxA[:, 1499, 2] / 5)
    assert np.all(dpo_RxSxA[:, -1, 1] < dpo_RxSxA[:, 1499, 1] / 2)


def test_quick_flag_picks_the_quick_settings(runs_home):
    args, name, steps, seeds, out = run.settings(["--quick"])
    assert name == "quick" and dict(steps=steps, seeds=seeds) == run.MODES["quick"]
    assert steps < run.STEPS and seeds < run.SEEDS and not args.publish
    assert out == str(runs_home / run.NAME)
    assert run.settings(["--quick", "--steps", "10", "--seeds", "4"])[2:4] == (10, 4)
    assert run.settings([])[1:4] == ("full", run.STEPS, run.SEEDS)
    with pytest.raises(SystemExit):
        run.settings(["--quick", "--publish"])


def test_main_writes_table_and_plots(runs_home, tmp_path, monkeypatch, short_runs):
    # No --out: the default folder, under $ALIGN_RUNS; `runs_home` checks experiments/ is untouched.
    argv = ["--steps", str(SHORT_STEPS), "--seeds", str(SHORT_SEEDS)]
    assert run.main(argv) == 0
    out = runs_home / run.NAME
    table = (out / "results.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| D")]
    # two tables x two datasets x five tau x two methods
    assert len(rows) == 2 * 2 * len(run.TAUS) * 2
    assert "| D3' | 0.1 | IPO |" in table and f"step {SHORT_STEPS}" in table
    # The table reports the same runs: D1, tau = 1, IPO's pi(a) and its closed form.
    ipo_a = short_runs["ipo"][TAU1][:, -1, 0].mean()
    star_a = run.ipo_closed_form(D1, 1.0)[0]
    assert f"| D1 | 1 | IPO | {ipo_a:.4f} ± " in table
    assert f"| {star_a:.4f}, " in table
    names = ["results.md"] + [run.plot_file_name(name) for name in run.DATASETS]
    for name in names[1:]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # --publish copies the tables and plots next to run.py (here a stand-in folder).
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.setattr(run, "HERE", str(here))
    assert run.main(argv + ["--publish"]) == 0
    assert sorted(p.name for p in here.iterdir()) == sorted(names)
    assert (here / "results.md").read_text() == table
    with pytest.raises(SystemExit):
        run.main(["--steps", "0", "--out", str(tmp_path)])
