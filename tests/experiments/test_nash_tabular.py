"""Tabular Nash-MD / online IPO experiment: small versions of its four claims and its outputs.

Dimension letters: A actions, R seeds, T iterations.
"""

import importlib.util
import math
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

_RUN_PY = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "nash_tabular" / "run.py"


def _load_run():
    spec = importlib.util.spec_from_file_location("nash_tabular_run", _RUN_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run = _load_run()


def test_random_preference_is_a_valid_game():
    pref_AxA = run.random_preference(6, np.random.default_rng(0))
    np.testing.assert_allclose(pref_AxA + pref_AxA.T, np.ones((6, 6)), atol=1e-15)
    np.testing.assert_array_equal(np.diag(pref_AxA), np.full(6, 0.5))
    assert len(np.unique(pref_AxA)) > 6  # not a constant matrix
    with pytest.raises(ValueError, match=r"P\[0, 1\] \+ P\[1, 0\]"):
        run.check_preference([[0.5, 0.7], [0.7, 0.5]])
    with pytest.raises(ValueError, match=r"entry \[0, 1\] = 1.5 is not a probability"):
        run.check_preference([[0.5, 1.5], [-0.5, 0.5]])
    with pytest.raises(ValueError, match="must be square"):
        run.check_preference(np.full((2, 3), 0.5))


def test_nash_gap_certifies_the_library_equilibrium():
    rng = np.random.default_rng(3)
    pref_AxA, ref_logp_A = run.random_preference(4, rng), run.random_reference(4, rng)
    star_A = run.solve_nash(pref_AxA, ref_logp_A, tau=0.3)
    assert abs(run.nash_gap(star_A, pref_AxA, ref_logp_A, tau=0.3)) < 1e-12
    # Anywhere else the gap is strictly positive: the reference, and π* nudged.
    assert run.nash_gap(ref_logp_A, pref_AxA, ref_logp_A, tau=0.3) > 1e-4
    nudged_A = star_A + 0.05 * rng.normal(size=4)
    nudged_A -= np.logaddexp.reduce(nudged_A)
    assert run.nash_gap(nudged_A, pref_AxA, ref_logp_A, tau=0.3) > 1e-5


def test_nash_md_last_iterate_within_theorem1_bound():
    runs = run.nash_md_runs(actions=(3, 6), taus=(0.2, 1.0), seeds=2, steps=300)
    for (n_actions, tau), result in runs.items():
        kl_RxT = result["kl_RxT"]
        bound_T = run.theorem1_bound(tau, np.arange(kl_RxT.shape[1]))
        assert np.all(kl_RxT[:, 1:] <= bound_T[1:]), (n_actions, tau)
        # Converges in the last iterate, not just below a loose bound.
        assert np.all(kl_RxT[:, -1] < kl_RxT[:, 10] / 100), (n_actions, tau)
        assert np.all(kl_RxT[:, -1] < 1e-5), (n_actions, tau)
        assert np.all(np.abs(result["gap_R"]) < 1e-12)
    table = run.nash_md_table(runs, steps=300)
    assert "**0 of 2400**" in table  # 2 A x 2 tau x 2 seeds x 300 iterates
    assert "| 6 | 0.2 | 300 |" in table


def test_nash_md_schedule_rejects_tau_zero():
    with pytest.raises(ValueError, match="needs tau > 0"):
        run.nash_md_trajectory(run.rps_preference(), np.full(3, -math.log(3)), tau=0.0, steps=5)


def test_rps_self_play_cycles_and_nash_md_converges():
    runs = run.rps_runs(steps=3000)
    mwu_TxA, nash_TxA = runs.values()
    uniform_A = np.full(3, -math.log(3))
    dist_T = run.kl(uniform_A, mwu_TxA)
    # Discrete multiplicative weights moves away from the interior equilibrium at every step.
    assert np.all(np.diff(dist_T) > 0)
    assert dist_T[-1] > 5 * dist_T[0]
    rock_T = np.exp(mwu_TxA[-500:, 0])
    assert rock_T.max() - rock_T.min() > 0.5  # still oscillating late in the run
    # Its time average, not its last iterate, is close to the equilibrium.
    assert np.max(np.abs(np.exp(mwu_TxA).mean(axis=0) - 1 / 3)) < 0.05
    assert run.kl(uniform_A, nash_TxA[-1]) < 1e-10
    table = run.rps_table(runs, steps=3000)
    assert "| Nash-MD (τ = 0.1) |" in table and "t = 3000" in table


def test_expected_online_loss_at_reference():
    pref_AxA = jnp.asarray(run.random_preference(3, np.random.default_rng(1)))
    ref_logp_A = jnp.log(jnp.array([0.2, 0.3, 0.5]))
    for tau in (0.25, 2.0):
        ipo = run.expected_online_loss(ref_logp_A, pref_AxA, ref_logp_A, method="ipo", tau=tau)
        dpo = run.expected_online_loss(ref_logp_A, pref_AxA, ref_logp_A, method="dpo", tau=tau)
        np.testing.assert_allclose(float(ipo), 1 / (4 * tau ** 2), rtol=1e-6)
        np.testing.assert_allclose(float(dpo), math.log(2), rtol=1e-6)
    with pytest.raises(ValueError, match="unknown method 'slic'"):
        run.online_descent(np.asarray(pref_AxA), np.asarray(ref_logp_A), method="slic", steps=2)


def test_online_ipo_reaches_nash_and_online_dpo_does_not():
    problems = run.online_problems()
    runs = run.online_runs(steps=2000, problems=problems)
    tau = run.ONLINE_TAU
    for name, (pref_AxA, ref_logp_A) in problems.items():
        star_A = run.solve_nash(pref_AxA, ref_logp_A, tau=tau)
        assert run.kl(star_A, runs[(name, "ipo")][-1]) < 1e-9, name
        assert run.kl(star_A, runs[(name, "dpo")][-1]) > 5e-3, name
    # 2 actions, p = 0.8: the IPO fixed point is σ((p − ½)/τ), DPO's is σ(logit(p)/β), which
    # DPO approaches from below (slowly: its gradient fades like σ(−βz)).
    ipo_a = np.exp(runs[("2 actions, P(a≻b) = 0.8", "ipo")][-1, 0])
    dpo_a_T = np.exp(runs[("2 actions, P(a≻b) = 0.8", "dpo")][:, 0])
    np.testing.assert_allclose(ipo_a, 1 / (1 + math.exp(-0.3 / tau)), atol=1e-9)
    dpo_fixed = 1 / (1 + math.exp(-math.log(4) / tau))
    assert np.all(np.diff(dpo_a_T) > 0) and 0.9 < dpo_a_T[-1] < dpo_fixed
    table = run.online_table(runs, steps=2000, problems=problems)
    assert "| 2 actions, P(a≻b) = 1 | DPO |" in table and "none (π(a) → 1)" in table


def test_online_ipo_gradient_is_self_play_gradient_times_4_over_tau():
    checks = run.gradient_checks(actions=(3, 4), taus=(0.3,), seeds=2)
    for result in checks.values():
        np.testing.assert_allclose(result["cos_R"], 1.0, atol=1e-12)
        np.testing.assert_allclose(result["factor_R"], 4 / 0.3, rtol=1e-9)
        assert np.all(result["closed_R"] < 1e-12)
    ipo_A, pg_A, _ = run.expected_gradients(np.array([0.3, -1.0, 0.2]), run.rps_preference(),
                                            np.log([0.5, 0.25, 0.25]), tau=0.5)
    assert np.linalg.norm(pg_A) > 1e-3  # a non-trivial point, where parallel means something
    np.testing.assert_allclose(ipo_A, 8.0 * pg_A, rtol=1e-9, atol=1e-14)


def test_quick_flag_picks_the_quick_settings(runs_home):
    args, name, sizes, out = run.settings(["--quick"])
    assert name == "quick" and sizes == run.MODES["quick"] and not args.publish
    assert sizes["steps"] < run.NASH_STEPS and sizes["online_steps"] < run.ONLINE_STEPS
    assert sizes["seeds"] < run.SEEDS
    assert out == str(runs_home / run.NAME)
    _, _, sizes, _ = run.settings(["--quick", "--steps", "7", "--online-steps", "9",
                                   "--seeds", "3"])
    assert sizes == {"steps": 7, "online_steps": 9, "seeds": 3}
    assert run.settings([])[2] == {"steps": run.NASH_STEPS, "online_steps": run.ONLINE_STEPS,
                                   "seeds": run.SEEDS}
    with pytest.raises(SystemExit):
        run.settings(["--quick", "--publish"])


def test_main_writes_tables_and_plots(runs_home, tmp_path, monkeypatch):
    # No --out: the default folder, under $ALIGN_RUNS; `runs_home` checks experiments/ is untouched.
    argv = ["--steps", "50", "--online-steps", "50", "--seeds", "1"]
    assert run.main(argv) == 0
    out = runs_home / run.NAME
    text = (out / "results.md").read_text()
    for claim in ("Claim 1", "Claim 2", "Claim 3", "Claim 4"):
        assert f"**{claim}" in text
    # Every row of a table has as many cells as its header (no stray "|" in a cell).
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables, current = tables + [current], []
    assert len(tables) == 5
    for table in tables:
        assert len({line.count("|") for line in table[2:] + table[:1]}) == 1, table[0]
        assert table[1].count("---") == table[0].count("|") - 1
    rows = [line for line in text.splitlines() if line.startswith("| 20 | 1 | 50 |")]
    assert len(rows) == 1
    for name in run.PLOTS:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # --publish copies the tables and plots next to run.py (here a stand-in folder).
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.setattr(run, "HERE", str(here))
    assert run.main(argv + ["--publish"]) == 0
    assert sorted(p.name for p in here.iterdir()) == sorted(["results.md", *run.PLOTS])
    assert (here / "results.md").read_text() == text
    with pytest.raises(SystemExit):
        run.main(["--steps", "1", "--out", str(tmp_path)])
