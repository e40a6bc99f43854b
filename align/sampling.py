"""Jit-compiled KV-cache sampling from any next-token log-prob policy (a model, or a mixture).

Dimension letters: B batch, P prompt tokens, N new tokens, V vocab.
"""
from __future__ import annotations

import functools
import numbers
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from align.models.transformer import init_cache


class Policy(NamedTuple):
    """Next-token log-probs for decoding: prefill a prompt once, then advance one token a step.

    prefill_fn(prompt_tokens_BxP, prompt_mask_BxP, cache_len) -> (logp_BxV, state)
    step_fn(token_B, token_mask_B, state) -> (logp_BxV, state)
    logp_BxV are normalised fp32 log-probs of the next token; state is any pytree (e.g. KV
    caches). A token-level mixture of two policies combines their logp_BxV in its own step_fn.
    """

    prefill_fn: Callable[..., tuple[jax.Array, Any]]
    step_fn: Callable[..., tuple[jax.Array, Any]]


def model_policy(model) -> Policy:
    """The Policy of a Transformer, decoding with its KV cache."""

    def next_logp(hidden_BxTxD):
        logits_BxV = model.logits(hidden_BxTxD[:, -1:])[:, 0]
        return jax.nn.log_softmax(logits_BxV.astype(jnp.float32), axis=-1)

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


def sampling_logprobs(logp_BxV, *, temperature, top_k: int = 0):
    """Log-probs of the distribution actually sampled from: tempered, then cut to the top k."""
    logits_BxV = logp_BxV.astype(jnp.float32) / temperature
    if top_k:
        kth_Bx1 = jax.lax.top_k(logits_BxV, top_k)[0][:, -1:]
        logits_BxV = jnp.where(logits_BxV >= kth_Bx1, logits_BxV, -jnp.inf)
    return jax.nn.log_softmax(logits_BxV, axis=-1)


def _check_args(prompt_tokens_BxP, prompt_mask_BxP, example_ids_B, max_new_tokens, top_k,
                temperature):
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


def sample(policy: Policy, prompt_tokens_BxP, prompt_mask_BxP, *, example_ids_B, rng,
           max_new_tokens: int, eos_id, temperature=1.0, top_k: int = 0, greedy: bool = False):
    """Samples completions of left-padded prompts; call inside jit (see `generate`).

    Row b draws with fold_in(fold_in(rng, example_ids_B[b]), step), so its sample does not
    depend on the batch it sits in. Stops once every row has emitted eos_id. Returns
    tokens_BxN (0 after eos), mask_BxN (1 up to and including eos, fp32) and logp_BxN (fp32
    log-probs of the chosen tokens under `sampling_logprobs`, 0 where masked out).
    """
    prompt_tokens_BxP = jnp.asarray(prompt_tokens_BxP)
    prompt_mask_BxP = jnp.asarray(prompt_mask_BxP)
    example_ids_B = jnp.asarray(example_ids_B)
    _check_args(prompt_tokens_BxP, prompt_mask_BxP, example_ids_B, max_new_tokens, top_k,
                temperature)
    b, p = prompt_tokens_BxP.shape
    n = max_new_tokens
    row_keys_B = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, example_ids_B)
    logp_BxV, state = policy.prefill_fn(prompt_tokens_BxP, prompt_mask_BxP, p + n)
    if top_k > logp_BxV.shape[-1]:
        raise ValueError(f"sample: top_k={top_k} exceeds the vocabulary size {logp_BxV.shape[-1]}")

    def body(carry):
        i, logp_BxV, state, done_B, tokens_BxN, mask_BxN, chosen_logp_BxN = carry
        sample_logp_BxV = sampling_logprobs(logp_BxV, temperature=temperature, top_k=top_k)
        if greedy:
            token_B = jnp.argmax(sample_logp_BxV, axis=-1)
        else:
            step_keys_B = jax.vmap(jax.random.fold_in, in_axes=(0, None))(row_keys_B, i)
            token_B = jax.vmap(jax.random.categorical)(step_keys_B, sample_logp_BxV)
        token_B = token_B.astype(jnp.int32)
        chosen_B = jnp.take_along_axis(sample_logp_BxV, token_B[:, None], axis=-1)[:, 0]
        live_B = ~done_B
        tokens_BxN = tokens_BxN.at[:, i].set(jnp.where(live_B, token_B, 0))
        mask_BxN = mask_BxN.at[:, i].set(live_B.astype(jnp.float32))
        chosen_logp_BxN = chosen_logp_BxN.at[:, i].set(jnp.where(live_B, chosen_B, 0.0))
        done_B = done_B | (token_B == eos_id)
        # Finished rows still step (shapes are fixed) but their tokens are masked out of the cache.
        logp_BxV, state = policy.step_fn(token_B, live_B, state)
        return i + 1, logp_BxV, state, done_B, tokens_BxN, mask_BxN, chosen_logp_BxN

    def cond(carry):
        i, done_B = carry[0], carry[3]
        return (i < n) & ~jnp.all(done_B)

    init = (jnp.zeros((), jnp.int32), logp_BxV, state, jnp.zeros((b,), jnp.bool_),
            jnp.zeros((b, n), jnp.int32), jnp.zeros((b, n), jnp.float32),
            jnp.zeros((b, n), jnp.float32))
    _, _, _, _, tokens_BxN, mask_BxN, chosen_logp_BxN = jax.lax.while_loop(cond, body, init)
    return dict(tokens_BxN=tokens_BxN, mask_BxN=mask_BxN, logp_BxN=chosen_logp_BxN)


@functools.partial(jax.jit, static_argnames=("max_new_tokens", "top_k", "greedy"))
def _generate(model, prompt_tokens_BxP, prompt_mask_BxP, example_ids_B, rng, eos_id,
              temperature, *, max_new_tokens, top_k, greedy):
    return sample(model_policy(model), prompt_tokens_BxP, prompt_mask_BxP,
                  example_ids_B=example_ids_B, rng=rng, max_new_tokens=max_new_tokens,
                  eos_id=eos_id, temperature=temperature, top_k=top_k, greedy=greedy)


def generate(model, prompt_tokens_BxP, prompt_mask_BxP, *, example_ids_B, rng,
             max_new_tokens: int, eos_id: int, temperature: float = 1.0, top_k: int = 0,
             greedy: bool = False):
    """Jitted `sample` from a Transformer; recompiles only for new shapes, top_k or greedy."""
    _check_args(jnp.asarray(prompt_tokens_BxP), jnp.asarray(prompt_mask_BxP),
                jnp.asarray(example_ids_B), max_new_tokens, top_k, temperature)
    return _generate(model, prompt_tokens_BxP, prompt_mask_BxP, example_ids_B, rng, eos_id,
                     jnp.float32(temperature), max_new_tokens=max_new_tokens, top_k=top_k,
                     greedy=greedy)
