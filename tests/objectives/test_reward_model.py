"""Tests for align.objectives.reward_model: BT loss oracle, binding, training, reward offset.

Dimension letters: B batch (pairs), N sequences, T tokens.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

from align import config as config_lib
from align.models import heads
from align.models import transformer as tr
from align.objectives import reward_model as rm
from align.train import state as state_lib

CFG = tr.TransformerConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                           d_ff=64, max_len=16)
MAKE_FN = functools.partial(heads.ScalarModel, CFG, head_init_std=0.5)


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
        std = 0.5 if "head" in name else 0.1
        return (std * rng.normal(size=shape.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, model_def.abstract_params)


@pytest.fixture(scope="module")
def params(model_def):
    return _random_params(model_def, 0)


def _sequences(rng, n, t, last_token=None):
    """Right-padded random sequences; `last_token` (if given) ends every row."""
    lengths = rng.integers(3, t + 1, size=n)
    tokens = rng.integers(10, CFG.vocab_size, size=(n, t)).astype(np.int32)
    mask = (np.arange(t)[None] < lengths[:, None]).astype(np.int32)
    if last_token is not None:
        tokens[np.arange(n), lengths - 1] = last_token
    return tokens, mask


def _pairs_batch(seed, b=6, t=8, gold=False, chosen_last=None, rejected_last=None):
    rng = np.random.default_rng(seed)
    batch = {}
    for side, last in (("chosen", chosen_last), ("rejected", rejected_last)):
        tokens, mask = _sequences(rng, b, t, last)
        batch.update({f"{side}_tokens": tokens, f"{side}_input_mask": mask,
                      f"{side}_loss_mask": mask.copy()})
    if gold:
        batch["chosen_gold"] = rng.normal(size=b).astype(np.float32)
        batch["rejected_gold"] = rng.normal(size=b).astype(np.float32)
        batch["rejected_gold"][0] = batch["chosen_gold"][0]  # a gold tie
    batch["example_id"] = np.arange(b, dtype=np.int32)
    return batch


def _bt_oracle(z):
    z = np.asarray(z, np.float64)
    return np.logaddexp(0.0, -z)  # -log sigmoid(z) = log(1 + e^-z)


def test_bt_loss_matches_float64_oracle_and_is_finite_at_extremes():
    rng = np.random.default_rng(0)
    r_w, r_l = rng.normal(size=(2, 64)) * 3
    loss_B = rm.bt_loss(jnp.asarray(r_w, jnp.float32), jnp.asarray(r_l, jnp.float32))
    assert loss_B.shape == (64,) and loss_B.dtype == jnp.float32
    np.testing.assert_allclose(loss_B, _bt_oracle(r_w - r_l), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(rm.bt_loss(jnp.zeros(3), jnp.zeros(3)), np.full(3, np.log(2)),
                               rtol=1e-6)
    z = jnp.array([50.0, -50.0, 0.0])
    extreme = rm.bt_loss(z, jnp.zeros(3))
    grad = jax.grad(lambda x: jnp.sum(rm.bt_loss(x, jnp.zeros(3))))(z)
    assert np.all(np.isfinite(extreme)) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(extreme, _bt_oracle(np.array([50.0, -50.0, 0.0])), rtol=1e-5)
    # d/dz of -log sigma(z) is -sigma(-z).
    np.testing.assert_allclose(grad, -1.0 / (1.0 + np.exp(np.array([50.0, -50.0, 0.0]))),
                               rtol=1e-5, atol=1e-30)


def test_bt_loss_check_grads():
    rng = np.random.default_rng(1)
    with jax.enable_x64(True):
        args = [jnp.asarray(a, jnp.float64) for a in rng.normal(size=(2, 5))]
        check_grads(rm.bt_loss, args, order=2, modes=("rev",), eps=1e-5)
        check_grads(rm.center_penalty, args, order=1, modes=("rev",), eps=1e-5)


def test_binding_matches_separate_forwards_and_oracle(model_def, params):
    batch = _pairs_batch(2, gold=True)
    cfg = config_lib.objective_config("reward_model", center_coef=0.3)
    objective = rm.make(cfg)
    assert (objective.name, objective.data, objective.model.name, objective.uses_reference) == (
        "reward_model", "pairs", "scalar", False)

    @jax.jit
    def run(params, batch):
        model = state_lib.bind(model_def, params)
        out = objective.loss(model, objective.prepare(None, batch, {}, rng=None)[0], {}, rng=None)
        r_w = rm.reward_scores(model, batch["chosen_tokens"], batch["chosen_input_mask"])
        r_l = rm.reward_scores(model, batch["rejected_tokens"], batch["rejected_input_mask"])
        return out, r_w, r_l

    out, r_w, r_l = run(params, batch)
    r_w, r_l = np.asarray(r_w, np.float64), np.asarray(r_l, np.float64)
    assert np.std(r_w) > 1e-3
    expected = _bt_oracle(r_w - r_l) + 0.3 * (r_w + r_l) ** 2
    np.testing.assert_allclose(out.loss_sum, expected.sum(), rtol=1e-5)
    assert float(out.weight) == 6.0
    m = {k: float(num) / float(den) for k, (num, den) in out.metrics.items()}
    assert set(m) == {"accuracy", "margin", "reward_chosen", "reward_rejected", "gold_agreement"}
    assert 0.0 <= m["accuracy"] <= 1.0
    np.testing.assert_allclose(m["accuracy"], np.mean(r_w > r_l), atol=1e-6)
    np.testing.assert_allclose(m["margin"], np.mean(r_w - r_l), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(m["reward_chosen"], np.mean(r_w), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(m["reward_rejected"], np.mean(r_l), rtol=1e-4, atol=1e-5)
    gold_diff = batch["chosen_gold"] - batch["rejected_gold"]
    ranked = gold_diff != 0
    assert float(out.metrics["gold_agreement"][1]) == ranked.sum() == 5  # the tie is left out
    np.testing.assert_allclose(
        m["gold_agreement"], np.mean(((r_w > r_l) == (gold_diff > 0))[ranked]), atol=1e-6)


def test_clear_errors(model_def, params):
    batch = _pairs_batch(3)
    objective = rm.make(config_lib.objective_config("reward_model"))
    model = state_lib.bind(model_def, params)
    with pytest.raises(ValueError, match="chosen_input_mask"):
        objective.loss(model, {k: v for k, v in batch.items() if k != "chosen_input_mask"}, {},
                       rng=None)
    with pytest.raises(ValueError, match="rejected_gold"):
        objective.loss(model, {**batch, "chosen_gold": np.zeros(6, np.float32)}, {}, rng=None)
    with pytest.raises(ValueError, match="center_coef"):
        rm.make(config_lib.objective_config("reward_model", center_coef=-1.0))
    with pytest.raises(ValueError, match="one value per token"):
        rm.reward_scores(lambda tokens, input_mask_BxT: (tokens, None), batch["chosen_tokens"],
                         batch["chosen_input_mask"])


def test_objective_config_and_registry_entry():
    cfg = config_lib.objective_config("reward_model")
    assert cfg.to_dict() == {"name": "reward_model", "center_coef": 0.0}
    assert config_lib.objective_config("reward_model", center_coef=2).center_coef == 2.0
    with pytest.raises(config_lib.ConfigError, match="center_coef"):
        config_lib.objective_config("reward_model", center_cof=0.1)
    assert rm.OBJECTIVES == {"reward_model": rm.make}


def test_a_few_adam_steps_separate_a_separable_set(model_def, params):
    """Chosen rows end in one token and rejected rows in another: a last-token reward learns it."""
    objective = rm.make(config_lib.objective_config("reward_model"))
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


def test_reward_offset_centres_rewards(model_def, params):
    rng = np.random.default_rng(5)
    batches = []
    for _ in range(2):
        tokens, mask = _sequences(rng, 4, 8)
        batches.append({"tokens": tokens, "input_mask": mask, "loss_mask": mask})
    scores = jax.jit(lambda p, tokens, mask: rm.reward_scores(state_lib.bind(model_def, p),
                                                              tokens, mask))
    score_fn = functools.partial(scores, params)
    all_scores = np.concatenate([np.asarray(score_fn(b["tokens"], b["input_mask"]))
                                 for b in batches]).astype(np.float64)
    assert np.std(all_scores) > 1e-3
    offset = rm.reward_offset(score_fn, batches)
    assert isinstance(offset, float)
    np.testing.assert_allclose(offset, all_scores.mean(), rtol=1e-6)
    np.testing.assert_allclose(np.mean(all_scores - offset), 0.0, atol=1e-6)

    # A model whose reward is a constant 3.5 (zero kernel, bias 3.5) has offset 3.5.
    const = {**params, "head": {"kernel": np.zeros_like(params["head"]["kernel"]),
                                "bias": np.float32(3.5)}}
    assert rm.reward_offset(functools.partial(scores, const), batches) == pytest.approx(3.5)
    # Shifting the bias shifts the offset by the same amount.
    shifted = {**params, "head": {**params["head"], "bias": params["head"]["bias"] + 2.0}}
    assert rm.reward_offset(functools.partial(scores, shifted), batches) == pytest.approx(
        offset + 2.0, abs=1e-5)


def test_reward_offset_weighs_sequences_not_batches():
    # The first token stands in for a reward; batches of 1 and 3 rows.
    batches = [{"tokens": np.array([[8, 0]]), "input_mask": np.ones((1, 2))},
               {"tokens": np.array([[0, 0], [1, 0], [3, 0]]), "input_mask": np.ones((3, 2))}]
    first_token = lambda tokens, mask: tokens[:, 0]
    assert rm.reward_offset(first_token, iter(batches)) == 3.0  # not (8 + 4/3) / 2
    with pytest.raises(ValueError, match="batch 0 lacks 'input_mask'"):
        rm.reward_offset(first_token, [{"tokens": batches[0]["tokens"]}])
    with pytest.raises(ValueError, match="no sequences"):
        rm.reward_offset(first_token, [])
