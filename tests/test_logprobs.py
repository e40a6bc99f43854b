"""Tests for align.logprobs: fp32 log-probs, chunking (values, grads, memory), shifting, masks.

Dimension letters: B batch, T tokens, D model width, V vocab.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from align import logprobs
from align.models import transformer as tr

B, T, D, V = 2, 10, 16, 40


def inputs(seed=0, t=T):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    hidden_BxTxD = jax.random.normal(k1, (B, t, D))
    unembed_DxV = jax.random.normal(k2, (D, V)) / 2
    targets_BxT = jax.random.randint(k3, (B, t), 0, V)
    return hidden_BxTxD, unembed_DxV, targets_BxT


def oracle_logp(hidden_BxTxD, unembed_DxV, targets_BxT):
    logits = np.asarray(hidden_BxTxD, np.float64) @ np.asarray(unembed_DxV, np.float64)
    m = logits.max(-1, keepdims=True)
    logz = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[..., 0]
    return np.take_along_axis(logits, np.asarray(targets_BxT)[..., None], -1)[..., 0] - logz


def test_token_logprobs_match_float64_oracle():
    hidden, unembed, targets = inputs()
    expected = oracle_logp(hidden, unembed, targets)
    np.testing.assert_allclose(logprobs.token_logprobs(hidden, unembed, targets), expected,
                               rtol=1e-5, atol=1e-5)
    logits = jnp.einsum("btd,dv->btv", hidden, unembed)
    out = logprobs.token_logprobs_from_logits(logits.astype(jnp.bfloat16), targets)
    assert out.dtype == jnp.float32
    bf16 = logprobs.token_logprobs(hidden, unembed, targets, dtype="bfloat16")
    assert bf16.dtype == jnp.float32
    np.testing.assert_allclose(bf16, expected, atol=0.1)


@pytest.mark.parametrize("chunk_size", [4, 5])
def test_chunked_equals_full_values_and_grads(chunk_size):
    hidden, unembed, targets = inputs(1)
    weights_BxT = jax.random.normal(jax.random.key(2), (B, T))

    def loss(hidden, unembed, chunk_size):
        logp_BxT = logprobs.token_logprobs(hidden, unembed, targets, chunk_size=chunk_size)
        return jnp.sum(logp_BxT * weights_BxT), logp_BxT

    grad_fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True), static_argnums=2)
    (ref, ref_logp), ref_grads = grad_fn(hidden, unembed, 0)
    (val, logp), grads = grad_fn(hidden, unembed, chunk_size)
    np.testing.assert_allclose(logp, ref_logp, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(val, ref, rtol=1e-5)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6)
    ent = logprobs.token_entropy(hidden, unembed, chunk_size=chunk_size)
    logits = jnp.einsum("btd,dv->btv", hidden, unembed)
    np.testing.assert_allclose(ent, logprobs.token_entropy_from_logits(logits), rtol=1e-5)
    p = jax.nn.softmax(logits)
    np.testing.assert_allclose(ent, -jnp.sum(p * jnp.log(p), -1), rtol=1e-5)


def _largest_intermediate(jaxpr) -> int:
    biggest = 0
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            biggest = max(biggest, int(np.prod(getattr(var.aval, "shape", ()))))
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else [param]:
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    biggest = max(biggest, _largest_intermediate(sub.jaxpr))
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    biggest = max(biggest, _largest_intermediate(sub))
    return biggest


def test_chunked_forward_and_backward_never_hold_full_logits():
    t, chunk = 40, 4
    hidden, unembed, targets = inputs(t=t)

    def loss(hidden, unembed, chunk_size):
        return jnp.sum(logprobs.token_logprobs(hidden, unembed, targets, chunk_size=chunk_size))

    def largest(chunk_size):
        grad_fn = jax.grad(loss, argnums=(0, 1))
        return _largest_intermediate(jax.make_jaxpr(grad_fn, static_argnums=2)(
            hidden, unembed, chunk_size).jaxpr)

    assert largest(0) >= B * t * V  # the probe sees the full logits when they exist
    # Without the per-chunk checkpoint, the backward would stack all chunks' [B, C, V] residuals.
    assert largest(chunk) <= max(B * chunk * V, D * V, B * t * D) < B * t * V


def test_shifted_logprobs_aligns_with_tokens():
    cfg = tr.TransformerConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                               d_ff=64, max_len=32, init_std=0.2)
    model = tr.Transformer(cfg, rngs=nnx.Rngs(0))
    tokens_BxT = jax.random.randint(jax.random.key(3), (B, T), 0, cfg.vocab_size)
    mask_BxT = jnp.ones((B, T)).at[1, :3].set(0)

    @jax.jit
    def run(model):
        logp_BxT = logprobs.shifted_logprobs(model, tokens_BxT, mask_BxT, chunk_size=3)
        hidden, _ = model(tokens_BxT, input_mask_BxT=mask_BxT)
        return logp_BxT, jax.nn.log_softmax(model.logits(hidden))

    logp_BxT, logsm_BxTxV = run(model)
    assert logp_BxT.shape == (B, T) and bool(jnp.all(logp_BxT[:, 0] == 0))
    for t in (1, 5, T - 1):
        expected_B = logsm_BxTxV[jnp.arange(B), t - 1, tokens_BxT[:, t]]
        np.testing.assert_allclose(logp_BxT[:, t], expected_B, rtol=1e-5)


def test_sequence_logprobs_reductions_and_masks():
    logp_BxT = jnp.array([[-1.0, -2.0, -jnp.inf, jnp.nan], [-0.5, -0.5, -0.5, -0.5],
                          [-jnp.inf, -3.0, -3.0, -3.0]])
    mask_BxT = jnp.array([[1, 1, 0, 0], [0, 0, 0, 0], [0, 1, 1, 0]], jnp.float32)
    np.testing.assert_allclose(logprobs.sequence_logprobs(logp_BxT, mask_BxT), [-3.0, 0.0, -6.0])
    np.testing.assert_allclose(logprobs.sequence_logprobs(logp_BxT, mask_BxT > 0, reduction="mean"),
                               [-1.5, 0.0, -3.0])
    grad_BxT = jax.grad(lambda l: jnp.sum(logprobs.sequence_logprobs(l, mask_BxT)))(logp_BxT)
    np.testing.assert_array_equal(grad_BxT, mask_BxT)  # finite: padding never leaks NaN
    with pytest.raises(ValueError, match="reduction must be one of"):
        logprobs.sequence_logprobs(logp_BxT, mask_BxT, reduction="max")
    with pytest.raises(ValueError, match="logp shape"):
        logprobs.sequence_logprobs(logp_BxT, mask_BxT[:, :2])
    with pytest.raises(ValueError, match="chunk_size"):
        logprobs.token_logprobs(*inputs(), chunk_size=-1)
