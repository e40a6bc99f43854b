"""Tests for align.objectives.pairwise: float64 oracles, exact values, gradients, bindings.

Dimension letters: B pairs, T tokens, V vocab.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

from align import config as config_lib
from align import logprobs
from align import mesh as mesh_lib
from align import objectives
from align.models import transformer as tr
from align.objectives import pairwise as pw

# ----------------------------------------------------------------------------- float64 oracles


def log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def o_dpo(rw, rl, beta):
    return -log_sigmoid(beta * (rw - rl))


def o_cdpo(rw, rl, beta, label_smoothing):
    x, e = beta * (rw - rl), label_smoothing
    return -(1 - e) * log_sigmoid(x) - e * log_sigmoid(-x)


def o_robust(rw, rl, beta, label_smoothing):
    x, e = beta * (rw - rl), label_smoothing
    return (-(1 - e) * log_sigmoid(x) + e * log_sigmoid(-x)) / (1 - 2 * e)


def o_ipo(rw, rl, tau):
    return ((rw - rl) - 1 / (2 * tau)) ** 2


def o_slic_hf(sw, sl, st, delta, lam):
    return np.maximum(0.0, delta - sw + sl) - lam * st


def o_slic_norm(rw, rl, beta):
    return np.maximum(0.0, 1 - beta * (rw - rl))


def o_weight(rw, rl, beta):
    return 1 / (1 + np.exp(-beta * (rl - rw)))


def o_simpo(aw, al, beta, gamma):
    return -log_sigmoid(beta * aw - beta * al - gamma)


def o_cpo(sw, sl, beta, nll_weight):
    return -log_sigmoid(beta * (sw - sl)) - nll_weight * sw


def o_log_odds(avg):
    p = np.exp(avg)
    return np.log(p / (1 - p))


def o_orpo(aw, al, lam):
    return -aw - lam * log_sigmoid(o_log_odds(aw) - o_log_odds(al))


# name: (loss, settings, oracle, number of [B] inputs, input kind)
LOSSES = {
    "dpo": (pw.dpo_loss, dict(beta=0.3), o_dpo, 2, "ratio"),
    "cdpo": (pw.cdpo_loss, dict(beta=0.3, label_smoothing=0.2), o_cdpo, 2, "ratio"),
    "robust_dpo": (pw.robust_dpo_loss, dict(beta=0.3, label_smoothing=0.2), o_robust, 2,
                   "ratio"),
    "ipo": (pw.ipo_loss, dict(tau=0.5), o_ipo, 2, "ratio"),
    "slic_hf": (pw.slic_hf_loss, dict(delta=1.0, lam=0.3), o_slic_hf, 3, "logp"),
    "slic_norm": (pw.slic_norm_loss, dict(beta=0.3), o_slic_norm, 2, "ratio"),
    "dpo_gradient_weight": (pw.dpo_gradient_weight, dict(beta=0.3), o_weight, 2, "ratio"),
    "simpo": (pw.simpo_loss, dict(beta=2.0, gamma=0.5), o_simpo, 2, "avg"),
    "cpo": (pw.cpo_loss, dict(beta=0.3, nll_weight=0.7), o_cpo, 2, "logp"),
    "orpo": (pw.orpo_loss, dict(lam=0.1), o_orpo, 2, "avg"),
}


def random_inputs(kind, n_args, seed=0, b=64):
    rng = np.random.default_rng(seed)
    if kind == "ratio":
        return [rng.normal(0, 8, b) for _ in range(n_args)]
    if kind == "logp":  # summed log-probs of sequences
        return [-rng.gamma(2.0, 8.0, b) for _ in range(n_args)]
    return [-rng.uniform(0.02, 4.0, b) for _ in range(n_args)]  # mean token log-probs


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_matches_float64_oracle(name):
    fn, kw, oracle, n_args, kind = LOSSES[name]
    args = random_inputs(kind, n_args)
    expected = oracle(*args, **kw)
    got = fn(*[jnp.asarray(a, jnp.float32) for a in args], **kw)
    assert got.dtype == jnp.float32 and got.shape == (64,)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=2e-5, atol=2e-5)
    with jax.enable_x64(True):
        got64 = fn(*[jnp.asarray(a) for a in args], **kw)
        assert got64.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(got64), expected, rtol=1e-10, atol=1e-12)


def extreme_inputs(kind, n_args):
    if kind == "avg":  # a mean token log-prob is <= 0; 0 itself is a certain response
        values = [-50.0, -1e-8, 0.0]
    else:
        values = [-50.0, 50.0, 0.0]
    grid = np.array(np.meshgrid(*[values] * n_args)).reshape(n_args, -1)
    return [jnp.asarray(g, jnp.float32) for g in grid]


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_extreme_inputs_give_finite_values_and_gradients(name):
    fn, kw, _, n_args, kind = LOSSES[name]
    args = extreme_inputs(kind, n_args)
    assert np.all(np.isfinite(np.asarray(fn(*args, **kw))))
    grads = jax.grad(lambda *a: jnp.sum(fn(*a, **kw)), argnums=tuple(range(n_args)))(*args)
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g))), (name, g)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_check_grads(name):
    fn, kw, _, n_args, kind = LOSSES[name]
    # Keep hinge arguments away from their kink, where the derivative is not defined.
    args = random_inputs(kind, n_args, seed=3, b=8)
    with jax.enable_x64(True):
        check_grads(lambda *a: fn(*a, **kw), [jnp.asarray(a) for a in args], order=1,
                    modes=["rev"])


def test_exact_values_at_zero_log_ratio():
    zero_B = jnp.zeros((3,), jnp.float32)
    np.testing.assert_allclose(pw.dpo_loss(zero_B, zero_B, beta=0.7), np.log(2), rtol=1e-6)
    for tau in (0.05, 0.1, 1.0):
        np.testing.assert_allclose(pw.ipo_loss(zero_B, zero_B, tau=tau), 1 / (4 * tau**2),
                                   rtol=1e-6)
    np.testing.assert_allclose(pw.slic_norm_loss(zero_B, zero_B, beta=0.5), 1.0)
    np.testing.assert_allclose(pw.dpo_gradient_weight(zero_B, zero_B, beta=0.5), 0.5)


def test_smoothed_variants_reduce_to_dpo_and_robust_dpo_is_unbiased():
    rw, rl = [jnp.asarray(a, jnp.float32) for a in random_inputs("ratio", 2, seed=5)]
    dpo = np.asarray(pw.dpo_loss(rw, rl, beta=0.2))
    np.testing.assert_allclose(pw.cdpo_loss(rw, rl, beta=0.2, label_smoothing=0.0), dpo,
                               rtol=1e-6)
    np.testing.assert_allclose(pw.robust_dpo_loss(rw, rl, beta=0.2, label_smoothing=0.0), dpo,
                               rtol=1e-6)
    eps = 0.3
    # cDPO is the DPO loss in expectation over labels flipped with probability ε.
    np.testing.assert_allclose(
        pw.cdpo_loss(rw, rl, beta=0.2, label_smoothing=eps),
        (1 - eps) * dpo + eps * np.asarray(pw.dpo_loss(rl, rw, beta=0.2)), rtol=1e-5)
    # Robust DPO is unbiased: its expectation over flipped labels is the clean DPO loss.
    robust = functools.partial(pw.robust_dpo_loss, beta=0.2, label_smoothing=eps)
    np.testing.assert_allclose((1 - eps) * robust(rw, rl) + eps * robust(rl, rw), dpo,
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="robust_dpo_loss: label_smoothing must be >= 0 and < 0.5"):
        pw.robust_dpo_loss(rw, rl, beta=0.2, label_smoothing=0.5)
    with pytest.raises(ValueError, match="cdpo_loss: label_smoothing"):
        pw.cdpo_loss(rw, rl, beta=0.2, label_smoothing=-0.1)


def test_dpo_gradient_is_minus_beta_times_weight():
    rw, rl = [jnp.asarray(a, jnp.float32) for a in random_inputs("ratio", 2, seed=7)]
    beta = 0.4
    grad_w = jax.grad(lambda w: jnp.sum(pw.dpo_loss(w, rl, beta=beta)))(rw)
    grad_l = jax.grad(lambda l: jnp.sum(pw.dpo_loss(rw, l, beta=beta)))(rl)
    weight = o_weight(np.asarray(rw, np.float64), np.asarray(rl, np.float64), beta)
    np.testing.assert_allclose(grad_w, -beta * weight, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grad_l, beta * weight, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(pw.dpo_gradient_weight(rw, rl, beta=beta), weight, rtol=1e-5)


def test_orpo_log_odds_is_stable_near_certainty():
    # Near 0, 1 − e^x in fp32 keeps few digits: the log-odds need expm1 there.
    avg = jnp.asarray([-1e-5, -1e-3, -0.5, -2.0, -30.0], jnp.float32)
    np.testing.assert_allclose(pw.orpo_log_odds(avg), o_log_odds(np.asarray(avg, np.float64)),
                               rtol=1e-5)
    assert np.isfinite(float(pw.orpo_log_odds(jnp.float32(0.0))))


# ----------------------------------------------------------------------------- bindings

CFG = tr.TransformerConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                           d_ff=64, max_len=32, init_std=0.2)
B, T = 8, 12


def tiny_model(seed):
    """A tiny Transformer with NumPy-drawn weights (no per-parameter compiles: keeps tests fast)."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: tr.Transformer(CFG, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(seed)
    draw = lambda x: (np.ones(x.shape, np.float32) if x.ndim == 1  # norm scales
                      else (CFG.init_std * rng.normal(size=x.shape)).astype(np.float32))
    return nnx.merge(graphdef, jax.tree.map(lambda x: jnp.asarray(draw(x)), state))


