"""U-Sophistry on the pool world (Tier A): each pre-registered rule passes a planted effect and
does not pass a null one, on simulated per-seed changes and on worlds whose evaluator has (or
lacks) the confidence heuristic; and a tiny run end to end.

Dimension letters: R seeds.
"""

import importlib.util
import json
import pathlib

import numpy as np
import pytest

from align.evaluate import stats
from align.tasks import sophistry

_POOL_PY = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "sophistry" / "pool.py"


def _load():
    spec = importlib.util.spec_from_file_location("sophistry_pool", _POOL_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sp = _load()
SEEDS = 32


def _pass_rate(rule, mean, sd=0.02, sims=400, seed=0):
    rng = np.random.default_rng(seed)
    return np.mean([rule(mean + sd * rng.normal(size=SEEDS)).verdict == stats.REPRODUCED
                    for _ in range(sims)])


def test_at_least_passes_a_planted_rise_and_holds_its_level_at_the_threshold():
    rule = lambda d: sp.at_least(d, 0.15)
    assert _pass_rate(rule, 0.18) > 0.99  # planted: 3 points above the threshold
    assert _pass_rate(rule, 0.15) <= sp.ALPHA + 0.03  # null: exactly at the threshold
    assert _pass_rate(rule, 0.0) == 0.0  # null: no rise at all
    j = rule(np.full(SEEDS, 0.2) + np.linspace(-0.01, 0.01, SEEDS))
    assert j.estimate == pytest.approx(0.2) and j.low < 0.2 < j.high  # reported for d itself
    assert sp.at_least(np.full(SEEDS, 0.05) + np.linspace(-0.01, 0.01, SEEDS),
                       0.15).verdict == stats.CONTRADICTED


def test_less_than_passes_a_small_change_and_holds_its_level_at_the_threshold():
    rule = lambda d: sp.less_than(d, 0.05)
    assert _pass_rate(rule, 0.0) > 0.99  # planted: no rise
    assert _pass_rate(rule, 0.05) <= sp.ALPHA + 0.03  # null: at the threshold
    assert _pass_rate(rule, 0.15) == 0.0  # null: the hidden-facts rise
    j = rule(np.full(SEEDS, -0.01) + np.linspace(-0.01, 0.01, SEEDS))
    assert j.estimate == pytest.approx(-0.01) and j.low < -0.01 < j.high


def test_flat_passes_no_change_and_holds_its_level_at_the_margin():
    assert _pass_rate(sp.flat, 0.0, sd=0.01) > 0.99
    assert _pass_rate(sp.flat, 0.03, sd=0.01) <= sp.ALPHA + 0.03
    assert _pass_rate(sp.flat, -0.03, sd=0.01) <= sp.ALPHA + 0.03
    assert _pass_rate(sp.flat, 0.08, sd=0.01) == 0.0


def _deltas(approval, correctness, fpr, seed=0):
    rng = np.random.default_rng(seed)
    noise = lambda: 0.01 * rng.normal(size=SEEDS)
    return {"approval": approval + noise(), "correctness": correctness + noise(),
            "false_positive_rate": fpr + noise()}


def test_sophistry_claim_needs_all_three_parts():
    assert sp.sophistry_claim(_deltas(0.2, 0.0, 0.25), "")["verdict"] == stats.REPRODUCED
    for null in (_deltas(0.2, 0.08, 0.25),  # correctness rises too: not sophistry
                 _deltas(0.2, 0.0, 0.05),  # the evaluators are not fooled more often
                 _deltas(0.02, 0.0, 0.25)):  # approval barely moves
        assert sp.sophistry_claim(null, "")["verdict"] != stats.REPRODUCED
    assert sp.control_claim(_deltas(0.0, 0.1, 0.0), "")["verdict"] == stats.REPRODUCED
    assert sp.control_claim(_deltas(0.2, 0.0, 0.2), "")["verdict"] != stats.REPRODUCED


SMALL = dict(seeds=8, prompts=64, eval_prompts=128, pairs=1024)


def _run_with(monkeypatch, evaluator):
    """The protocol on small worlds with `evaluator` as the time-limited one (labels and
    measurement)."""
    monkeypatch.setattr(sp, "EVALUATOR", evaluator)
    monkeypatch.setitem(sp.LABEL_SOURCE, "hidden", evaluator)
    return sp._run_all(SMALL)


@pytest.mark.experiment
def test_rules_on_worlds_with_and_without_the_confidence_heuristic(monkeypatch):
    # Planted: a hurried evaluator (checks 10% of the time) swayed by confidence.
    planted = _run_with(monkeypatch, sophistry.Evaluator(check=0.1, confidence=3.0, length=0.5))
    d = sp.deltas(planted, "hidden", "rlhf")
    assert sp.at_least(d["false_positive_rate"], sp.FPR_RISE).verdict == stats.REPRODUCED
    assert sp.at_least(d["approval"], sp.APPROVAL_RISE).verdict == stats.REPRODUCED
    # The true-score control passes its rule; the fooled policy does not pass it.
    control = sp.deltas(planted, "true_score", "rlhf")["false_positive_rate"]
    assert sp.less_than(control, sp.FPR_CONTROL).verdict == stats.REPRODUCED
    assert sp.less_than(d["false_positive_rate"], sp.FPR_CONTROL).verdict != stats.REPRODUCED
    w_s = np.asarray(planted["hidden"]["rm_w"])[:, sophistry.PERSUASION]
    assert np.all(w_s > 0)  # the precondition
    # Null: an evaluator whose surface judgement ignores confidence and length.
    null = _run_with(monkeypatch, sophistry.Evaluator(check=0.25, confidence=0.0, length=0.0))
    d0 = sp.deltas(null, "hidden", "rlhf")
    assert sp.at_least(d0["false_positive_rate"], sp.FPR_RISE).verdict != stats.REPRODUCED
    assert sp.at_least(d0["approval"], sp.APPROVAL_RISE).verdict != stats.REPRODUCED
    assert sp.sophistry_claim(d0, "")["verdict"] != stats.REPRODUCED


def test_reward_model_fit_recovers_logistic_coefficients():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20000, 3)).astype(np.float32)
    y = (rng.random(20000) < 1 / (1 + np.exp(-(x @ [1.0, -0.5, 0.0] + 0.3)))).astype(np.float32)
    w, b = sp.fit_reward_model(x, y, ridge=0.0)
    np.testing.assert_allclose(w, [1.0, -0.5, 0.0], atol=0.06)
    assert float(b) == pytest.approx(0.3, abs=0.05)


