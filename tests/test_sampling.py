"""Tests for align.sampling: greedy == full forward argmax, per-example keys, eos masks, stops.

Dimension letters: B batch, P prompt tokens, N new tokens, T = P + N, V vocab.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from align import config as config_lib
from align import logprobs, sampling
from align import mesh as mesh_lib
from align.models import transformer as tr
from align.train import state as state_lib

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
    again = sampling.generate(model, tokens_BxP, mask_BxP, example_ids_B=jnp.arange(3, 6),
                              rng=jax.random.key(1), max_new_tokens=N, eos_id=-1, greedy=True)
    for key in out:
        np.testing.assert_array_equal(again[key], out[key])  # greedy ignores keys


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
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
        sampling.generate(model, tokens_BxP, mask_BxP, max_new_tokens=4, top_p=0.0, **kwargs)
    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\]"):
        sampling.generate(model, tokens_BxP, mask_BxP, max_new_tokens=4, beta=1.5,
                          reference_model=model, **kwargs)
    with pytest.raises(ValueError, match="must have a 'sample' entry"):
        sampling.named_logprobs({"policy": jnp.zeros((1, 4))})


# ---------------------------------------------------------------------------------------------
# Top-p, the geometric mixture, reported log-probs, eos flags, recompilation and sharding.

@pytest.fixture(scope="module")
def ref_model():
    return tr.Transformer(CFG, rngs=nnx.Rngs(1))


def _oracle_sampling_probs(logp_BxV, temperature, top_k, top_p):
    """float64 NumPy: temperature, then top-k, then the smallest nucleus with mass >= top_p."""
    x = np.asarray(logp_BxV, np.float64) / temperature
    out = np.zeros_like(x)
    for b, row in enumerate(x):
        order = np.argsort(-row, kind="stable")
        if top_k:
            row = np.where(row >= row[order[top_k - 1]], row, -np.inf)
        probs = np.exp(row - row.max())
        probs /= probs.sum()
        cum = np.cumsum(probs[order])
        n_keep = int(np.searchsorted(cum, top_p - 1e-12) + 1)  # first index with cum >= p
        keep = np.zeros(row.shape, bool)
        keep[order[:n_keep]] = True
        kept = np.where(keep, probs, 0.0)
        out[b] = kept / kept.sum()
    return out


def test_top_p_keeps_smallest_set_with_enough_mass():
    logp_BxV = jax.nn.log_softmax(2.0 * jax.random.normal(jax.random.key(3), (6, 12)))
    traced = jax.jit(sampling.sampling_logprobs, static_argnames=("top_k",))
    for temperature, top_k, top_p in ((1.0, 0, 0.3), (0.8, 0, 0.6), (1.3, 5, 0.9),
                                      (1.0, 3, 0.5), (0.7, 0, 1.0)):
        want_BxV = _oracle_sampling_probs(logp_BxV, temperature, top_k, top_p)
        for fn in (sampling.sampling_logprobs, traced):
            got_BxV = fn(logp_BxV, temperature=temperature, top_k=top_k, top_p=top_p)
            np.testing.assert_allclose(np.exp(got_BxV), want_BxV, atol=1e-6)
            np.testing.assert_array_equal(np.isfinite(got_BxV), want_BxV > 0)
    # Hand example: {0.4} has mass 0.4 < 0.6, {0.4, 0.3} reaches 0.7.
    got_V = sampling.sampling_logprobs(jnp.log(jnp.array([[0.1, 0.2, 0.3, 0.4]])),
                                       temperature=1.0, top_p=0.6)[0]
    np.testing.assert_allclose(np.exp(got_V), [0, 0, 3 / 7, 4 / 7], atol=1e-6)
    # A traced p of 1 keeps tokens whose running mass rounds to 1 in fp32.
    tiny_V = jax.nn.log_softmax(jnp.array([[10.0, 0.0, -30.0, -60.0]]))
    assert bool(jnp.all(jnp.isfinite(traced(tiny_V, temperature=1.0, top_p=jnp.float32(1.0)))))


def test_top_p_sampling_frequencies():
    probs_V = jnp.array([0.1, 0.2, 0.3, 0.4])
    policy = table_policy(probs_V, eos_id=0, eos_from_step=1_000, calls=[])
    b = 4000
    out = jax.jit(lambda p: sampling.sample(
        policy, jnp.zeros((b, 2), jnp.int32), jnp.ones((b, 2)), example_ids_B=jnp.arange(b),
        rng=jax.random.key(4), max_new_tokens=1, eos_id=-1, temperature=0.9, top_k=3,
        top_p=p))(jnp.float32(0.75))
    want_V = _oracle_sampling_probs(np.log(np.asarray(probs_V))[None], 0.9, 3, 0.75)[0]
    assert want_V[0] == 0 and want_V[1] == 0  # top-k drops 0.1, then the nucleus drops 0.2
    freq_V = np.bincount(np.asarray(out["tokens_BxN"][:, 0]), minlength=4) / b
    np.testing.assert_allclose(freq_V, want_V, atol=0.03)
    with np.errstate(divide="ignore"):
        want_logp_V = np.log(want_V)
    np.testing.assert_allclose(out["logp_BxN"][:, 0], want_logp_V[out["tokens_BxN"][:, 0]],
                               rtol=1e-5)
    # The policy log-prob is the untempered, uncut one.
    np.testing.assert_allclose(out["policy_logp_BxN"][:, 0],
                               np.log(np.asarray(probs_V))[out["tokens_BxN"][:, 0]], rtol=1e-6)


@jax.jit
def teacher_force(model, ref_model, beta, tokens_BxP, mask_BxP, tokens_BxN):
    """The mixture policy's named log-prob vectors [B, N, V] at every step of a fixed path."""
    policy = sampling.mixture_policy(model, ref_model, beta)
    logps, state = policy.prefill_fn(tokens_BxP, mask_BxP, tokens_BxP.shape[1] + N)

    def step(state, token_B):
        logps, state = policy.step_fn(token_B, jnp.ones_like(token_B, jnp.bool_), state)
        return state, sampling.named_logprobs(logps)

    _, rest = jax.lax.scan(step, state, tokens_BxN.T[:-1])
    first = sampling.named_logprobs(logps)
    return jax.tree.map(lambda a, r: jnp.moveaxis(jnp.concatenate([a[None], r]), 0, 1),
                        first, rest)