@pytest.fixture(scope="module")
def models():
    return tiny_model(0), tiny_model(1)


def pairs_batch(seed=0, b=B, t=T, pad=0):
    """Right-padded pairs sharing a prompt; tokens under input_mask 0 are random junk."""
    rng = np.random.default_rng(seed)
    out = {}
    prompt_len = rng.integers(2, 5, b)
    prompts = rng.integers(1, CFG.vocab_size, (b, t))
    for side in ("chosen", "rejected"):
        tokens = rng.integers(1, CFG.vocab_size, (b, t)).astype(np.int32)
        tokens = np.where(np.arange(t) < prompt_len[:, None], prompts, tokens)
        length = prompt_len + rng.integers(1, t - 4, b)
        input_mask = (np.arange(t) < length[:, None]).astype(np.int32)
        loss_mask = (input_mask & (np.arange(t) >= prompt_len[:, None])).astype(np.int32)
        out.update({f"{side}_tokens": tokens.astype(np.int32), f"{side}_input_mask": input_mask,
                    f"{side}_loss_mask": loss_mask})
    out["chosen_gold"] = rng.normal(size=b).astype(np.float32)
    out["rejected_gold"] = rng.normal(size=b).astype(np.float32)
    out["rejected_gold"][0] = out["chosen_gold"][0]  # a tie: no order to agree with
    out["example_id"] = np.arange(b, dtype=np.int32)
    if pad:  # extra columns outside every mask
        junk = np.random.default_rng(seed + 1000).integers(1, CFG.vocab_size, (b, pad), np.int32)
        for side in ("chosen", "rejected"):
            out[f"{side}_tokens"] = np.concatenate([out[f"{side}_tokens"], junk], 1)
            for k in ("input_mask", "loss_mask"):
                out[f"{side}_{k}"] = np.pad(out[f"{side}_{k}"], [(0, 0), (0, pad)])
    return out


