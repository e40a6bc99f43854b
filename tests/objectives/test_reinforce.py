"""RLOO and GRPO bindings: group-baseline advantages and loss gradients against float64 oracles."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from align import config as config_lib
from align.objectives import reinforce

G, S, L, V = 2, 3, 6, 5  # prompts, samples per prompt, tokens, vocabulary
M = G * S


class FreeLogits:
    """A 'model' whose hidden states are its logits (the unembedding is the identity)."""

    config = types.SimpleNamespace(dtype="float32")

    def __init__(self, logits_MxLxV):
        self.logits_MxLxV = logits_MxLxV

    def __call__(self, tokens_MxL, **_):
        return self.logits_MxLxV, None

    def unembed_matrix(self):
        return jnp.eye(V, dtype=jnp.float32)


def _np_logp(logits, tokens):
    """Shifted token log-probs in float64: column t is log p(token t | < t), column 0 is 0."""
    logits = np.asarray(logits, np.float64)
    z = logits - logits.max(-1, keepdims=True)
    logsm = z - np.log(np.exp(z).sum(-1, keepdims=True))
    out = np.zeros(tokens.shape)
    for b in range(tokens.shape[0]):
        for t in range(1, tokens.shape[1]):
            out[b, t] = logsm[b, t - 1, tokens[b, t]]
    return out, logsm


def _rollout(rng):
    lengths = rng.integers(1, 4, M)
    loss_mask = np.zeros((M, L), np.int32)
    for b, n in enumerate(lengths):
        loss_mask[b, 2:2 + n] = 1
    input_mask = loss_mask.copy()
    input_mask[:, :2] = 1
    return {"tokens": rng.integers(0, V, (M, L)).astype(np.int32), "input_mask": input_mask,
            "loss_mask": loss_mask, "score": rng.normal(0, 1, M).astype(np.float32),
            "finished": np.ones(M, np.float32)}


def _objective(name, **settings):
    return reinforce.OBJECTIVES[name](config_lib.objective_config(name, samples=S, **settings))


def _setup(seed):
    rng = np.random.default_rng(seed)
    batch = _rollout(rng)
    logits = rng.normal(0, 1, (M, L, V)).astype(np.float32)
    ref_logits = rng.normal(0, 1, (M, L, V)).astype(np.float32)
    return batch, logits, ref_logits


def _prepare(obj, logits, ref_logits, batch):
    """The train step's order: the reference's fields, then prepare with the policy."""
    batch = {**batch, **obj.reference_fields(FreeLogits(jnp.asarray(ref_logits)), batch)}
    return obj.prepare(FreeLogits(jnp.asarray(logits)), batch, obj.init(),
                       rng=jax.random.key(0))


@pytest.mark.parametrize("name", ["rloo", "grpo"])
def test_advantages_match_the_float64_oracle(name):
    batch, logits, ref_logits = _setup(0)
    obj = _objective(name, kl_coef=0.1)
    out, stats = _prepare(obj, logits, ref_logits, batch)
    logp, _ = _np_logp(logits, batch["tokens"])
    ref, _ = _np_logp(ref_logits, batch["tokens"])
    mask = batch["loss_mask"]
    kl = ((logp - ref) * mask).sum(-1)
    score = batch["score"].astype(np.float64)
    if name == "rloo":
        r = (score - 0.1 * kl).reshape(G, S)
        # Leave-one-out baseline: the mean of the other S − 1 rewards of the same prompt.
        expected = np.array([[r[g, i] - (r[g].sum() - r[g, i]) / (S - 1) for i in range(S)]
                             for g in range(G)]).reshape(-1)
    else:
        r = score.reshape(G, S)
        expected = ((r - r.mean(1, keepdims=True)) / (r.std(1, keepdims=True) + 1e-4)).reshape(-1)
    np.testing.assert_allclose(out["advantages"], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats["kl"], kl.mean(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["old_logp"] * mask, logp * mask, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["rloo", "grpo"])
def test_loss_gradient_matches_the_oracle(name):
    # At the sampling policy (ρ = 1): RLOO's ∂/∂ℓ_t = −A/M (a sequence's summed log-prob);
    # GRPO's = (−A + kl_coef·∂k3/∂ℓ_t)/(|y|·M), ∂k3/∂ℓ = 1 − e^{ref − ℓ}. Then through the
    # log-softmax: ∂ℓ_t/∂logits[t−1] = onehot(token_t) − softmax(logits[t−1]).
    batch, logits, ref_logits = _setup(1)
    kl_coef = 0.3
    obj = _objective(name, kl_coef=kl_coef)
    prepared, _ = _prepare(obj, logits, ref_logits, batch)

    def loss(lg):
        out = obj.loss(FreeLogits(lg), prepared, obj.init(), rng=jax.random.key(0))
        return out.loss_sum / out.weight

    grad = np.asarray(jax.grad(loss)(jnp.asarray(logits)), np.float64)
    logp, logsm = _np_logp(logits, batch["tokens"])
    ref, _ = _np_logp(ref_logits, batch["tokens"])
    mask = batch["loss_mask"].astype(np.float64)
    adv = np.asarray(prepared["advantages"], np.float64)
    if name == "rloo":
        g_logp = -adv[:, None] * mask / M
    else:
        length = mask.sum(-1, keepdims=True)
        g_logp = (-adv[:, None] + kl_coef * (1 - np.exp(ref - logp))) * mask / (length * M)
    expected = np.zeros_like(grad)
    for b in range(M):
        for t in range(1, L):
            onehot = np.eye(V)[batch["tokens"][b, t]]
            expected[b, t - 1] += g_logp[b, t] * (onehot - np.exp(logsm[b, t - 1]))
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6)


def test_group_size_and_settings_are_checked():
    with pytest.raises(ValueError, match="samples must be >= 2"):
        reinforce.OBJECTIVES["rloo"](config_lib.objective_config("rloo", samples=1))
    obj = _objective("grpo")
    assert obj.online.samples == S and obj.online.betas() == (0.0,) * S
    assert obj.online.score == "reward"
    batch, logits, ref_logits = _setup(2)
    bad = {k: v[:M - 1] for k, v in batch.items()}
    with pytest.raises(ValueError, match="not groups of 3"):
        _prepare(obj, logits[:M - 1], ref_logits[:M - 1], bad)