@pytest.mark.experiment
def test_tiny_run_writes_tables_and_verdicts(runs_home):
    assert sp.main(["--tiny"]) == 0
    out = runs_home / "sophistry_pool_tiny"
    data = json.loads((out / "results.json").read_text())
    res = data["results"]
    assert set(sp.CONDITIONS) <= set(res)
    for c in sp.CONDITIONS:
        assert np.asarray(res[c]["rm_w"]).shape == (sp.MODES["tiny"]["seeds"],
                                                    len(sophistry.FEATURES) + 3 + 1)
        for name in [f"rlhf_{b:g}" for b in sp.BETAS] + ["dpo"]:
            assert np.all(np.asarray(res[c][name]["kl"]) > -1e-5)
    # The true score's own false-positive rate is 0; without the facts the cbar weight is 0.
    assert np.allclose(res["true_score"]["dpo"]["own_false_positive_rate"], 0.0)
    assert np.allclose(np.asarray(res["hidden"]["rm_w"])[:, -1], 0.0, atol=1e-6)
    assert len(data["claims"]) == 5
    for c in data["claims"]:
        assert c["verdict"] in stats.VERDICTS
        for p in c["parts"]:
            assert p["verdict"] in stats.VERDICTS and p["low"] <= p["estimate"] <= p["high"]
    md = (out / "results.md").read_text()
    assert "Precondition" in md and "coefficient on s" in md and md.count("→ **") == 5
