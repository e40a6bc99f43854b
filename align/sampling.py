"""Jit-compiled KV-cache sampling from any next-token log-prob policy (a model, or a mixture).

Dimension letters: B batch, P prompt tokens, N new tokens, V vocab.
"""
from __future__ import annotations

import functools
import numbers
from collections.abc import Mapping
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from align.models.transformer import init_cache

# Names of the per-step log-prob vectors a Policy may return (see `Policy`).
SAMPLE, POLICY, REFERENCE = "sample", "policy", "reference"


class Policy(NamedTuple):
    """Next-token log-probs for decoding: prefill a prompt once, then advance one token a step.

    prefill_fn(prompt_tokens_BxP, prompt_mask_BxP, cache_len) -> (logps, state)
    step_fn(token_B, token_mask_B, state) -> (logps, state)
    logps is a dict of normalised fp32 next-token log-probs [B, V]: "sample" (required: the
    distribution that temperature / top-k / top-p are applied to), and optionally "policy"
    (log pi_theta; defaults to "sample") and "reference" (log pi_ref). A bare array stands for
    {"sample": array}. state is any pytree (e.g. KV caches).
    """

    prefill_fn: Callable[..., tuple[Any, Any]]
    step_fn: Callable[..., tuple[Any, Any]]


def named_logprobs(logps) -> dict[str, jax.Array]:
    """A Policy's per-step output as a dict with at least "sample"."""
    if isinstance(logps, Mapping):
        if SAMPLE not in logps:
            raise ValueError(f"Policy log-probs must have a {SAMPLE!r} entry, got keys "
                             f"{sorted(logps)}")
        unknown = sorted(set(logps) - {SAMPLE, POLICY, REFERENCE})
        if unknown:
            raise ValueError(f"Policy log-probs: unknown key(s) {unknown}; valid: "
                             f"{[SAMPLE, POLICY, REFERENCE]}")
        return dict(logps)
    return {SAMPLE: logps}


def model_policy(model) -> Policy:
    """The Policy of a Transformer, decoding with its KV cache."""

    def next_logp(hidden_BxTxD):
        logits_BxV = model.logits(hidden_BxTxD[:, -1:])[:, 0]
        return {SAMPLE: jax.nn.log_softmax(logits_BxV.astype(jnp.float32), axis=-1)}

    def prefill_fn(prompt_tokens_BxP, prompt_mask_BxP, cache_len):
        cache = init_cache(model.config, prompt_tokens_BxP.shape[0], cache_len)
        hidden_BxPxD, cache = model(prompt_tokens_BxP, input_mask_BxT=prompt_mask_BxP, cache=cache)
        # Prompts are left-padded, so the last column is every row's last real prompt token.
        return next_logp(hidden_BxPxD), cache

    def step_fn(token_B, token_mask_B, cache):
        hidden_Bx1xD, cache = model(token_B[:, None], input_mask_BxT=token_mask_B[:, None],
                                    cache=cache)
        return next_logp(hidden_Bx1xD), cache

    return Policy(prefill_fn, step_fn)


