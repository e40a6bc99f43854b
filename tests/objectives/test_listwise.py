"""Tests for align.objectives.listwise: NumPy oracles, reductions, invariances, gradients, bindings.

Dimension letters: B batch, K responses per prompt, T tokens.
"""
import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import test_util as jtu

from align import config as config_lib
from align import logprobs
from align import objectives
from align.models import transformer as tr
from align.objectives import listwise as lw
from align.objectives import pairwise

NAMES = ("point_mse", "point_sigmoid", "softmax", "pair_logistic", "pair_hinge", "list_mle",
         "lipo_lambda")
LIPO_VARIANTS = [dict(weighting=w, scale_by_list_size=s)
                 for w in lw.WEIGHTINGS for s in (False, True)]


# ----------------------------------------------------------------------------- float64 oracles

def _log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def _real(s, psi, m):
    keep = np.asarray(m) > 0
    return np.asarray(s, np.float64)[keep], np.asarray(psi, np.float64)[keep]


def _pairs(psi):
    return [(i, j) for i in range(len(psi)) for j in range(len(psi)) if psi[i] > psi[j]]


def o_point_mse(s, psi, m):
    s, psi = _real(s, psi, m)
    return sum((psi[k] - s[k]) ** 2 for k in range(len(s)))


def o_point_sigmoid(s, psi, m):
    s, psi = _real(s, psi, m)
    return -sum(psi[k] * _log_sigmoid(s[k]) + (1 - psi[k]) * _log_sigmoid(-s[k])
                for k in range(len(s)))


def o_softmax(s, psi, m):
    s, psi = _real(s, psi, m)
    if psi.sum() == 0:
        return 0.0
    log_norm = np.log(np.sum(np.exp(s - s.max()))) + s.max()
    return -sum(psi[k] / psi.sum() * (s[k] - log_norm) for k in range(len(s)))


def o_pair_logistic(s, psi, m):
    s, psi = _real(s, psi, m)
    return sum(np.logaddexp(0.0, -(s[i] - s[j])) for i, j in _pairs(psi))


def o_pair_hinge(s, psi, m):
    s, psi = _real(s, psi, m)
    return sum(max(0.0, 1.0 - (s[i] - s[j])) for i, j in _pairs(psi))


def o_list_mle(s, psi, m):
    s, psi = _real(s, psi, m)
    tau = sorted(range(len(s)), key=lambda k: (-psi[k], k))  # label ties: lower index first
    total = 0.0
    for pos, k in enumerate(tau):
        rest = np.array([s[j] for j in tau[pos:]])
        total -= s[k] - (np.log(np.sum(np.exp(rest - rest.max()))) + rest.max())
    return total


def o_lambda_weights(s, psi, m, weighting="lambda", scale_by_list_size=False):
    """Delta over all K x K slots, 0 where either item is padding."""
    kk = len(m)
    real = [k for k in range(kk) if m[k] > 0]
    order = sorted(real, key=lambda k: (-s[k], k))  # score ties: lower index first
    rank = {k: order.index(k) + 1 for k in real}
    delta = np.zeros((kk, kk))
    for i in real:
        for j in real:
            gain = abs((2.0 ** psi[i] - 1) - (2.0 ** psi[j] - 1))
            disc = abs(1 / math.log2(1 + rank[i]) - 1 / math.log2(1 + rank[j]))
            if weighting in ("constant", "constant_gain"):
                gain = 1.0
            if weighting in ("constant", "constant_discount"):
                disc = 1.0
            delta[i, j] = gain * disc * (len(real) if scale_by_list_size else 1.0)
    return delta


def o_lipo_lambda(s, psi, m, **kw):
    delta = o_lambda_weights(s, psi, m, **kw)
    real = [k for k in range(len(m)) if m[k] > 0]
    return sum(delta[i, j] * np.logaddexp(0.0, -(s[i] - s[j]))
               for i in real for j in real if psi[i] > psi[j])


ORACLES = {"point_mse": o_point_mse, "point_sigmoid": o_point_sigmoid, "softmax": o_softmax,
           "pair_logistic": o_pair_logistic, "pair_hinge": o_pair_hinge, "list_mle": o_list_mle,
           "lipo_lambda": o_lipo_lambda}


def oracle(name, s_BxK, psi_BxK, m_BxK, **kw):
    return np.array([ORACLES[name](s, p, m, **kw) for s, p, m in zip(s_BxK, psi_BxK, m_BxK)])


# ----------------------------------------------------------------------------- inputs

