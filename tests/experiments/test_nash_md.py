"""Nash-MD vs RLHF experiment: its pre-registered criteria on made-up win rates, and a tiny run.

Dimension letters: U mixture coefficients β, S styles.
"""

import importlib.util
import json
import math
import pathlib

import numpy as np
import pytest

_RUN_PY = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "nash_md" / "run.py"


def _load_run():
    spec = importlib.util.spec_from_file_location("nash_md_run", _RUN_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run = _load_run()
BETAS = (0.0, 0.125, 0.25, 0.5, 1.0)


def test_criteria_accept_the_papers_shape():
    mean_U = [0.49, 0.60, 0.55, 0.50, 0.15]
    c = run.criteria(BETAS, mean_U, [0.02] * 5)
    assert c["argmax_beta"] == 0.125 and c["best_small_positive"]
    assert c["beta1_worst"] and c["unimodal"] and c["dips"] == []


def test_criteria_reject_each_failure():
    # Best at self-play, not at a positive β.
    assert not run.criteria(BETAS, [0.7, 0.6, 0.55, 0.5, 0.1], [0.01] * 5)["best_small_positive"]
    # Best response is lowest on average but its interval reaches the next mean.
    c = run.criteria(BETAS, [0.5, 0.6, 0.55, 0.45, 0.40], [0.01, 0.01, 0.01, 0.01, 0.06])
    assert not c["beta1_worst"]
    # Best response not the lowest at all.
    assert not run.criteria(BETAS, [0.3, 0.6, 0.5, 0.4, 0.35], [0.01] * 5)["beta1_worst"]


def test_a_dip_beyond_the_intervals_breaks_unimodality():
    mean_U = [0.50, 0.60, 0.40, 0.60, 0.10]
    c = run.criteria(BETAS, mean_U, [0.02] * 5)
    assert not c["unimodal"] and c["dips"] == [(0, 2, 3)]
    # The same dip inside overlapping intervals is not a dip.
    assert run.criteria(BETAS, mean_U, [0.2, 0.2, 0.2, 0.2, 0.01])["unimodal"]


def test_criteria_check_their_input():
    with pytest.raises(ValueError, match="end at 1"):
        run.criteria((0.0, 0.25, 0.5), [0.5, 0.5, 0.5], [0.0] * 3)
    with pytest.raises(ValueError, match=">= 3 betas"):
        run.criteria((0.0, 1.0), [0.5, 0.5], [0.0, 0.0])
    with pytest.raises(ValueError, match="shapes"):
        run.criteria(BETAS, [0.5] * 4, [0.0] * 5)


def test_style_shares_count_openers():
    lab = run.judge()
    prompt = "review the kettle :"
    texts_BxK = [["the kettle is good .", "it works well ."], ["i like the kettle .", "wow ."]]
    np.testing.assert_allclose(run.style_shares([prompt, prompt], texts_BxK, lab.world),
                               [0.25, 0.25, 0.25, 0.25])


def test_the_judge_is_intransitive():
    lab = run.judge()
    prompt = "review the kettle :"
    # Equal gold reward, three styles: each beats the next around the cycle.
    the, i = "the kettle arrived on time .", "i bought the kettle last month ."
    it = "it arrived on time ."
    assert lab.preference_prob(prompt, the, i) > 0.5
    assert lab.preference_prob(prompt, i, it) > 0.5
    assert lab.preference_prob(prompt, it, the) > 0.5


@pytest.mark.experiment
def test_tiny_run_writes_table_plots_and_finite_results(runs_home):
    # No --out: the default folder under $ALIGN_RUNS; `runs_home` checks that nothing was
    # written into experiments/.
    out = runs_home / "nash_md"
    assert run.main(["--tiny"]) == 0
    table = (out / "results.md").read_text()
    assert "win vs RLHF (paper)" in table and "best response (β=1)" in table
    # The precondition was checked before the policy runs and is reported first.
    assert table.startswith("Precondition (checked before any policy run)")
    for name in run.PLOTS:
        assert (out / name).stat().st_size > 1000
    res = json.loads((out / "results.json").read_text())
    betas = run.MODES["tiny"]["betas"]
    assert res["betas"] == list(betas)
    for beta in betas:
        r = res["nash"][str(beta)]
        for key in ("vs_rlhf", "vs_sft", "kl", "gold_win_vs_sft"):
            assert len(r[key]) == 1 and all(math.isfinite(v) for v in r[key]), (beta, key)
            if key != "kl":
                assert all(0.0 <= v <= 1.0 for v in r[key]), (beta, key)
        assert np.asarray(r["styles"]).shape == (1, 4)
        np.testing.assert_allclose(np.sum(r["styles"]), 1.0)
    pre = res["precondition"]
    assert pre["pairs"] > 0 and math.isfinite(pre["alpha"]) and isinstance(pre["learned"], bool)
    summ = res["summary"]
    assert len(summ["mean"]) == len(summ["hw"]) == len(betas)
    assert all(math.isfinite(v) for v in summ["mean"] + summ["hw"])
    assert set(summ["criteria"]) == {"argmax_beta", "best_small_positive", "beta1_worst", "dips",
                                     "unimodal"}