def stacked_policy(policy_of, member_params, size: int, *, vmap=jax.vmap) -> Policy:
    """One Policy over M·B rows for M = `size` members, member-major: rows m·B … m·B + B − 1
    decode with `policy_of(member_params[m])`, all members in lockstep.

    For a population of models, this keeps the decoding loop itself unbatched: its counter and
    stop test are shared by every row, and each member's model runs under `vmap` with the cache
    write index (the same for every member) held once, so cache writes stay slices instead of
    becoming scatters. The state is member-stacked ([M, ...] leaves, `index` []).
    `policy_of` returns a Policy whose state is KV caches (`model_policy`, `mixture_policy`):
    leaves named `index` are the write positions.
    """
    def split(x):
        return x.reshape(size, x.shape[0] // size, *x.shape[1:])

    def merge(x):
        return x.reshape(size * x.shape[1], *x.shape[2:])

    def axes(state):  # every leaf member-stacked but the caches' shared write index
        return jax.tree_util.tree_map_with_path(
            lambda path, _: None if getattr(path[-1], "key", None) == "index" else 0, state)

    def prefill_fn(prompt_tokens_BxP, prompt_mask_BxP, cache_len):
        def one(params, tokens, mask):
            logps, state = policy_of(params).prefill_fn(tokens, mask, cache_len)
            return named_logprobs(logps), state

        shapes = jax.eval_shape(one, jax.tree.map(lambda x: x[0], member_params),
                                split(prompt_tokens_BxP)[0], split(prompt_mask_BxP)[0])
        logps, state = vmap(one, in_axes=(0, 0, 0), out_axes=(0, axes(shapes[1])))(
            member_params, split(prompt_tokens_BxP), split(prompt_mask_BxP))
        return jax.tree.map(merge, logps), state

    def step_fn(token_B, token_mask_B, state):
        def one(params, token, mask, member_state):
            logps, member_state = policy_of(params).step_fn(token, mask, member_state)
            return named_logprobs(logps), member_state

        logps, state = vmap(one, in_axes=(0, 0, 0, axes(state)),
                            out_axes=(0, axes(state)))(member_params, split(token_B),
                                                      split(token_mask_B), state)
        return jax.tree.map(merge, logps), state

    return Policy(prefill_fn, step_fn)


def population_sample(policy_of, member_params, member_keys, prompt_tokens_BxP,
                      prompt_mask_BxP, *, example_ids_B, vmap=jax.vmap, **kwargs):
    """`sample` for M members on the same prompts, in one decoding loop over M·B rows
    (`stacked_policy`): member m's rows draw with `member_keys[m]` from
    `policy_of(member_params[m])`, exactly as `sample(..., rng=member_keys[m])` would. Every
    output gets a leading member axis ([M, B, N], finished_B [M, B])."""
    size, b = member_keys.shape[0], prompt_tokens_BxP.shape[0]
    row_keys_MxB = jax.vmap(lambda k: jax.vmap(jax.random.fold_in, in_axes=(None, 0))(
        k, example_ids_B))(member_keys)
    tile = lambda x: jnp.concatenate([jnp.asarray(x)] * size, axis=0)
    out = sample(stacked_policy(policy_of, member_params, size, vmap=vmap),
                 tile(prompt_tokens_BxP), tile(prompt_mask_BxP), example_ids_B=tile(example_ids_B),
                 rng=None, row_keys_B=row_keys_MxB.reshape(size * b, *row_keys_MxB.shape[2:]),
                 **kwargs)
    return jax.tree.map(lambda x: x.reshape(size, b, *x.shape[1:]), out)


def _weighted(w, logp_BxV):
    # A zero weight must silence the term even where log p = -inf (0 * -inf is NaN).
    return jnp.where(w == 0, 0.0, w * logp_BxV)


def geometric_mixture(policy: Policy, reference: Policy, beta) -> Policy:
    """Token-level pi_mix ∝ pi^(1-beta) ref^beta on a shared prefix (Nash-MD, arXiv 2312.00886).

    Each component keeps its own state (KV cache) and sees the same tokens. beta may be traced,
    so changing it never recompiles. Returns "sample" = the mixture, "policy" and "reference" =
    the components' "sample" log-probs. beta = 0 returns the policy's log-probs unchanged (and
    beta = 1 the reference's), so the sampler then draws exactly as from that component.
    """
    if isinstance(beta, numbers.Real) and not 0 <= beta <= 1:
        raise ValueError(f"geometric_mixture: beta must be in [0, 1], got {beta!r}")

    def mix(policy_logps, reference_logps):
        logp_BxV = named_logprobs(policy_logps)[SAMPLE].astype(jnp.float32)
        ref_BxV = named_logprobs(reference_logps)[SAMPLE].astype(jnp.float32)
        b = jnp.asarray(beta, jnp.float32)
        mixed_BxV = jax.nn.log_softmax(_weighted(1 - b, logp_BxV) + _weighted(b, ref_BxV), axis=-1)
        mixed_BxV = jnp.where(b == 0, logp_BxV, jnp.where(b == 1, ref_BxV, mixed_BxV))
        return {SAMPLE: mixed_BxV, POLICY: logp_BxV, REFERENCE: ref_BxV}

    def prefill_fn(prompt_tokens_BxP, prompt_mask_BxP, cache_len):
        a, state_a = policy.prefill_fn(prompt_tokens_BxP, prompt_mask_BxP, cache_len)
        r, state_r = reference.prefill_fn(prompt_tokens_BxP, prompt_mask_BxP, cache_len)
        return mix(a, r), (state_a, state_r)

    def step_fn(token_B, token_mask_B, state):
        a, state_a = policy.step_fn(token_B, token_mask_B, state[0])
        r, state_r = reference.step_fn(token_B, token_mask_B, state[1])
        return mix(a, r), (state_a, state_r)

    return Policy(prefill_fn, step_fn)


def mixture_policy(policy_model, reference_model, beta) -> Policy:
    """Geometric mixture of two Transformers; beta = 0 samples the policy and also reports ref."""
    return geometric_mixture(model_policy(policy_model), model_policy(reference_model), beta)


def _top_p_cut(logits_BxV, top_p):
    """Keeps the smallest set of most likely tokens whose mass reaches top_p (ties all kept)."""
    sorted_BxV = -jnp.sort(-logits_BxV, axis=-1)
    probs_BxV = jnp.exp(sorted_BxV - jax.nn.logsumexp(sorted_BxV, axis=-1, keepdims=True))
    # Exclusive mass before each token, taken from the running sum rather than sum - p so a
    # token's own probability does not round away the comparison.
    before_BxV = jnp.pad(jnp.cumsum(probs_BxV, axis=-1)[:, :-1], ((0, 0), (1, 0)))
    kept_BxV = before_BxV < top_p
    # The cutoff is compared with the very logits it was sorted from: a recomputed log-softmax
    # may round differently in another fusion and drop even the top token.
    cutoff_Bx1 = jnp.min(jnp.where(kept_BxV, sorted_BxV, jnp.inf), axis=-1, keepdims=True)
    # p >= 1 must keep everything, even tail tokens whose running sum rounds to 1.
    keep_BxV = (logits_BxV >= cutoff_Bx1) | (top_p >= 1)
    return jnp.where(keep_BxV, logits_BxV, -jnp.inf)


def sampling_logprobs(logp_BxV, *, temperature, top_k: int = 0, top_p=1.0):
    """Log-probs actually sampled from: tempered, cut to the top k, then to the top-p nucleus."""
    logits_BxV = logp_BxV.astype(jnp.float32) / temperature
    if top_k:
        kth_Bx1 = jax.lax.top_k(logits_BxV, top_k)[0][:, -1:]
        logits_BxV = jnp.where(logits_BxV >= kth_Bx1, logits_BxV, -jnp.inf)
    # A Python top_p of 1 skips the per-step sort over the vocabulary; a traced one never does.
    if not (isinstance(top_p, numbers.Real) and top_p >= 1):
        logits_BxV = _top_p_cut(logits_BxV, top_p)
    return jax.nn.log_softmax(logits_BxV, axis=-1)


def _check_args(prompt_tokens_BxP, prompt_mask_BxP, example_ids_B, max_new_tokens, top_k,
                temperature, top_p=1.0):
    if len(prompt_tokens_BxP.shape) != 2:
        raise ValueError(
            f"sample: prompt_tokens must be [B, P], got shape {prompt_tokens_BxP.shape}")
    if prompt_mask_BxP.shape != prompt_tokens_BxP.shape:
        raise ValueError(f"sample: prompt_mask shape {prompt_mask_BxP.shape} != prompt_tokens "
                         f"shape {prompt_tokens_BxP.shape}")
    if example_ids_B.shape != prompt_tokens_BxP.shape[:1]:
        raise ValueError(f"sample: example_ids shape {example_ids_B.shape} != batch "
                         f"{prompt_tokens_BxP.shape[:1]}")
    if (isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int)
            or max_new_tokens < 1):
        raise ValueError(f"sample: max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"sample: top_k must be an int >= 0 (0 = no cut), got {top_k!r}")
    if isinstance(temperature, numbers.Real) and not temperature > 0:
        raise ValueError(f"sample: temperature must be > 0 (use greedy=True for argmax), got "
                         f"{temperature!r}")
    if isinstance(top_p, numbers.Real) and not 0 < top_p <= 1:
        raise ValueError(f"sample: top_p must be in (0, 1] (1 = no cut), got {top_p!r}")


def sample(policy: Policy, prompt_tokens_BxP, prompt_mask_BxP, *, example_ids_B, rng,
           max_new_tokens: int, eos_id, temperature=1.0, top_k: int = 0, top_p=1.0,
           greedy: bool = False, pad_id=0, row_keys_B=None):
    """Samples completions of left-padded prompts; call inside jit (see `generate`).

    Row b draws with fold_in(fold_in(rng, example_ids_B[b]), step), so its sample does not
    depend on the batch it sits in; `row_keys_B` (given) replaces fold_in(rng, example_ids_B)
    (rows of several members, each with its own key: `stacked_policy`). Stops once every row has emitted eos_id (eos_id = -1 never
    stops early). Returns, all [B, N] and 0 where masked out unless said otherwise:
      tokens_BxN     chosen tokens, pad_id after eos;
      mask_BxN       1 up to and including eos (fp32): the only source of completion masks,
                     since pad_id may equal eos_id;
      logp_BxN       log-probs under `sampling_logprobs` (what was sampled from);
      policy_logp_BxN  log pi_theta at temperature 1 without top-k / top-p (the Policy's
                     "policy" entry, else "sample");
      ref_logp_BxN   log pi_ref, only if the Policy returns "reference";
      entropy_BxN    entropy of pi_theta's next-token distribution (as policy_logp_BxN) at
                     each emitted token;
      finished_B     bool: the row emitted eos_id (False = cut at max_new_tokens).
    """
    prompt_tokens_BxP = jnp.asarray(prompt_tokens_BxP)
    prompt_mask_BxP = jnp.asarray(prompt_mask_BxP)
    example_ids_B = jnp.asarray(example_ids_B)
    _check_args(prompt_tokens_BxP, prompt_mask_BxP, example_ids_B, max_new_tokens, top_k,
                temperature, top_p)
    b, p = prompt_tokens_BxP.shape
    n = max_new_tokens
    if row_keys_B is None:
        row_keys_B = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, example_ids_B)
    logps, state = policy.prefill_fn(prompt_tokens_BxP, prompt_mask_BxP, p + n)
    logps = named_logprobs(logps)
    vocab = logps[SAMPLE].shape[-1]
    if top_k > vocab:
        raise ValueError(f"sample: top_k={top_k} exceeds the vocabulary size {vocab}")
    outputs = (["logp_BxN", "policy_logp_BxN", "entropy_BxN"]
               + (["ref_logp_BxN"] if REFERENCE in logps else []))

    def body(carry):
        i, logps, state, done_B, out = carry
        sample_logp_BxV = sampling_logprobs(logps[SAMPLE], temperature=temperature, top_k=top_k,
                                            top_p=top_p)
        if greedy:
            token_B = jnp.argmax(sample_logp_BxV, axis=-1)
        else:
            step_keys_B = jax.vmap(jax.random.fold_in, in_axes=(0, None))(row_keys_B, i)
            token_B = jax.vmap(jax.random.categorical)(step_keys_B, sample_logp_BxV)
        token_B = token_B.astype(jnp.int32)
        picked = lambda v_BxV: jnp.take_along_axis(
            v_BxV.astype(jnp.float32), token_B[:, None], axis=-1)[:, 0]
        policy_BxV = logps.get(POLICY, logps[SAMPLE]).astype(jnp.float32)
        chosen = {"logp_BxN": picked(sample_logp_BxV), "policy_logp_BxN": picked(policy_BxV),
                  # p·log p with p = 0 contributes 0, even where log p = -inf.
                  "entropy_BxN": -jnp.sum(jnp.where(policy_BxV > -jnp.inf,
                                                    jnp.exp(policy_BxV) * policy_BxV, 0.0), -1)}
        if REFERENCE in logps:
            chosen["ref_logp_BxN"] = picked(logps[REFERENCE])
        live_B = ~done_B
        out = dict(out)
        out["tokens_BxN"] = out["tokens_BxN"].at[:, i].set(jnp.where(live_B, token_B, pad_id))
        out["mask_BxN"] = out["mask_BxN"].at[:, i].set(live_B.astype(jnp.float32))
        for name in outputs:
            out[name] = out[name].at[:, i].set(jnp.where(live_B, chosen[name], 0.0))
        done_B = done_B | (token_B == eos_id)
        # Finished rows still step (shapes are fixed) but their tokens are masked out of the cache.
        logps, state = policy.step_fn(token_B, live_B, state)
        return i + 1, named_logprobs(logps), state, done_B, out

    def cond(carry):
        i, done_B = carry[0], carry[3]
        return (i < n) & ~jnp.all(done_B)

    out = {"tokens_BxN": jnp.full((b, n), pad_id, jnp.int32),
           "mask_BxN": jnp.zeros((b, n), jnp.float32)}
    out.update({name: jnp.zeros((b, n), jnp.float32) for name in outputs})
    init = (jnp.zeros((), jnp.int32), logps, state, jnp.zeros((b,), jnp.bool_), out)
    _, _, _, done_B, out = jax.lax.while_loop(cond, body, init)
    return dict(out, finished_B=done_B)