def full_forward_path(m, tokens_BxP, mask_BxP, path_BxN):
    """float64 next-token log-probs [B, N, V] for every completion position, by full forward."""
    tokens_BxT = jnp.concatenate([tokens_BxP, path_BxN], axis=1)
    mask_BxT = jnp.concatenate([mask_BxP, jnp.ones(path_BxN.shape)], axis=1)
    return np.asarray(full_logprobs(m, tokens_BxT, mask_BxT)[:, P - 1:-1], np.float64)


def test_cached_decoding_equals_full_forward_at_every_position(model, ref_model):
    tokens_BxP, mask_BxP = prompts()
    path_BxN = jax.random.randint(jax.random.key(5), (3, N), 0, CFG.vocab_size)
    got = teacher_force(model, ref_model, jnp.float32(0.3), tokens_BxP, mask_BxP, path_BxN)
    for name, m in (("policy", model), ("reference", ref_model)):
        np.testing.assert_allclose(got[name], full_forward_path(m, tokens_BxP, mask_BxP, path_BxN),
                                   atol=2e-5)


# One static sampler configuration (top_k, top_p < 1, N) shared by the tests below: one compile.
SAMPLER = dict(max_new_tokens=N, top_k=20, top_p=0.9)


def test_mixture_sampler_is_geometric_mixture_and_reports_teacher_forced_logprobs(model,
                                                                                  ref_model):
    tokens_BxP, mask_BxP = prompts()
    beta = 0.3
    out = sampling.generate(model, tokens_BxP, mask_BxP, example_ids_B=jnp.arange(3),
                            rng=jax.random.key(11), eos_id=7, temperature=0.7,
                            reference_model=ref_model, beta=beta, **SAMPLER)
    path_BxN = out["tokens_BxN"]
    got = teacher_force(model, ref_model, jnp.float32(beta), tokens_BxP, mask_BxP, path_BxN)
    logp_BxNxV = full_forward_path(model, tokens_BxP, mask_BxP, path_BxN)
    ref_BxNxV = full_forward_path(ref_model, tokens_BxP, mask_BxP, path_BxN)
    mixed_BxNxV = (1 - beta) * logp_BxNxV + beta * ref_BxNxV
    mixed_BxNxV -= np.log(np.exp(mixed_BxNxV).sum(-1, keepdims=True))
    np.testing.assert_allclose(got["sample"], mixed_BxNxV, atol=2e-5)
    # The mixture differs from both components, so the check above could fail.
    for component_BxNxV in (logp_BxNxV, ref_BxNxV):
        assert np.abs(mixed_BxNxV - component_BxNxV).max() > 0.1
    # Temperature, top-k and top-p act on the mixture: the sampled log-probs say so.
    mask_BxN = np.asarray(out["mask_BxN"])
    want_BxN = np.zeros((3, N))
    for i in range(N):
        probs_BxV = _oracle_sampling_probs(mixed_BxNxV[:, i], 0.7, 20, 0.9)
        with np.errstate(divide="ignore"):
            want_BxN[:, i] = np.log(probs_BxV[np.arange(3), np.asarray(path_BxN[:, i])])
    np.testing.assert_allclose(out["logp_BxN"], want_BxN * mask_BxN, atol=2e-5)
    # policy / reference log-probs of the chosen tokens are the teacher-forced ones.
    tokens_BxT = jnp.concatenate([tokens_BxP, path_BxN], axis=1)
    mask_BxT = jnp.concatenate([mask_BxP, out["mask_BxN"]], axis=1)
    for name, m in (("policy_logp_BxN", model), ("ref_logp_BxN", ref_model)):
        want_BxN = logprobs.shifted_logprobs(m, tokens_BxT, mask_BxT)[:, P:] * mask_BxN
        np.testing.assert_allclose(out[name], want_BxN, atol=2e-5)
    assert not np.allclose(out["logp_BxN"], out["policy_logp_BxN"], atol=1e-3)
    # Entropy of π_θ's own next-token distribution (not the mixture's) at each emitted token.
    want_BxN = -(np.exp(logp_BxNxV) * logp_BxNxV).sum(-1) * mask_BxN
    np.testing.assert_allclose(out["entropy_BxN"], want_BxN, rtol=1e-4, atol=1e-5)
    mixed_entropy_BxN = -(np.exp(mixed_BxNxV) * mixed_BxNxV).sum(-1) * mask_BxN
    assert np.abs(mixed_entropy_BxN - want_BxN).max() > 1e-2
    ended_B = np.any((np.asarray(path_BxN) == 7) & (mask_BxN > 0), axis=1)
    np.testing.assert_array_equal(out["finished_B"], ended_B)