def stacked(batch, field):
    """Chosen rows then rejected rows: the oracles use the same [2B, T] shape as the binding."""
    return np.concatenate([batch[f"chosen_{field}"], batch[f"rejected_{field}"]], 0)


def np_sums(model, batch):
    """[(S(y_w), |y_w|), (S(y_l), |y_l|)] from a float64 NumPy log-softmax of the logits."""
    tokens, loss_mask = stacked(batch, "tokens"), stacked(batch, "loss_mask")
    hidden, _ = model(jnp.asarray(tokens), input_mask_BxT=jnp.asarray(stacked(batch, "input_mask")))
    logits = np.asarray(model.logits(hidden), np.float64)
    top = logits.max(-1, keepdims=True)
    logz = np.log(np.sum(np.exp(logits - top), -1)) + top[..., 0]
    picked = np.take_along_axis(logits[:, :-1], tokens[:, 1:, None], -1)[..., 0] - logz[:, :-1]
    sums, counts = (picked * loss_mask[:, 1:]).sum(1), loss_mask.sum(1).astype(np.float64)
    b = batch["chosen_tokens"].shape[0]
    return [(sums[:b], counts[:b]), (sums[b:], counts[b:])]


@pytest.fixture(scope="module")
def oracle_sums(models):
    batch = pairs_batch()
    return batch, np_sums(models[0], batch), np_sums(models[1], batch)