def random_lists(seed=0, b=4, k=5, scale=2.0):
    """Scores, labels (one tie) and a mask with padding; padded slots hold garbage."""
    rng = np.random.default_rng(seed)
    s = rng.normal(0, scale, (b, k)).astype(np.float32)
    psi = rng.uniform(0, 1, (b, k)).astype(np.float32)
    psi[0, 1] = psi[0, 3]  # a label tie: no pair, and list_mle's index order
    m = np.ones((b, k), np.int32)
    m[1, 4] = 0
    m[2, [0, 2]] = 0
    m[3, 1:] = 0  # a single real item: no pairs
    s[m == 0] = np.nan
    psi[m == 0] = 7.0
    return s, psi, m


@functools.lru_cache(maxsize=None)
def _jitted(name, settings):
    return jax.jit(functools.partial(lw.LOSSES[name], **dict(settings)))


def call(name, s, psi, m, **kw):
    # Jitted: one compile per loss and shape is faster than op-by-op dispatch.
    return np.asarray(_jitted(name, tuple(sorted(kw.items())))(s, psi, m))


# ----------------------------------------------------------------------------- maths

@pytest.mark.parametrize("name", NAMES)
def test_losses_match_float64_oracle(name):
    for seed in range(3):
        s, psi, m = random_lists(seed)
        got = call(name, s, psi, m)
        want = oracle(name, s, psi, m)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        assert np.all(np.isfinite(got))
    if name not in ("point_mse", "point_sigmoid"):
        assert got[3] == 0.0  # one real item: nothing to compare with


def test_softmax_with_all_zero_labels_is_zero():
    s = jnp.array([[1.0, -2.0, 0.5], [1.0, -2.0, 0.5]])
    psi = jnp.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.2]])
    loss_fn = lambda x: jnp.sum(lw.softmax_listnet(x, psi, jnp.ones((2, 3))))
    value, grad = jax.jit(jax.value_and_grad(loss_fn))(s)
    np.testing.assert_allclose(value, o_softmax(np.asarray(s[1]), psi[1], np.ones(3)), rtol=1e-6)
    np.testing.assert_array_equal(grad[0], 0.0)
    assert np.all(np.isfinite(grad)) and np.abs(grad[1]).max() > 0


@pytest.mark.parametrize("kw", LIPO_VARIANTS)
def test_lipo_lambda_variants_match_oracle(kw):
    s, psi, m = random_lists(1)
    np.testing.assert_allclose(call("lipo_lambda", s, psi, m, **kw),
                               oracle("lipo_lambda", s, psi, m, **kw), rtol=1e-5, atol=1e-6)
    delta = np.asarray(jax.jit(functools.partial(lw.lambda_weights, **kw))(s, psi, m))
    for b in range(s.shape[0]):
        np.testing.assert_allclose(delta[b], o_lambda_weights(s[b], psi[b], m[b], **kw),
                                   rtol=1e-5, atol=1e-7)


def test_lambda_weights_use_current_score_ranks():
    psi = jnp.array([[1.0, 0.5, 0.0]])
    m = jnp.ones((1, 3))
    weights_fn = jax.jit(lw.lambda_weights)
    d_sorted = weights_fn(jnp.array([[3.0, 2.0, 1.0]]), psi, m)
    d_swapped = weights_fn(jnp.array([[1.0, 2.0, 3.0]]), psi, m)
    g = 2.0 ** np.array([1.0, 0.5, 0.0]) - 1
    inv_d = 1 / np.log2(2 + np.arange(3))
    np.testing.assert_allclose(d_sorted[0, 0, 1], (g[0] - g[1]) * (inv_d[0] - inv_d[1]), rtol=1e-6)
    # With the order reversed, item 0 sits at rank 3 and item 2 at rank 1.
    np.testing.assert_allclose(d_swapped[0, 0, 1], (g[0] - g[1]) * (inv_d[1] - inv_d[2]), rtol=1e-6)
    # Score ties are ranked by index, so tied scores still give distinct ranks (non-zero weights).
    d_tied = weights_fn(jnp.zeros((1, 3)), psi, m)
    np.testing.assert_allclose(d_tied, d_sorted, rtol=1e-6)
    with pytest.raises(ValueError, match="weighting must be one of"):
        lw.lambda_weights(jnp.zeros((1, 3)), psi, m, weighting="ndcg")