def test_beta_zero_mixture_samples_exactly_the_policy(model, ref_model):
    tokens_BxP, mask_BxP = prompts()
    kwargs = dict(example_ids_B=jnp.arange(3), rng=jax.random.key(9), eos_id=5,
                  temperature=1.3, **SAMPLER)
    alone = sampling.generate(model, tokens_BxP, mask_BxP, **kwargs)
    mixed = sampling.generate(model, tokens_BxP, mask_BxP, reference_model=ref_model, beta=0.0,
                              **kwargs)
    for key in alone:
        np.testing.assert_array_equal(mixed[key], alone[key])
    assert "ref_logp_BxN" in mixed and "ref_logp_BxN" not in alone
    other = sampling.generate(model, tokens_BxP, mask_BxP, reference_model=ref_model, beta=0.5,
                              **kwargs)
    assert not np.array_equal(other["tokens_BxN"], alone["tokens_BxN"])


def scripted_policy(script_BxN, vocab):
    """A stand-in policy that emits script_BxN[b, step] with certainty."""
    script_BxN = jnp.asarray(script_BxN, jnp.int32)

    def logp(step):
        onehot_BxV = jax.nn.one_hot(script_BxN[:, jnp.minimum(step, script_BxN.shape[1] - 1)],
                                    vocab)
        return jnp.where(onehot_BxV > 0, 0.0, -jnp.inf)

    return sampling.Policy(lambda t, m, n: (logp(0), jnp.ones((), jnp.int32)),
                           lambda tok, m, step: (logp(step), step + 1))


def test_eos_masks_come_from_the_sampler_even_when_pad_equals_eos(model):
    eos = 0
    policy = scripted_policy([[5, 6, eos, 7, 8], [5, 6, 7, 8, 9], [eos, 1, 2, 3, 4]], vocab=10)
    run = jax.jit(lambda pad_id: sampling.sample(
        policy, jnp.full((3, 2), eos), jnp.array([[0, 1]] * 3), example_ids_B=jnp.arange(3),
        rng=jax.random.key(0), max_new_tokens=5, eos_id=eos, pad_id=pad_id))
    for pad_id in (eos, 9):
        out = run(pad_id)
        np.testing.assert_array_equal(out["mask_BxN"], [[1, 1, 1, 0, 0], [1] * 5, [1, 0, 0, 0, 0]])
        np.testing.assert_array_equal(
            out["tokens_BxN"], [[5, 6, eos, pad_id, pad_id], [5, 6, 7, 8, 9],
                                [eos] + [pad_id] * 4])
        np.testing.assert_array_equal(out["finished_B"], [True, False, True])
        np.testing.assert_array_equal(out["logp_BxN"], 0.0)
    # A model prompt left-padded with the eos id samples as one padded with any other id.
    tokens_BxP, mask_BxP = prompts()
    kwargs = dict(example_ids_B=jnp.arange(3), rng=jax.random.key(3), eos_id=2, pad_id=2,
                  temperature=1.5, **SAMPLER)
    outs = [sampling.generate(model, jnp.where(mask_BxP > 0, tokens_BxP, pad), mask_BxP, **kwargs)
            for pad in (2, 17)]
    for key in outs[0]:
        np.testing.assert_allclose(outs[0][key], outs[1][key], atol=1e-6)


