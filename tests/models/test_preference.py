"""Tests for align.models.preference: antisymmetry, last-token reads, names, fitting a 3-cycle.

Dimension letters: B batch, T tokens, D model width, M preference-embedding width.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from align import config as config_lib
from align import mesh as mesh_lib
from align.models import heads
from align.models import preference as pref
from align.models import transformer as tr
from align.train import state as state_lib

CFG = tr.TransformerConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                           d_ff=64, max_len=16)


@pytest.fixture(scope="module")
def fresh():
    return pref.PreferenceModel(CFG, rngs=nnx.Rngs(0), pref_dim=8, head_init_std=0.5)


@pytest.fixture(scope="module")
def model(fresh):
    model = nnx.clone(fresh)
    # A starts at zero; give it random values so the skew term is exercised.
    model.pref_skew[...] = np.random.default_rng(100).normal(size=(8, 8)).astype(np.float32)
    return model


def _random_pairs(seed, b=4, t=9):
    rng = np.random.default_rng(seed)
    tokens_a, tokens_b = rng.integers(0, CFG.vocab_size, size=(2, b, t)).astype(np.int32)
    lengths_a, lengths_b = np.array([9, 5, 3, 7]), np.array([4, 9, 6, 2])
    mask_a = (np.arange(t)[None] < lengths_a[:, None]).astype(np.int32)
    mask_b = (np.arange(t)[None] < lengths_b[:, None]).astype(np.int32)
    mask_a[2] = np.roll(mask_a[2], 4)  # a left-padded row: its last real token is not at length-1
    return tokens_a, mask_a, tokens_b, mask_b


PAIRS = _random_pairs(1)


@jax.jit
def _outputs(m, tokens_a, mask_a, tokens_b, mask_b):
    """Everything the tests below read, in one compiled program."""
    hidden_a, _ = m.backbone(tokens_a, input_mask_BxT=mask_a)
    u_a, e_a = m.embed(tokens_a, input_mask_BxT=mask_a)
    u_b, e_b = m.embed(tokens_b, input_mask_BxT=mask_b)
    return dict(hidden_a=hidden_a, u_a=u_a, e_a=e_a, u_b=u_b, e_b=e_b,
                ab=m(tokens_a, mask_a, tokens_b, mask_b), ba=m(tokens_b, mask_b, tokens_a, mask_a),
                aa=m.logit(u_a, e_a, u_a, e_a))


def test_logit_is_antisymmetric_and_self_preference_is_half(model):
    out = jax.tree.map(np.asarray, _outputs(model, *PAIRS))
    ab_B, ba_B, aa_B = out["ab"], out["ba"], out["aa"]
    assert ab_B.shape == (4,) and ab_B.dtype == np.float32
    assert np.std(ab_B) > 1e-3  # not trivially zero
    np.testing.assert_allclose(ba_B, -ab_B, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(aa_B, np.zeros(4))  # so P(y ≻ y) = σ(0) = 1/2 exactly
    # The skew term matters: u alone would not give the same logits.
    assert np.max(np.abs(ab_B - (out["u_a"] - out["u_b"]))) > 1e-3


def test_embed_reads_last_real_token_and_matches_float64_formula(model):
    out = jax.tree.map(lambda x: np.asarray(x, np.float64), _outputs(model, *PAIRS))
    _, mask_a, _, _ = PAIRS
    last = np.array([np.flatnonzero(row).max() for row in mask_a])
    h_BxD = out["hidden_a"][np.arange(4), last]
    # u is what a reward model with the same backbone and head reads at the last real token.
    u_ref = h_BxD @ np.asarray(model.head.kernel[...], np.float64) + float(model.head.bias[...])
    e_ref = h_BxD @ np.asarray(model.pref_proj[...], np.float64)
    np.testing.assert_allclose(out["u_a"], u_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["e_a"], e_ref, rtol=1e-5, atol=1e-5)
    skew = np.asarray(model.pref_skew[...], np.float64)
    logit_ref = u_ref - out["u_b"] + np.einsum("bm,mn,bn->b", e_ref, skew - skew.T, out["e_b"])
    np.testing.assert_allclose(out["ab"], logit_ref, rtol=1e-4, atol=1e-5)


def test_starts_as_the_reward_model_whose_weights_it_loads(fresh):
    """A ScalarModel's params are the backbone and head here; A starts at 0: logit = r_a - r_b."""
    assert np.all(np.asarray(fresh.pref_skew[...]) == 0)
    rm_def = state_lib.describe(
        lambda rngs: heads.ScalarModel(CFG, rngs=rngs, head_init_std=0.5))
    pm_params = nnx.to_pure_dict(nnx.state(fresh, nnx.Param))
    rm_params = {k: pm_params[k] for k in rm_def.abstract_params}
    assert jax.tree.map(jnp.shape, rm_params) == jax.tree.map(jnp.shape, rm_def.abstract_params)
    tokens_a, mask_a, tokens_b, mask_b = PAIRS

    @jax.jit
    def run(rm_params, pm):
        rm = state_lib.bind(rm_def, rm_params)
        reward = lambda tok, mask: heads.last_token_value(rm(tok, input_mask_BxT=mask), mask)
        return pm(tokens_a, mask_a, tokens_b, mask_b), reward(tokens_a, mask_a) - reward(
            tokens_b, mask_b)

    logit_B, reward_diff_B = run(rm_params, fresh)
    assert np.std(reward_diff_B) > 1e-3
    np.testing.assert_allclose(logit_B, reward_diff_B, rtol=1e-5, atol=1e-6)


