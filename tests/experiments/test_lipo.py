"""LiPO experiment: the criteria on made-up results, the tables, and a tiny end-to-end run.

Dimension letters: R seeds, K list sizes.
"""

import importlib.util
import json
import math
import pathlib

import numpy as np
import pytest

_RUN_PY = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "lipo" / "run.py"


def _load_run():
    spec = importlib.util.spec_from_file_location("lipo_run", _RUN_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run = _load_run()
SIZES = (2, 4, 8, 16, 32)


def _made_up(win_rate_by_setting, seeds=3, jitter=0.01):
    """Results dict as run_all returns it, with small per-seed noise around given win rates."""
    rng = np.random.default_rng(0)
    out = {}
    for name, wr in win_rate_by_setting.items():
        noise_R = jitter * rng.standard_normal(seeds)
        out[name] = {"win_rate": list(wr + noise_R), "sample_gold_reward": list(0.1 + noise_R),
                     "kl": list(5.0 + noise_R), "seconds": [1.0] * seeds}
    return out


def _paper_like():
    """Win rates that follow every published claim, with clear margins."""
    wr = {"point_mse": 0.50, "point_sigmoid": 0.55, "softmax": 0.65, "pair_hinge": 0.78,
          "pair_logistic": 0.80, "list_mle": 0.79, "lipo_lambda": 0.86}
    settings = {run.setting_name(loss, 8): v for loss, v in wr.items()}
    for loss in run.MODES["full"]["sweep"]:
        for j, k in enumerate(SIZES):
            # Only LiPO-λ rises with K; the others drift down.
            settings[run.setting_name(loss, k)] = (0.78 + 0.04 * j if loss == "lipo_lambda"
                                                   else wr[loss] + 0.02 * (2 - j))
    settings[run.setting_name("lipo_lambda", 8)] = 0.86  # the K-sweep point at K = 8
    settings[run.setting_name("lipo_lambda", 8, "constant_gain")] = 0.70
    settings[run.setting_name("lipo_lambda", 8, "constant_discount")] = 0.72
    results = _made_up(settings)
    results[run.setting_name("lipo_lambda", 8, "constant")] = results["pair_logistic_K8"]
    return results


def test_log2_slopes_recovers_a_known_slope():
    values_RxK = np.stack([3.0 * np.log2(SIZES) + c for c in (0.0, 1.0, -2.0)])
    np.testing.assert_allclose(run.log2_slopes(SIZES, values_RxK), [3.0, 3.0, 3.0])
    np.testing.assert_allclose(run.log2_slopes((2, 8), [[0.5, 0.2]]), [-0.15])
    with pytest.raises(ValueError, match="need \\[seeds, >= 2 sizes\\]"):
        run.log2_slopes(SIZES, np.zeros((3, 4)))


def test_beats_uses_paired_differences():
    # Means differ by 0.02 but move together over seeds: the paired interval excludes 0.
    a_R, b_R = [0.70, 0.80, 0.60], [0.68, 0.78, 0.58]
    assert run.beats(a_R, b_R) == "yes"
    assert run.beats(b_R, a_R) == "no"
    assert run.beats([0.70, 0.60, 0.80], [0.68, 0.70, 0.70]) == "mean only"
    assert run.beats([0.7], [0.6]) == "mean only"  # one seed: no interval
    with pytest.raises(ValueError, match="seeds do not match"):
        run.beats([0.1, 0.2], [0.1, 0.2, 0.3])
    assert run.verdict(["yes", "yes"]) == "reproduced"
    assert run.verdict(["yes", "mean only"]) == "partly"
    assert run.verdict(["yes", "no"]) == "not reproduced"
    assert run.verdict([]) == "not reproduced"


def test_claims_reproduced_on_paper_like_results():
    found = run.claims(_paper_like(), SIZES)
    assert [c["claim"] for c in found] == list(run.published.LIPO["claims"])
    assert [c["verdict"] for c in found] == ["reproduced"] * 4
    assert len(found[0]["comparisons"]) == 6 and len(found[3]["comparisons"]) == 3


def test_claims_fail_when_the_data_disagree():
    results = _paper_like()
    # Swap LiPO-λ and pair-logistic at K = 8, and make list-mle rise with K as well.
    results["lipo_lambda_K8"], results["pair_logistic_K8"] = (results["pair_logistic_K8"],
                                                              results["lipo_lambda_K8"])
    for j, k in enumerate(SIZES):
        results[run.setting_name("list_mle", k)]["win_rate"] = [0.6 + 0.05 * j + e
                                                               for e in (0.0, 0.01, -0.01)]
    results["softmax_K8"]["win_rate"] = [0.3, 0.3, 0.3]
    verdicts = {c["claim"]: c["verdict"] for c in run.claims(results, SIZES)}
    claims = run.published.LIPO["claims"]
    assert verdicts[claims[0]] == "not reproduced"  # softmax below the pointwise losses
    assert verdicts[claims[1]] == "not reproduced"
    assert verdicts[claims[2]] == "not reproduced"  # list-mle improves steadily too


def test_markdown_has_every_table_with_paper_numbers():
    text = run.markdown(_paper_like(), SIZES, 3, "full")
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables, current = tables + [current], []
    assert len(tables) == 3
    for table in tables:
        # Every row has as many cells as the header.
        assert len({line.count("|") for line in table}) == 1, table[0]
    assert len(tables[0]) == 2 + 7 and len(tables[1]) == 2 + 3 and len(tables[2]) == 2 + 4
    assert "| LiPO-λ | 86." in text and "| 90.60 | 92.60 |" in text
    assert text.count("→ **reproduced**") == 4


@pytest.mark.experiment
def test_tiny_run_writes_table_plots_and_finite_results(runs_home):
    # No --out: the default folder under $ALIGN_RUNS; `runs_home` checks that nothing was
    # written into experiments/.
    out = runs_home / "lipo_tiny"
    assert run.main(["--tiny"]) == 0
    text = (out / "results.md").read_text()
    assert "| LiPO-λ |" in text and "| K = 2 | K = 8 |" in text
    for name in run.PLOTS:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "results.json").read_text())
    assert saved["mode"] == "tiny"
    assert set(saved["results"]) == {"lipo_lambda_K8", "lipo_lambda_K2"}
    for name, per_seed in saved["results"].items():
        for metric in run.METRICS:
            assert len(per_seed[metric]) == 1, (name, metric)
            assert all(math.isfinite(v) for v in per_seed[metric]), (name, metric)
        assert 0.0 <= per_seed["win_rate"][0] <= 1.0
    # Only the K-sweep claim can be judged from these runs.
    assert [c["claim"] for c in saved["claims"]] == [run.published.LIPO["claims"][2]]
    assert saved["claims"][0]["verdict"] in ("reproduced", "partly", "not reproduced")