def test_sharded_sampling_equals_single_device_and_never_recompiles(model, ref_model):
    mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 4, "tensor": 1})
    rules = mesh_lib.logical_rules(config_lib.default_config().mesh.rules)
    model_def = state_lib.describe(lambda rngs: tr.Transformer(CFG, rngs=rngs))
    param_sh = mesh_lib.tree_shardings(model_def.abstract_params, model_def.names, rules, mesh)
    params = [nnx.to_pure_dict(nnx.state(m, nnx.Param)) for m in (model, ref_model)]
    b = 8

    def batch(seed):
        tokens_BxP, mask_BxP = prompts(b=b, seed=seed)
        return {"tokens": np.asarray(tokens_BxP), "mask": np.asarray(mask_BxP),
                "ids": np.arange(100, 100 + b)}

    traces = []

    def fn(params, ref_params, batch, rng, beta):
        traces.append(1)  # runs only while tracing
        policy = sampling.mixture_policy(state_lib.bind(model_def, params),
                                         state_lib.bind(model_def, ref_params), beta)
        return sampling.sample(policy, batch["tokens"], batch["mask"], example_ids_B=batch["ids"],
                               rng=rng, max_new_tokens=N, eos_id=3, temperature=1.2, top_k=40,
                               top_p=0.95)

    args = (jax.random.key(5), jnp.float32(0.25))
    single = jax.jit(fn)(*params, batch(4), *args)
    sharded_params = [jax.device_put(p, param_sh) for p in params]
    assert not sharded_params[0]["embed"].sharding.is_fully_replicated
    sharded_fn = jax.jit(mesh_lib.traced_under(fn, mesh, rules))
    sharded = sharded_fn(*sharded_params, mesh_lib.to_global(batch(4), mesh, rules), *args)
    assert len(sharded["tokens_BxN"].sharding.device_set) == 8
    for key in single:
        np.testing.assert_allclose(np.asarray(sharded[key]), np.asarray(single[key]), atol=1e-5)
    assert len(set(np.asarray(single["tokens_BxN"]).ravel().tolist())) > 3
    # New parameters, prompts, key and beta of the same shapes reuse the compiled sampler.
    assert len(traces) == 2
    other = sharded_fn(*sharded_params[::-1], mesh_lib.to_global(batch(6), mesh, rules),
                       jax.random.key(6), jnp.float32(0.8))
    assert len(traces) == 2
    assert not np.array_equal(other["tokens_BxN"], single["tokens_BxN"])


def test_population_sampling_equals_each_member_sampled_alone(model, ref_model):
    """Two models decoded in one loop over 2·B rows (`samples.population_sample_fn`) give each
    member the tokens and masks of sampling it alone with its own key; the loop stops when
    every row of every member has emitted eos."""
    from align import samples as samples_lib
    tokens_BxP, mask_BxP = prompts()
    batch = {"prompt_tokens": tokens_BxP, "prompt_mask": mask_BxP,
             "example_id": jnp.array([4, 5, 6])}
    graph, p0 = nnx.split(model)
    _, p1 = nnx.split(ref_model)
    params_M = jax.tree.map(lambda a, b: jnp.stack([a, b]), p0, p1)
    keys_M = jax.random.split(jax.random.key(3), 2)
    settings = dict(max_new_tokens=N, temperature=1.3, top_k=0, eos_id=3)
    out = jax.jit(lambda p, b, k: samples_lib.population_sample_fn(
        lambda q: nnx.merge(graph, q), p, b, k, **settings))(params_M, batch, keys_M)
    assert out["tokens"].shape == (2, 3, N)
    for m, member in enumerate((model, ref_model)):
        alone = samples_lib.sample_fn(member, batch, keys_M[m], **settings)
        np.testing.assert_array_equal(out["tokens"][m], alone["tokens"])
        np.testing.assert_array_equal(out["mask"][m], alone["mask"])
    assert not np.array_equal(out["tokens"][0], out["tokens"][1])