def oracle(name, cfg, pol, ref):
    """Per-pair losses and implicit rewards from the paper equations on NumPy sums."""
    (sw, nw), (sl, nl) = pol
    (qw, _), (ql, _) = ref
    rw, rl = sw - qw, sl - ql
    if name == "dpo":
        return o_dpo(rw, rl, cfg.beta), cfg.beta * rw, cfg.beta * rl
    if name == "cdpo":
        return o_cdpo(rw, rl, cfg.beta, cfg.label_smoothing), cfg.beta * rw, cfg.beta * rl
    if name == "robust_dpo":
        return o_robust(rw, rl, cfg.beta, cfg.label_smoothing), cfg.beta * rw, cfg.beta * rl
    if name == "ipo":
        if cfg.normalize == "mean":
            rw, rl = rw / nw, rl / nl
        return o_ipo(rw, rl, cfg.tau), cfg.tau * rw, cfg.tau * rl
    if name == "slic_hf":
        return o_slic_hf(sw, sl, sw, cfg.delta, cfg.lam), sw, sl
    if name == "slic_norm":
        return o_slic_norm(rw, rl, cfg.beta), cfg.beta * rw, cfg.beta * rl
    if name == "simpo":
        return (o_simpo(sw / nw, sl / nl, cfg.beta, cfg.gamma), cfg.beta * sw / nw,
                cfg.beta * sl / nl)
    if name == "cpo":
        return o_cpo(sw, sl, cfg.beta, cfg.nll_weight), cfg.beta * sw, cfg.beta * sl
    if name == "orpo":
        return o_orpo(sw / nw, sl / nl, cfg.lam), o_log_odds(sw / nw), o_log_odds(sl / nl)
    raise AssertionError(name)


def run(obj, policy, reference, batch):
    """(prepared batch, loss) in the train step's order: reference fields, prepare, loss."""
    if reference is not None and obj.reference_fields is not None:
        batch = {**batch, **obj.reference_fields(reference, batch)}
    prepared, stats = obj.prepare(policy, batch, obj.init(), rng=None)
    assert stats == {}
    return prepared, obj.loss(policy, prepared, obj.init(), rng=None)


CASES = [(n, {}) for n in sorted(pw.OBJECTIVES)] + [("ipo", dict(normalize="mean"))]