def test_every_param_has_logical_names_of_its_rank():
    model_def = state_lib.describe(lambda rngs: pref.PreferenceModel(CFG, rngs=rngs, pref_dim=6))
    shapes = jax.tree.leaves(model_def.abstract_params)
    names = jax.tree.leaves(model_def.names, is_leaf=lambda x: isinstance(x, tuple))
    assert len(shapes) == len(names) > 0
    for shape, n in zip(shapes, names):
        assert len(n) == len(shape.shape)
    assert model_def.names["pref_proj"] == ("embed", "pref")
    assert model_def.names["pref_skew"] == ("pref", "pref")
    assert model_def.abstract_params["pref_skew"].shape == (6, 6)
    assert model_def.names["head"] == {"kernel": ("embed",), "bias": ()}
    # Every name maps to a mesh rule once "pref" is replicated.
    rules = mesh_lib.logical_rules({**config_lib.default_config().mesh.rules.to_dict(), "pref": ""})
    mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 4, "tensor": 1})
    shardings = mesh_lib.tree_shardings(model_def.abstract_params, model_def.names, rules, mesh)
    assert shardings["pref_skew"].spec == jax.sharding.PartitionSpec(None, None)


def test_pref_dim_must_be_positive_and_even():
    for bad in (0, 3, -2, 2.0):
        with pytest.raises(ValueError, match="pref_dim"):
            pref.PreferenceModel(CFG, rngs=nnx.Rngs(0), pref_dim=bad)


def test_skew_term_fits_a_three_cycle_that_bradley_terry_cannot(model):
    """Items a, b, c with a ≻ b, b ≻ c, c ≻ a: optimise only (u, e, A) on 3 fixed items."""
    model_def = state_lib.describe(lambda rngs: pref.PreferenceModel(CFG, rngs=rngs, pref_dim=8))
    model_params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    winner, loser = np.array([0, 1, 2]), np.array([1, 2, 0])

    def logits(params, use_skew):
        m = state_lib.bind(model_def, {**model_params, "pref_skew": params["skew"] * use_skew})
        u, e = params["u"], params["e"]
        return m.logit(u[winner], e[winner], u[loser], e[loser])

    opt = optax.adam(0.1)

    @jax.jit
    def step(params, opt_state, use_skew):
        loss_fn = lambda p: -jnp.sum(jax.nn.log_sigmoid(logits(p, use_skew)))
        grads = jax.grad(loss_fn)(params)
        updates, opt_state = opt.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, logits(params, use_skew)

    def fit(use_skew):
        rng = np.random.default_rng(0)
        params = {"u": np.zeros(3, np.float32), "e": rng.normal(size=(3, 8)).astype(np.float32),
                  "skew": 0.1 * rng.normal(size=(8, 8)).astype(np.float32)}
        opt_state = jax.jit(opt.init)(params)
        for _ in range(301):  # the last call reports the logits after 300 updates
            params, opt_state, logit_3 = step(params, opt_state, np.float32(use_skew))
        return 1.0 / (1.0 + np.exp(-np.asarray(logit_3, np.float64)))

    p_pm = fit(1.0)
    assert np.all(p_pm > 0.9), p_pm
    # Bradley–Terry: the three margins around the cycle sum to 0, so one is <= 0.
    p_bt = fit(0.0)
    assert p_bt.min() <= 0.5 + 1e-6, p_bt
