"""Scorers: the gold world and labeler, a trained reward model (offset applied), a preference model."""

import os

import jax
import numpy as np
import pytest

from align import config as config_lib
from align.train import scorers
from align.data import pipeline
from align.tasks.labelers import Labeler, LabelerConfig
from align.tasks.reviews import ReviewWorld, WorldConfig
from align.train import loop, runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config.model.d_model=32", "--config.model.n_layers=1", "--config.model.n_heads=2",
        "--config.model.n_kv_heads=1", "--config.model.d_ff=64",
        "--config.data.num_train=64", "--config.data.num_test=16",
        "--config.data.batch_size=8", "--config.data.eval_batch_size=8",
        "--config.eval.num_batches=1", "--config.train.progress=False",
        "--config.train.eval_every=0", "--config.init.workdir=", "--config.init.config="]


def test_gold_scorer_matches_the_world_and_its_labeler():
    world = ReviewWorld(WorldConfig(seed=0))
    labeler = Labeler(world, LabelerConfig(temperature=0.5, length_bias=0.2))
    ex = world.sft_examples(6, split="test")
    prompts = [e["prompt"] for e in ex]
    a, b = [e["completion"] for e in ex], [e["completion"] for e in ex[::-1]]
    s = scorers.make("gold", world=world, labeler=labeler)
    np.testing.assert_allclose(s.rewards(prompts, a), [e["gold_reward"] for e in ex], rtol=1e-6)
    np.testing.assert_allclose(s.preferences(prompts, a, b),
                               [labeler.preference_prob(p, x, y) for p, x, y in zip(prompts, a, b)])
    bt = scorers.make("gold", world=world)  # no labeler: Bradley–Terry on the gold reward
    np.testing.assert_allclose(bt.preferences(prompts, a, b),
                               1 / (1 + np.exp(-(s.rewards(prompts, a) - s.rewards(prompts, b)))))
    with pytest.raises(ValueError, match="unknown scorer"):
        scorers.make("oracle", world=world)


def _train(spec, workdir):
    cfg = config_lib.resolve(os.path.join(ROOT, spec), TINY)
    config_lib.write_config(cfg, str(workdir))
    setup = loop.build(cfg, str(workdir), devices=jax.devices()[:2])
    try:
        loop.train(setup)
        c = cfg.data
        batch = next(iter(pipeline.batches(
            "sft", setup.data.sft["train"], setup.data.tokenizer, batch_size=16,
            max_len=c.max_len, max_prompt_len=c.max_prompt_len, seed=0, shuffle=False,
            num_epochs=1)))
        return runs.read_run(str(workdir)), setup.mesh, setup.rules, batch
    finally:
        setup.close()


def test_reward_model_scorer_applies_the_offset(tmp_path):
    run, mesh, rules, batch = _train("configs/reward_model.py:size=tiny,steps=1", tmp_path)
    s = scorers.make("reward_model", run=run, mesh=mesh, rules=rules)
    r = s.rewards(tokens_MxL=batch["tokens"], input_mask_MxL=batch["input_mask"])
    assert r.shape == (16,) and np.isfinite(r).all()
    raw = r + s.offset
    assert s.offset != 0.0
    # Pairs: Bradley–Terry on the shifted rewards (the shift cancels).
    p = s.preferences(tokens_a=batch["tokens"], mask_a=batch["input_mask"],
                      tokens_b=batch["tokens"][::-1], mask_b=batch["input_mask"][::-1])
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-(raw - raw[::-1]))), rtol=1e-5)


def test_preference_model_scorer_is_antisymmetric(tmp_path):
    run, mesh, rules, batch = _train(
        "configs/reward_model.py:objective=preference_model,size=tiny,steps=1", tmp_path)
    s = scorers.make("preference_model", run=run, mesh=mesh, rules=rules)
    a, ma = batch["tokens"], batch["input_mask"]
    b, mb = batch["tokens"][::-1], batch["input_mask"][::-1]
    p_ab = s.preferences(tokens_a=a, mask_a=ma, tokens_b=b, mask_b=mb)
    p_ba = s.preferences(tokens_a=b, mask_a=mb, tokens_b=a, mask_b=ma)
    np.testing.assert_allclose(p_ab + p_ba, 1.0, atol=1e-6)
    np.testing.assert_allclose(s.preferences(tokens_a=a, mask_a=ma, tokens_b=a, mask_b=ma), 0.5,
                               atol=1e-6)
    with pytest.raises(ValueError, match="reference completions"):
        s.rewards(tokens_MxL=a, input_mask_MxL=ma)
