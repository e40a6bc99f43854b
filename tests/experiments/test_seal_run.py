"""SEAL experiment: its pre-registered criteria on null and planted simulations, and a tiny run
end to end (whose reward models also check `reward_models.from_run` against the run's scorer).

Dimension letters: R seeds, M pairs.
"""

import importlib.util
import json
import math
import pathlib

import numpy as np
import pytest

from align.evaluate import stats

_RUN_PY = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "seal" / "run.py"


def _load_run():
    spec = importlib.util.spec_from_file_location("seal_run", _RUN_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run = _load_run()


def _member(rng, *, spoiler, target=0.5, flip=0.05, ratio=1.0, agrees=0.1):
    coef = {k: 0.0 for k in run.FEATURES}
    coef["sentiment_sum"] = target + 0.05 * rng.normal()
    coef["n_sentences"], coef["n_fillers"] = spoiler / 2, spoiler / 2
    return {"coef": coef, "flip_overall": flip,
            "resistance": {"gold_agrees": agrees, "gold_disagrees": agrees * ratio,
                           "n_gold_agrees": 1000, "n_gold_disagrees": 200}}


def _result(rng, r=16, *, pre_spoiler=0.3, shrink=0.2, flip_slope=0.2, ratio=3.0, noise=0.02):
    pre, post = [], []
    for _ in range(r):
        sp = pre_spoiler + noise * rng.normal()
        post_sp = shrink * sp + noise * rng.normal()
        pre.append(_member(rng, spoiler=sp, flip=0.02 + flip_slope * sp + 0.005 * rng.normal()))
        post.append(_member(rng, spoiler=post_sp,
                            flip=0.04 + flip_slope * post_sp + 0.005 * rng.normal(),
                            ratio=ratio * math.exp(0.1 * rng.normal())))
    return {"members": {"pre": pre, "post": post}}


def test_planted_effects_reproduce_every_claim():
    rng = np.random.default_rng(0)
    v = run.criteria(_result(rng))
    assert set(v["claims"].values()) == {stats.REPRODUCED}, v["claims"]


@pytest.mark.parametrize("null, part", [
    (dict(shrink=0.5), "spoiler_shrinks"),      # halved exactly: not "by at least 50%"
    (dict(pre_spoiler=0.0, shrink=1.0), "spoiler_pre"),  # no spoiler imprint at all
    (dict(ratio=1.5), "resistance_ratio"),      # exactly the 1.5x boundary
    (dict(flip_slope=0.0), "flips_rise"),        # flips unrelated to the imprint
])
def test_null_simulations_rarely_pass(null, part):
    rng = np.random.default_rng(1)
    sims = 200
    passed = sum(run.criteria(_result(rng, **null))["parts"][part].verdict == stats.REPRODUCED
                 for _ in range(sims))
    assert passed / sims <= 0.09, (part, passed)


def test_few_flips_fail_the_two_percent_rule():
    rng = np.random.default_rng(2)
    res = _result(rng, flip_slope=0.0)
    for m in res["members"]["post"]:
        m["flip_overall"] = 0.02 + 0.002 * rng.normal()
    assert run.criteria(res)["parts"]["flips"].verdict != stats.REPRODUCED


def test_a_zero_resistance_rate_is_floored_not_infinite():
    assert run.log_ratio({"gold_agrees": 0.0, "gold_disagrees": 0.2, "n_gold_agrees": 100,
                          "n_gold_disagrees": 10}) == pytest.approx(math.log(0.2 / 0.01))


@pytest.mark.experiment
def test_tiny_run_end_to_end(runs_home, tmp_path):
    assert run.main(["--tiny"]) == 0
    out = runs_home / "seal_tiny"
    results = json.loads((out / "results.json").read_text())
    analysis = results["analysis"]
    assert len(analysis["members"]["pre"]) == len(analysis["members"]["post"]) == 2
    for member in analysis["members"]["post"]:
        shares = member["resistance"]["regimes"]
        assert sum(shares.values()) == pytest.approx(1.0)
        assert set(member["flips"]) == set(run.KINDS)
    assert set(results["claims"].values()) <= set(stats.VERDICTS)
    text = (out / "results.md").read_text()
    assert "SEAL, hh-rlhf" in text and "48.3" in text
    assert (out / run.PLOT).exists()

    # from_run scores (prompt, completion) as training encodes it: the member's reward model
    # on the pipeline's own batch of the same pairs, minus the saved offset.
    import jax

    from align import mesh as mesh_lib
    from align.analysis import reward_models
    from align.data import encoding, pipeline, sources
    from align.objectives import reward_model
    from align.train import runs
    from align.train import state as state_lib

    post = runs.read_run(str(out / "runs" / "post"))
    data = sources.prepare(post.cfg, post.workdir, kinds=("pairs",), data_dir=post.data_dir,
                           tokenizer_path=post.tokenizer_path)
    batch = next(iter(pipeline.batches(
        "pairs", data.pairs["train"], data.tokenizer, batch_size=8, max_len=post.cfg.data.max_len,
        max_prompt_len=post.cfg.data.max_prompt_len, seed=0, shuffle=False, num_epochs=1,
        pad_id=data.tokenizer.pad_id, process_index=0, process_count=1)))
    recs = [data.pairs["train"][int(i)] for i in batch["example_id"]]
    prompts = [encoding.text_field(r, "prompt", 0) for r in recs]
    chosen = [encoding.text_field(r, "chosen", 0) for r in recs]
    model = reward_models.from_run(post.workdir, member=1)
    spec, params, _ = runs.final_params(post, model.mesh, model.rules, member=1)
    model_def = state_lib.describe(spec.make_fn(post.model_cfg))
    raw = jax.jit(lambda p, t, m: reward_model.reward_scores(state_lib.bind(model_def, p), t, m))(
        params, batch["chosen_tokens"], batch["chosen_input_mask"])
    expected = mesh_lib.to_host(raw).astype(np.float64) - model.offset
    np.testing.assert_allclose(model.rewards(prompts, chosen), expected, rtol=1e-5, atol=1e-5)
    assert model.offset != 0.0
    with pytest.raises(Exception, match="max_len"):
        model.rewards(prompts[:1], [" ".join(["the kettle is good ."] * 40)])

    # The same members through the command: imprint beside gold, regimes, robustness.
    from align.analysis import seal_report

    report = tmp_path / "report.md"
    assert seal_report.main(["--model", post.workdir, "--member", "1",
                             "--pre", str(out / "runs" / "pre"), "--pre_member", "1",
                             "--num_pairs", "32", "--out", str(report)]) == 0
    text = report.read_text()
    for needle in ("| n_sentences |", "| stayed |", "| add_fact |", "label contradicts gold"):
        assert needle in text

    # DataInf on the member's last blocks: a training pair equal to a target pair lowers the
    # target loss when up-weighted (I < 0), the same pair reversed raises it (I > 0); sharding
    # the pairs over 8 devices gives the same influences.
    from align.analysis import attribution

    target = {"prompt": prompts[:4], "chosen": chosen[:4],
              "rejected": [encoding.text_field(r, "rejected", 0) for r in recs[:4]]}
    train = {"prompt": target["prompt"] * 2, "chosen": target["chosen"] + target["rejected"],
             "rejected": target["rejected"] + target["chosen"]}
    for select in ("head", "last_layer"):
        infl = attribution.pair_influence(model, train, target, select=select, chunk_size=4)
        assert infl.shape == (8,) and np.all(infl[:4] < 0) and np.all(infl[4:] > 0), infl
    sharded = attribution.pair_influence(
        model, train, target, chunk_size=8,
        mesh=mesh_lib.make_mesh({"data": -1, "fsdp": 1, "tensor": 1}, jax.devices()[:8]),
        rules=model.rules)
    np.testing.assert_allclose(sharded, infl, rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="only 2 layers"):
        attribution.split_params(model.params, "last_layers:3")