@pytest.mark.parametrize("name,settings", CASES)
def test_binding_matches_oracle(models, oracle_sums, name, settings):
    policy, reference = models
    batch, pol, ref = oracle_sums
    cfg = config_lib.objective_config(name, **settings)
    obj = objectives.make(cfg)
    assert (obj.name, obj.data, obj.model.name) == (name, "pairs", "lm")
    prepared, out = run(obj, policy, reference, batch)
    loss_B, reward_w, reward_l = oracle(name, cfg, pol, ref)
    assert float(out.weight) == B
    np.testing.assert_allclose(float(out.loss_sum) / float(out.weight), loss_B.mean(),
                               rtol=1e-4, atol=1e-5)
    m = {k: float(num) / float(den) for k, (num, den) in out.metrics.items()}
    np.testing.assert_allclose(m["reward_chosen"], reward_w.mean(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(m["reward_rejected"], reward_l.mean(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(m["margin"], (reward_w - reward_l).mean(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(m["accuracy"], np.mean(reward_w > reward_l))
    np.testing.assert_allclose(m["logp_chosen"], pol[0][0].mean(), rtol=1e-5)
    np.testing.assert_allclose(m["logp_rejected"], pol[1][0].mean(), rtol=1e-5)
    gw, gl = batch["chosen_gold"], batch["rejected_gold"]
    decided = gw != gl
    agree = np.where(gw > gl, reward_w > reward_l, reward_w < reward_l)[decided]
    np.testing.assert_allclose(m["gold_agreement"], agree.mean())
    assert float(out.metrics["gold_agreement"][1]) == B - 1
    if obj.uses_reference:
        np.testing.assert_allclose(prepared["ref_chosen_logp"], ref[0][0], rtol=1e-5)
        np.testing.assert_allclose(prepared["ref_rejected_logp"], ref[1][0], rtol=1e-5)
    else:
        assert not obj.uses_reference and "ref_chosen_logp" not in prepared


def test_ipo_mean_normalisation_differs_from_sum(models):
    policy, reference = models
    batch = pairs_batch(seed=2)
    sums = run(objectives.make(config_lib.objective_config("ipo")), policy, reference, batch)[1]
    means = run(objectives.make(config_lib.objective_config("ipo", normalize="mean")), policy,
                reference, batch)[1]
    assert abs(float(sums.loss_sum) - float(means.loss_sum)) > 1e-3


@pytest.mark.parametrize("name,expected", [
    ("dpo", np.log(2)), ("cdpo", np.log(2)), ("robust_dpo", np.log(2)), ("slic_norm", 1.0),
    ("ipo", 1 / (4 * 0.1**2))])
def test_reference_equal_to_policy_gives_exact_values(models, name, expected):
    policy, _ = models
    for normalize in (("sum", "mean") if name == "ipo" else (None,)):
        settings = {} if normalize is None else dict(normalize=normalize)
        obj = objectives.make(config_lib.objective_config(name, **settings))
        _, out = run(obj, policy, policy, pairs_batch(seed=1))
        np.testing.assert_allclose(float(out.loss_sum) / float(out.weight), expected, rtol=1e-5)
        assert float(out.metrics["accuracy"][0]) == 0.0  # equal implicit rewards: no strict win


def test_prefilled_reference_fields_are_used_not_recomputed(models, oracle_sums):
    policy, reference = models
    batch, ((sw, _), (sl, _)), _ = oracle_sums
    obj = objectives.make(config_lib.objective_config("dpo"))
    prepared, out = run(obj, policy, reference, batch)
    again, out_cached = run(obj, policy, None, prepared)
    assert again is prepared
    np.testing.assert_allclose(out_cached.loss_sum, out.loss_sum, rtol=1e-6)
    # Arbitrary cached values must drive the loss: nothing recomputes them behind our back.
    fake = dict(batch, ref_chosen_logp=np.full(B, -3.0, np.float32),
                ref_rejected_logp=np.full(B, -7.0, np.float32))
    _, out_fake = run(obj, policy, None, fake)
    np.testing.assert_allclose(float(out_fake.loss_sum), o_dpo(sw + 3.0, sl + 7.0, 0.1).sum(),
                               rtol=1e-5)
    half = dict(batch, ref_chosen_logp=np.zeros(B, np.float32))
    with pytest.raises(ValueError, match="lacks \\['ref_rejected_logp'\\]"):
        obj.loss(policy, half, {}, rng=None)
    with pytest.raises(ValueError, match="lacks \\['ref_chosen_logp', 'ref_rejected_logp'\\]"):
        obj.loss(policy, batch, {}, rng=None)


def test_logp_metric_equals_shifted_logprobs(models):
    policy, reference = models
    obj = objectives.make(config_lib.objective_config("simpo"))
    batch = pairs_batch(seed=4)
    _, out = run(obj, policy, reference, batch)
    logp_2BxT = logprobs.shifted_logprobs(policy, stacked(batch, "tokens"),
                                          stacked(batch, "input_mask"))
    sums_2B = np.sum(np.asarray(logp_2BxT, np.float64) * stacked(batch, "loss_mask"), axis=1)
    for side, expected in (("chosen", sums_2B[:B].sum()), ("rejected", sums_2B[B:].sum())):
        num, den = out.metrics[f"logp_{side}"]
        np.testing.assert_allclose(float(num), float(expected), rtol=1e-6)
        assert float(den) == B


def jitted_loss(obj, policy, reference):
    """batch -> (loss_sum, logp_chosen sum) through prepare and loss, compiled once per shape."""
    pol_def, pol_state = nnx.split(policy)
    ref_def, ref_state = nnx.split(reference)

    @jax.jit
    def loss_fn(batch):
        pol, ref = nnx.merge(pol_def, pol_state), nnx.merge(ref_def, ref_state)
        out = run(obj, pol, ref, batch)[1]
        return out.loss_sum, out.metrics["logp_chosen"][0]

    return loss_fn


@pytest.fixture(scope="module")
def dpo_loss_fn(models):
    return jitted_loss(objectives.make(config_lib.objective_config("dpo")), *models)


def test_padding_beyond_masks_does_not_change_loss(dpo_loss_fn):
    loss_fn = dpo_loss_fn
    plain = loss_fn(pairs_batch(seed=6))
    padded = loss_fn(pairs_batch(seed=6, pad=5))
    junk = pairs_batch(seed=6)
    for side in ("chosen", "rejected"):  # different tokens where input_mask is 0
        off = junk[f"{side}_input_mask"] == 0
        junk[f"{side}_tokens"] = np.where(off, (junk[f"{side}_tokens"] + 7) % 64,
                                          junk[f"{side}_tokens"]).astype(np.int32)
    assert np.any(junk["chosen_tokens"] != pairs_batch(seed=6)["chosen_tokens"])
    for out in (padded, loss_fn(junk)):
        np.testing.assert_allclose(np.asarray(out), np.asarray(plain), rtol=1e-5)


def test_sharded_batch_equals_single_device(dpo_loss_fn):
    loss_fn = dpo_loss_fn
    batch = pairs_batch(seed=6)
    mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 4, "tensor": 1})
    sharded = mesh_lib.to_global(batch, mesh)
    assert sharded["chosen_tokens"].sharding.spec[0] == ("data", "fsdp")
    np.testing.assert_allclose(np.asarray(loss_fn(sharded)),
                               np.asarray(loss_fn({k: jnp.asarray(v) for k, v in batch.items()})),
                               rtol=1e-5)


def test_gradients_reach_the_policy_and_not_the_reference(models, oracle_sums):
    policy, reference = models
    batch = oracle_sums[0]
    obj = objectives.make(config_lib.objective_config("dpo"))
    ref_def, ref_state = nnx.split(reference)
    pol_def, pol_state = nnx.split(policy)

    @jax.jit
    @functools.partial(jax.grad, argnums=(0, 1))
    def grads(pol_state, ref_state):
        pol, ref = nnx.merge(pol_def, pol_state), nnx.merge(ref_def, ref_state)
        return run(obj, pol, ref, batch)[1].loss_sum

    g_pol, g_ref = grads(pol_state, ref_state)
    assert all(float(jnp.max(jnp.abs(g))) == 0 for g in jax.tree.leaves(g_ref))
    norms = [float(jnp.sum(g**2)) for g in jax.tree.leaves(g_pol)]
    assert np.all(np.isfinite(norms)) and min(norms) > 0


def test_configs_and_setting_errors():
    for name in pw.OBJECTIVES:
        cfg = config_lib.objective_config(name)
        assert cfg.name == name
        obj = objectives.make(cfg, chunk_size=4)
        assert obj.uses_reference == (name in ("dpo", "cdpo", "robust_dpo", "ipo", "slic_norm"))
    assert config_lib.objective_config("slic_hf").to_dict() == dict(
        name="slic_hf", delta=1.0, lam=0.1, target="chosen")
    with pytest.raises(config_lib.ConfigError, match="objective.label_smoothing = 0.5.*< 0.5"):
        objectives.make(config_lib.objective_config("robust_dpo", label_smoothing=0.5))
    with pytest.raises(config_lib.ConfigError, match="objective.beta = -1.*> 0"):
        objectives.make(config_lib.objective_config("dpo", beta=-1.0))
    with pytest.raises(config_lib.ConfigError, match="objective.tau = 0.*> 0"):
        objectives.make(config_lib.objective_config("ipo", tau=0.0))
    with pytest.raises(config_lib.ConfigError, match="normalize"):
        config_lib.objective_config("ipo", normalize="max")


def test_chunked_logprobs_and_bad_batches(models):
    policy, reference = models
    batch = pairs_batch(seed=10)
    plain = run(objectives.make(config_lib.objective_config("dpo")), policy, reference, batch)[1]
    chunked = run(objectives.make(config_lib.objective_config("dpo"), chunk_size=5), policy,
                  reference, batch)[1]
    np.testing.assert_allclose(float(chunked.loss_sum), float(plain.loss_sum), rtol=1e-5)
    obj = objectives.make(config_lib.objective_config("cpo"))
    with pytest.raises(ValueError, match="'cpo' reads a pairs batch, but it lacks "
                                         "\\['rejected_loss_mask'\\]"):
        obj.loss(policy, {k: v for k, v in batch.items() if k != "rejected_loss_mask"}, {},
                 rng=None)
    short = dict(batch, rejected_tokens=batch["rejected_tokens"][:, :-1])
    with pytest.raises(ValueError, match="one shape"):
        obj.loss(policy, short, {}, rng=None)