@pytest.mark.parametrize("name", NAMES)
def test_extreme_scores_give_finite_values_and_gradients(name):
    rng = np.random.default_rng(5)
    s = (50.0 * rng.choice([-1.0, 1.0], (3, 6))).astype(np.float32)
    s[:, 0], s[:, 1] = 50.0, -50.0
    psi = rng.uniform(0, 1, (3, 6)).astype(np.float32)
    psi[:, 0], psi[:, 1] = 0.0, 1.0  # the worst-ordered pair at log-ratio gap 100
    m = np.ones((3, 6), np.float32)
    m[2, 3:] = 0
    fn = lambda x: jnp.sum(lw.LOSSES[name](x, jnp.asarray(psi), jnp.asarray(m)))
    value, grad = jax.jit(jax.value_and_grad(fn))(jnp.asarray(s))
    assert np.isfinite(value) and np.all(np.isfinite(grad)), (value, grad)
    assert value > 0
    np.testing.assert_allclose(np.asarray(grad)[m == 0], 0.0)


def test_k2_reductions_to_dpo_and_slic():
    rng = np.random.default_rng(2)
    s = rng.normal(0, 3, (16, 2)).astype(np.float32)
    psi = np.tile(np.array([[1.0, 0.0]], np.float32), (16, 1))
    m = np.ones((16, 2), np.int32)
    margin = s[:, 0].astype(np.float64) - s[:, 1]
    dpo = -_log_sigmoid(margin)
    np.testing.assert_allclose(call("pair_logistic", s, psi, m), dpo, rtol=1e-5)
    np.testing.assert_allclose(call("list_mle", s, psi, m), dpo, rtol=1e-5)
    np.testing.assert_allclose(call("pair_hinge", s, psi, m), np.maximum(0, 1 - margin),
                               rtol=1e-5, atol=1e-6)
    constant = abs(1 - 0) * abs(1 / math.log2(2) - 1 / math.log2(3))
    np.testing.assert_allclose(call("lipo_lambda", s, psi, m), constant * dpo, rtol=1e-5)
    # The pairwise module's losses take log-ratios and beta; beta = 1 feeds them the scores.
    chosen, rejected = jnp.asarray(s[:, 0]), jnp.asarray(s[:, 1])
    np.testing.assert_allclose(call("pair_logistic", s, psi, m),
                               pairwise.dpo_loss(chosen, rejected, beta=1.0), rtol=1e-6)
    np.testing.assert_allclose(call("list_mle", s, psi, m),
                               pairwise.dpo_loss(chosen, rejected, beta=1.0), rtol=1e-5)
    np.testing.assert_allclose(call("pair_hinge", s, psi, m),
                               pairwise.slic_norm_loss(chosen, rejected, beta=1.0), rtol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_permutation_invariance(name):
    rng = np.random.default_rng(3)
    s = rng.normal(0, 2, (3, 6)).astype(np.float32)
    psi = rng.uniform(0, 1, (3, 6)).astype(np.float32)  # no ties
    m = np.ones((3, 6), np.int32)
    m[1, [1, 4]] = 0
    base_loss = call(name, s, psi, m)
    for seed in range(3):
        perm = np.random.default_rng(10 + seed).permutation(6)
        np.testing.assert_allclose(call(name, s[:, perm], psi[:, perm], m[:, perm]), base_loss,
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_padding_equals_removing_items(name):
    rng = np.random.default_rng(4)
    s = rng.normal(0, 2, (1, 6)).astype(np.float32)
    psi = rng.uniform(0, 1, (1, 6)).astype(np.float32)
    psi[0, 5] = psi[0, 2]  # ties keep their relative order when items are removed
    keep = np.array([0, 2, 3, 5])
    m = np.zeros((1, 6), np.int32)
    m[0, keep] = 1
    padded = call(name, np.where(m > 0, s, 1e4), np.where(m > 0, psi, 0.9), m)
    sliced = call(name, s[:, keep], psi[:, keep], np.ones((1, 4), np.int32))
    np.testing.assert_allclose(padded, sliced, rtol=1e-6, atol=1e-6)


def test_lipo_lambda_weights_receive_no_gradient():
    s, psi, m = random_lists(6)
    s = np.where(m > 0, s, 0.0).astype(np.float32)
    psi_j, m_j = jnp.asarray(psi), jnp.asarray(m)
    delta = np.stack([o_lambda_weights(s[b], psi[b], m[b]) for b in range(len(s))])
    pair = np.array([[[float(m[b, i] and m[b, j] and psi[b, i] > psi[b, j])
                       for j in range(s.shape[1])] for i in range(s.shape[1])]
                     for b in range(len(s))])
    const_w = jnp.asarray(delta * pair, jnp.float32)
    frozen = lambda x: jnp.sum(const_w * jax.nn.softplus(-(x[:, :, None] - x[:, None, :])))
    got = jax.jit(jax.grad(lambda x: jnp.sum(lw.lipo_lambda(x, psi_j, m_j))))(jnp.asarray(s))
    want = jax.jit(jax.grad(frozen))(jnp.asarray(s))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert np.abs(np.asarray(want)).max() > 1e-3
    through_weights = jax.jit(jax.grad(
        lambda x: jnp.sum(jnp.sin(lw.lambda_weights(x, psi_j, m_j)))))(jnp.asarray(s))
    np.testing.assert_array_equal(through_weights, 0.0)


@pytest.mark.parametrize("name", NAMES)
def test_check_grads(name):
    with jax.enable_x64(True):
        rng = np.random.default_rng(7)
        s = rng.normal(0, 1.5, (2, 5))
        psi = rng.uniform(0, 1, (2, 5))
        m = np.ones((2, 5))
        m[1, 3] = 0
        psi_j, m_j = jnp.asarray(psi), jnp.asarray(m)
        gaps = np.abs(s[:, :, None] - s[:, None, :])[:, ~np.eye(5, dtype=bool)]
        assert gaps.min() > 1e-3 and np.abs(gaps - 1).min() > 1e-3  # no rank ties, no hinge kink
        fn = jax.jit(lambda x: lw.LOSSES[name](x, psi_j, m_j))
        jtu.check_grads(fn, (jnp.asarray(s),), order=1, modes=("fwd", "rev"), eps=1e-5)


# ----------------------------------------------------------------------------- bindings

CFG = tr.TransformerConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                           d_ff=64, max_len=32, init_std=0.1)
B, K, T = 2, 3, 8


@pytest.fixture(scope="module")
def model():
    return tr.Transformer(CFG, rngs=nnx.Rngs(0))


def lists_batch(gold=False):
    rng = np.random.default_rng(8)
    tokens = rng.integers(1, CFG.vocab_size, (B, K, T)).astype(np.int32)
    input_mask = np.ones((B, K, T), np.int32)
    input_mask[:, :, -2:] = 0
    input_mask[1, 0, -3:] = 0
    loss_mask = np.zeros((B, K, T), np.int32)
    loss_mask[:, :, 3:6] = 1
    loss_mask[1, 0, 5] = 0
    list_mask = np.ones((B, K), np.int32)
    list_mask[1, 2] = 0  # a padded item: all-zero masks
    input_mask[1, 2] = 0
    loss_mask[1, 2] = 0
    labels = np.array([[0.2, 0.9, 0.5], [0.7, 0.1, 0.0]], np.float32)
    batch = dict(tokens=tokens, input_mask=input_mask, loss_mask=loss_mask, labels=labels,
                 list_mask=list_mask, example_id=np.arange(B, dtype=np.int32))
    if gold:
        batch["gold"] = np.array([[1.0, 3.0, 2.0], [0.0, 5.0, 9.0]], np.float32)
    return batch


def make_objective(name, **settings):
    return objectives.make(config_lib.objective_config(name, **settings))


def test_registry_and_config():
    for name in NAMES:
        cfg = config_lib.objective_config(name)
        assert cfg.beta == 0.05
        obj = objectives.make(cfg)
        assert (obj.name, obj.data, obj.model.name, obj.uses_reference) == (name, "lists", "lm",
                                                                         True)
        assert name in objectives.names()
    cfg = config_lib.objective_config("lipo_lambda", weighting="constant_gain")
    assert (cfg.weighting, cfg.scale_by_list_size) == ("constant_gain", False)
    with pytest.raises(config_lib.ConfigError, match="weighting"):
        config_lib.objective_config("lipo_lambda", weighting="ndcg")
    with pytest.raises(config_lib.ConfigError, match="scale_by_list_size"):
        config_lib.objective_config("pair_logistic", scale_by_list_size=True)
    with pytest.raises(ValueError, match="objective.beta"):
        make_objective("list_mle", beta=0.0)


@pytest.fixture(scope="module")
def prepared(model):
    """The gold-labelled batch with ref_logp from `model`, through a jitted prepare."""
    obj = make_objective("lipo_lambda")
    add = nnx.jit(lambda m, bt: {**bt, **obj.reference_fields(m, bt)})
    return add(model, lists_batch(gold=True))


def test_prepare_adds_reference_logprobs(model, prepared):
    obj = make_objective("lipo_lambda")
    batch = lists_batch(gold=True)
    assert "ref_logp" not in batch and prepared["ref_logp"].shape == (B, K)

    @nnx.jit
    def item_logp(m, tokens_1xT, input_mask_1xT, loss_mask_1xT):
        logp_1xT = logprobs.shifted_logprobs(m, tokens_1xT, input_mask_1xT)
        return logprobs.sequence_logprobs(logp_1xT, loss_mask_1xT)[0]

    for b, k in itertools.product(range(B), range(K)):
        want = item_logp(model, *(batch[f][b, k][None] for f in ("tokens", "input_mask",
                                                                  "loss_mask")))
        np.testing.assert_allclose(prepared["ref_logp"][b, k], want, rtol=1e-5, atol=1e-5)
    assert prepared["ref_logp"][1, 2] == 0.0 and np.all(np.asarray(prepared["ref_logp"]) <= 0)
    again, stats = obj.prepare(model, prepared, {}, rng=None)
    assert again["ref_logp"] is prepared["ref_logp"] and stats == {}
    with pytest.raises(ValueError, match=r"lacks \['ref_logp'\]"):
        obj.loss(model, batch, {}, rng=None)
    with pytest.raises(ValueError, match="'labels' has shape"):
        obj.loss(model, dict(prepared, labels=batch["labels"][:, :2]), {}, rng=None)
    with pytest.raises(ValueError, match="'tokens' must be"):
        obj.reference_fields(model, dict(batch, tokens=batch["tokens"][0]))


def test_loss_at_reference_equals_oracle_at_zero(model, prepared):
    objs = {name: make_objective(name) for name in NAMES}
    # One jit over every objective: one compile instead of seven.
    outs = nnx.jit(lambda m, bt: {n: o.loss(m, bt, {}, rng=None) for n, o in objs.items()})(
        model, prepared)
    real = prepared["list_mask"] > 0
    for name, out in outs.items():
        want = oracle(name, np.zeros((B, K)), prepared["labels"], prepared["list_mask"])
        np.testing.assert_allclose(out.loss_sum, want.sum(), rtol=1e-5, atol=1e-6, err_msg=name)
        assert float(out.weight) == B
        np.testing.assert_allclose(out.metrics["score_mean"], (0.0, 5.0), atol=1e-7)
        np.testing.assert_allclose(out.metrics["logp_mean"],
                                   (np.asarray(prepared["ref_logp"])[real].sum(), 5.0), rtol=1e-5)
        # Tied scores order no pair correctly.
        np.testing.assert_allclose(out.metrics["pair_accuracy"], (0.0, 4.0))
        assert set(out.metrics) == {"pair_accuracy", "gold_pair_accuracy", "score_best",
                                    "score_mean", "logp_mean"}


def test_cached_reference_scores_metrics_and_gradients(model, prepared):
    objs = {name: make_objective(name, beta=0.5) for name in ("pair_hinge", "lipo_lambda")}
    s = np.array([[0.3, 1.2, -0.4], [0.8, 0.5, 0.0]], np.float32)
    # A cached reference chosen so that the scores are s; no reference model is given.
    batch = dict(prepared, ref_logp=np.asarray(prepared["ref_logp"]) - s / 0.5)
    batch, _ = objs["pair_hinge"].prepare(model, batch, {}, rng=None)

    @nnx.jit
    def run(m, bt):
        hinge = objs["pair_hinge"].loss(m, bt, {}, rng=None)
        lipo_fn = lambda mm: objs["lipo_lambda"].loss(mm, bt, {}, rng=None).loss_sum
        lipo, grads = nnx.value_and_grad(lipo_fn)(m)
        return hinge, lipo, grads

    hinge, lipo, grads = run(model, batch)
    for name, got in (("pair_hinge", hinge.loss_sum), ("lipo_lambda", lipo)):
        want = oracle(name, s, batch["labels"], batch["list_mask"])
        np.testing.assert_allclose(got, want.sum(), rtol=1e-4, atol=1e-5, err_msg=name)
    # Label pairs: list 0 (1,0),(1,2),(2,0); list 1 (0,1): 3 of 4 in score order.
    np.testing.assert_allclose(hinge.metrics["pair_accuracy"], (3.0, 4.0))
    # Gold pairs: list 0 (1,0),(1,2),(2,0): 2 correct; list 1 (1,0) wrong (item 2 is padding).
    np.testing.assert_allclose(hinge.metrics["gold_pair_accuracy"], (2.0, 4.0))
    # Best-labelled items: list 0 item 1 (1.2), list 1 item 0 (0.8).
    np.testing.assert_allclose(hinge.metrics["score_best"], (2.0, 2.0), rtol=1e-4)
    np.testing.assert_allclose(hinge.metrics["score_mean"], (s.sum(), 5.0), rtol=1e-4)
    leaves = jax.tree.leaves(nnx.state(grads))
    assert all(np.all(np.isfinite(x)) for x in leaves)
    assert max(float(jnp.abs(x).max()) for x in leaves) > 0
