"""Tests for align.sampling: greedy == full forward argmax, per-example keys, eos masks, stops.

Dimension letters: B batch, P prompt tokens, N new tokens, T = P + N, V vocab.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from align import sampling
from align.models import transformer as tr

CFG = tr.TransformerConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                           d_ff=64, max_len=32, init_std=0.3)
P, N = 5, 8


@pytest.fixture(scope="module")
def model():
    return tr.Transformer(CFG, rngs=nnx.Rngs(0))


def prompts(b=3, seed=0):
    tokens_BxP = jax.random.randint(jax.random.key(seed), (b, P), 1, CFG.vocab_size)
    mask_BxP = jnp.ones((b, P)).at[0, :2].set(0).at[1, :1].set(0)  # left padding
    return tokens_BxP, mask_BxP


@jax.jit
def full_logprobs(model, tokens_BxT, mask_BxT):
    hidden_BxTxD, _ = model(tokens_BxT, input_mask_BxT=mask_BxT)
    return jax.nn.log_softmax(model.logits(hidden_BxTxD))


def test_greedy_equals_full_forward_argmax(model):
    tokens_BxP, mask_BxP = prompts()
    out = sampling.generate(model, tokens_BxP, mask_BxP, example_ids_B=jnp.arange(3),
                            rng=jax.random.key(0), max_new_tokens=N, eos_id=-1, greedy=True)
    assert out["tokens_BxN"].shape == (3, N) and out["logp_BxN"].dtype == jnp.float32
    np.testing.assert_array_equal(out["mask_BxN"], 1.0)  # eos_id -1 never comes
    tokens_BxT = jnp.concatenate([tokens_BxP, out["tokens_BxN"]], axis=1)
    mask_BxT = jnp.concatenate([mask_BxP, out["mask_BxN"]], axis=1)
    logp_BxNxV = full_logprobs(model, tokens_BxT, mask_BxT)[:, P - 1:-1]
    np.testing.assert_array_equal(jnp.argmax(logp_BxNxV, -1), out["tokens_BxN"])
    chosen_BxN = jnp.take_along_axis(logp_BxNxV, out["tokens_BxN"][..., None], -1)[..., 0]
    np.testing.assert_allclose(out["logp_BxN"], chosen_BxN, atol=1e-5)
    assert len(set(np.asarray(out["tokens_BxN"]).ravel().tolist())) > 1


def test_mask_ends_at_eos(model):
    tokens_BxP, mask_BxP = prompts()
    kwargs = dict(example_ids_B=jnp.arange(3), rng=jax.random.key(0), max_new_tokens=N,
                  greedy=True)
    first = sampling.generate(model, tokens_BxP, mask_BxP, eos_id=-1, **kwargs)
    eos = int(first["tokens_BxN"][0, 2])
    out = sampling.generate(model, tokens_BxP, mask_BxP, eos_id=eos, **kwargs)
    for row in range(3):
        toks = np.asarray(first["tokens_BxN"][row]).tolist()
        n = toks.index(eos) + 1 if eos in toks else N
        np.testing.assert_array_equal(out["tokens_BxN"][row, :n], first["tokens_BxN"][row, :n])
        np.testing.assert_array_equal(out["mask_BxN"][row], [1.0] * n + [0.0] * (N - n))
        np.testing.assert_array_equal(out["tokens_BxN"][row, n:], 0)
        np.testing.assert_array_equal(out["logp_BxN"][row, n:], 0.0)
    assert out["mask_BxN"][0].sum() <= 3


def test_per_example_keys_do_not_depend_on_batch_position(model):
    tokens_BxP, mask_BxP = prompts()
    run = functools.partial(sampling.generate, model, rng=jax.random.key(7), max_new_tokens=N,
                            eos_id=3, temperature=1.5, top_k=20)
    out = run(tokens_BxP, mask_BxP, example_ids_B=jnp.array([10, 11, 12]))
    perm = jnp.array([2, 0, 1])
    permuted = run(tokens_BxP[perm], mask_BxP[perm], example_ids_B=jnp.array([12, 10, 11]))
    for key in out:
        np.testing.assert_allclose(permuted[key], out[key][perm], atol=1e-6)
    renamed = run(tokens_BxP, mask_BxP, example_ids_B=jnp.array([20, 21, 22]))
    assert not np.array_equal(renamed["tokens_BxN"], out["tokens_BxN"])
    # The reported log-probs are those of the tempered, top-k distribution that was sampled.
    tokens_BxT = jnp.concatenate([tokens_BxP, out["tokens_BxN"]], axis=1)
    mask_BxT = jnp.concatenate([mask_BxP, out["mask_BxN"]], axis=1)
    logp_BxNxV = full_logprobs(model, tokens_BxT, mask_BxT)[:, P - 1:-1]
    tempered_BxNxV = jax.vmap(functools.partial(sampling.sampling_logprobs, temperature=1.5,
                                                top_k=20), in_axes=1, out_axes=1)(logp_BxNxV)
    chosen_BxN = jnp.take_along_axis(tempered_BxNxV, out["tokens_BxN"][..., None], -1)[..., 0]
    np.testing.assert_allclose(out["logp_BxN"], chosen_BxN * out["mask_BxN"], atol=1e-5)


def table_policy(probs_V, eos_id, eos_from_step, calls):
    """A stand-in policy: fixed next-token probabilities, certain eos from a given step on."""
    logp_V = jnp.log(jnp.asarray(probs_V, jnp.float32))
    eos_V = jnp.full_like(logp_V, -jnp.inf).at[eos_id].set(0.0)

    def logp(step, b):
        logp_V_now = jnp.where(step >= eos_from_step, eos_V, logp_V)
        return jnp.broadcast_to(logp_V_now, (b,) + logp_V.shape)

    def prefill_fn(tokens_BxP, mask_BxP, cache_len):
        return logp(0, tokens_BxP.shape[0]), jnp.ones((), jnp.int32)

    def step_fn(token_B, mask_B, step):
        jax.debug.callback(lambda: calls.append(1))
        return logp(step, token_B.shape[0]), step + 1

    return sampling.Policy(prefill_fn, step_fn)


def test_sampling_distribution_top_k_and_early_stop():
    probs_V = jnp.array([0.1, 0.2, 0.3, 0.4])
    calls = []
    policy = table_policy(probs_V, eos_id=0, eos_from_step=1_000, calls=calls)
    b = 4000

    @functools.partial(jax.jit, static_argnames=("top_k",))
    def draw(temperature, top_k):
        return sampling.sample(policy, jnp.zeros((b, 2), jnp.int32), jnp.ones((b, 2)),
                               example_ids_B=jnp.arange(b), rng=jax.random.key(1),
                               max_new_tokens=1, eos_id=0, temperature=temperature, top_k=top_k)

    for temperature, top_k in ((1.0, 0), (0.5, 0), (1.0, 2)):
        out = draw(temperature, top_k)
        freq_V = np.bincount(np.asarray(out["tokens_BxN"][:, 0]), minlength=4) / b
        want_V = np.asarray(probs_V) ** (1 / temperature)
        want_V[:4 - top_k if top_k else 0] = 0
        want_V /= want_V.sum()
        np.testing.assert_allclose(freq_V, want_V, atol=0.03)
        with np.errstate(divide="ignore"):
            want_logp_V = np.log(want_V)
        np.testing.assert_allclose(out["logp_BxN"][:, 0], want_logp_V[out["tokens_BxN"][:, 0]],
                                   rtol=1e-5)

    calls.clear()
    stop_policy = table_policy(probs_V, eos_id=0, eos_from_step=3, calls=calls)
    out = jax.jit(lambda: sampling.sample(
        stop_policy, jnp.zeros((2, 2), jnp.int32), jnp.ones((2, 2)), example_ids_B=jnp.arange(2),
        rng=jax.random.key(2), max_new_tokens=50, eos_id=0))()
    jax.effects_barrier()
    lengths_B = np.asarray(out["mask_BxN"].sum(1))
    assert lengths_B.max() <= 4 and bool(jnp.all(out["tokens_BxN"][:, 4:] == 0))
    assert len(calls) == lengths_B.max()  # the loop stopped once every row had ended


def test_bad_arguments_raise(model):
    tokens_BxP, mask_BxP = prompts()
    kwargs = dict(example_ids_B=jnp.arange(3), rng=jax.random.key(0), eos_id=1)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        sampling.generate(model, tokens_BxP, mask_BxP, max_new_tokens=4, temperature=0.0, **kwargs)
    with pytest.raises(ValueError, match="prompt_mask shape"):
        sampling.generate(model, tokens_BxP, mask_BxP[:, 1:], max_new_tokens=4, **kwargs)
    with pytest.raises(ValueError, match="max_new_tokens"):
        sampling.generate(model, tokens_BxP, mask_BxP, max_new_tokens=0, **kwargs)
    with pytest.raises(ValueError, match="max_len"):
        sampling.generate(model, tokens_BxP, mask_BxP, max_new_tokens=40, **kwargs)
