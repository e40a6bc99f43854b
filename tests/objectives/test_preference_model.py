"""Tests for align.objectives.preference_model: loss oracle, binding, training, P(a ≻ b).

Dimension letters: B batch (pairs), T tokens, M preference-embedding width.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

from align import config as config_lib
from align.models import preference as pref
from align.models import transformer as tr
from align.objectives import preference_model as pm
from align.train import state as state_lib

CFG = tr.TransformerConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                           d_ff=64, max_len=16)
MAKE_FN = functools.partial(pref.PreferenceModel, CFG, pref_dim=4, head_init_std=0.5)


@pytest.fixture(scope="module")
def model_def():
    return state_lib.describe(lambda rngs: MAKE_FN(rngs=rngs))


def _random_params(model_def, seed):
    """Random values for every parameter, drawn in NumPy (no per-shape compiles at init)."""
    rng = np.random.default_rng(seed)

    def draw(path, shape):
        name = jax.tree_util.keystr(path)
        if "scale" in name:  # RMSNorm scales near 1
            return (1.0 + 0.1 * rng.normal(size=shape.shape)).astype(np.float32)
        std = 0.5 if ("head" in name or "pref" in name) else 0.1
        return (std * rng.normal(size=shape.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, model_def.abstract_params)


@pytest.fixture(scope="module")
def params(model_def):
    return _random_params(model_def, 0)


def _pairs_batch(seed, b=6, t=8, gold=False, chosen_last=None, rejected_last=None):
    rng = np.random.default_rng(seed)
    batch = {}
    for side, last in (("chosen", chosen_last), ("rejected", rejected_last)):
        lengths = rng.integers(3, t + 1, size=b)
        tokens = rng.integers(10, CFG.vocab_size, size=(b, t)).astype(np.int32)
        mask = (np.arange(t)[None] < lengths[:, None]).astype(np.int32)
        if last is not None:
            tokens[np.arange(b), lengths - 1] = last
        batch.update({f"{side}_tokens": tokens, f"{side}_input_mask": mask,
                      f"{side}_loss_mask": mask.copy()})
    if gold:
        batch["chosen_gold"] = rng.normal(size=b).astype(np.float32)
        batch["rejected_gold"] = rng.normal(size=b).astype(np.float32)
        batch["rejected_gold"][1] = batch["chosen_gold"][1]  # a gold tie
    batch["example_id"] = np.arange(b, dtype=np.int32)
    return batch


def test_preference_loss_oracle_extremes_and_grads():
    rng = np.random.default_rng(0)
    logit = rng.normal(size=32) * 4
    np.testing.assert_allclose(pm.preference_loss(jnp.asarray(logit, jnp.float32)),
                               np.logaddexp(0.0, -logit), rtol=1e-5, atol=1e-7)
    z = jnp.array([50.0, -50.0])
    loss, grad = jax.value_and_grad(lambda x: jnp.sum(pm.preference_loss(x)))(z)
    assert np.isfinite(float(loss)) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(pm.preference_loss(z), [np.exp(-50.0), 50.0], rtol=1e-5)
    with jax.enable_x64(True):
        check_grads(pm.preference_loss, [jnp.asarray(logit[:5], jnp.float64)], order=2,
                    modes=("rev",), eps=1e-5)


def test_binding_matches_float64_oracle_from_embeddings(model_def, params):
    batch = _pairs_batch(2, gold=True)
    objective = pm.make(config_lib.objective_config("preference_model", pref_dim=4))
    assert (objective.name, objective.data, objective.model.name, objective.uses_reference) == (
        "preference_model", "pairs", "preference", False)

    @jax.jit
    def run(params, batch):
        model = state_lib.bind(model_def, params)
        out = objective.loss(model, objective.prepare(None, batch, {}, rng=None)[0], {}, rng=None)
        embed_w = model.embed(batch["chosen_tokens"], input_mask_BxT=batch["chosen_input_mask"])
        embed_l = model.embed(batch["rejected_tokens"],
                              input_mask_BxT=batch["rejected_input_mask"])
        prob_B = pm.preference_prob(model, batch["chosen_tokens"], batch["chosen_input_mask"],
                                    batch["rejected_tokens"], batch["rejected_input_mask"])
        prob_rev_B = pm.preference_prob(model, batch["rejected_tokens"],
                                        batch["rejected_input_mask"], batch["chosen_tokens"],
                                        batch["chosen_input_mask"])
        return out, embed_w, embed_l, prob_B, prob_rev_B

    out, (u_w, e_w), (u_l, e_l), prob_B, prob_rev_B = run(params, batch)
    f64 = lambda x: np.asarray(x, np.float64)
    skew = f64(params["pref_skew"])
    logit = f64(u_w) - f64(u_l) + np.einsum("bm,mn,bn->b", f64(e_w), skew - skew.T, f64(e_l))
    assert np.std(logit) > 1e-3
    np.testing.assert_allclose(out.loss_sum, np.logaddexp(0.0, -logit).sum(), rtol=1e-5)
    assert float(out.weight) == 6.0
    m = {k: float(num) / float(den) for k, (num, den) in out.metrics.items()}
    assert set(m) == {"accuracy", "prob_chosen", "gold_agreement"}
    assert 0.0 <= m["accuracy"] <= 1.0 and 0.0 < m["prob_chosen"] < 1.0
    np.testing.assert_allclose(m["accuracy"], np.mean(logit > 0), atol=1e-6)
    np.testing.assert_allclose(m["prob_chosen"], np.mean(1 / (1 + np.exp(-logit))), rtol=2e-4)
    np.testing.assert_allclose(prob_B, 1 / (1 + np.exp(-logit)), rtol=2e-4, atol=1e-7)
    np.testing.assert_allclose(prob_B + prob_rev_B, np.ones(6), rtol=1e-6)
    gold_diff = batch["chosen_gold"] - batch["rejected_gold"]
    ranked = gold_diff != 0
    assert float(out.metrics["gold_agreement"][1]) == 5
    np.testing.assert_allclose(
        m["gold_agreement"], np.mean(((logit > 0) == (gold_diff > 0))[ranked]), atol=1e-6)


def test_settings_and_errors(model_def, params):
    cfg = config_lib.objective_config("preference_model")
    assert cfg.to_dict() == {"name": "preference_model", "pref_dim": 8}
    with pytest.raises(config_lib.ConfigError, match="pref_dim"):
        config_lib.objective_config("preference_model", pref_dim=2.5)
    with pytest.raises(ValueError, match="pref_dim"):
        pm.make(config_lib.objective_config("preference_model", pref_dim=3))
    assert pm.OBJECTIVES == {"preference_model": pm.make}
    # The model was built with pref_dim 4; an objective sized 8 must say so, not fail in a matmul.
    model = state_lib.bind(model_def, params)
    with pytest.raises(ValueError, match="pref_dim is 8 .* width 4"):
        pm.make(cfg).loss(model, _pairs_batch(3), {}, rng=None)
    with pytest.raises(ValueError, match="rejected_tokens"):
        batch = {k: v for k, v in _pairs_batch(3).items() if k != "rejected_tokens"}
        pm.make(config_lib.objective_config("preference_model", pref_dim=4)).loss(
            model, batch, {}, rng=None)


def test_a_few_adam_steps_separate_a_separable_set(model_def, params):
    objective = pm.make(config_lib.objective_config("preference_model", pref_dim=4))
    loss_fn = lambda p, b: objective.loss(state_lib.bind(model_def, p), b, {}, rng=None)
    opt = optax.adam(1e-2)

    @jax.jit
    def step(p, opt_state, batch):
        grads, out = jax.grad(lambda p: (loss_fn(p, batch).loss_sum, loss_fn(p, batch)),
                              has_aux=True)(p)
        updates, opt_state = opt.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, out  # out: before this update

    acc = lambda out: float(out.metrics["accuracy"][0]) / float(out.metrics["accuracy"][1])
    opt_state0 = jax.jit(opt.init)(params)
    # Of the two labellings, start from the one the random model ranks worse.
    batch = min((_pairs_batch(4, b=8, chosen_last=w, rejected_last=l) for w, l in ((3, 7), (7, 3))),
                key=lambda b: acc(step(params, opt_state0, b)[2]))
    p, opt_state = params, opt_state0
    for i in range(16):  # the last call reports the loss after 15 updates
        p, opt_state, out = step(p, opt_state, batch)
        before = out if i == 0 else before
    assert "gold_agreement" not in out.metrics  # the batch has no golds
    assert acc(before) < 1.0 and acc(out) == 1.0
    assert float(out.loss_sum) < 0.5 * float(before.loss_sum)
    assert float(out.metrics["prob_chosen"][0]) / 8 > 0.8