@functools.partial(jax.jit, static_argnames=("max_new_tokens", "top_k", "cut_top_p", "greedy"))
def _generate(model, reference_model, prompt_tokens_BxP, prompt_mask_BxP, example_ids_B, rng,
              eos_id, pad_id, temperature, top_p, beta, *, max_new_tokens, top_k, cut_top_p,
              greedy):
    if reference_model is None:
        policy = model_policy(model)
    else:
        policy = mixture_policy(model, reference_model, beta)
    return sample(policy, prompt_tokens_BxP, prompt_mask_BxP, example_ids_B=example_ids_B,
                  rng=rng, max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=pad_id,
                  temperature=temperature, top_k=top_k, top_p=top_p if cut_top_p else 1.0,
                  greedy=greedy)


def generate(model, prompt_tokens_BxP, prompt_mask_BxP, *, example_ids_B, rng,
             max_new_tokens: int, eos_id: int, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, greedy: bool = False, pad_id: int = 0, reference_model=None,
             beta: float = 0.0):
    """Jitted `sample` from a Transformer, or from its mixture with reference_model at beta.

    Recompiles only for new shapes, top_k, greedy, or top_p crossing 1; temperature, top_p and
    beta are traced.
    """
    _check_args(jnp.asarray(prompt_tokens_BxP), jnp.asarray(prompt_mask_BxP),
                jnp.asarray(example_ids_B), max_new_tokens, top_k, temperature, top_p)
    if isinstance(beta, numbers.Real) and not 0 <= beta <= 1:
        raise ValueError(f"generate: beta must be in [0, 1], got {beta!r}")
    return _generate(model, reference_model, prompt_tokens_BxP, prompt_mask_BxP, example_ids_B,
                     rng, eos_id, pad_id, jnp.float32(temperature), jnp.float32(top_p),
                     jnp.float32(beta), max_new_tokens=max_new_tokens, top_k=top_k,
                     cut_top_p=bool(top_p < 1), greedy=greedy)
