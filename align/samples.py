"""A policy's samples on prompts: sampling, decoding, KL against a reference, win rate.

Dimension letters: B batch, P prompt tokens, N new tokens, L = P + N.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from align import logprobs, sampling
from align.summary import mean_and_se

__all__ = ["decode", "join", "mean_and_se", "population_sample_fn", "sample_fn", "sequence_kl",
           "win_rate"]


def sample_fn(policy_model, batch, key, *, max_new_tokens: int, temperature: float, top_k: int,
              eos_id: int):
    """Completions of a batch of left-padded prompts (jittable); per-example keys by example_id."""
    out = sampling.sample(
        sampling.model_policy(policy_model), batch["prompt_tokens"], batch["prompt_mask"],
        example_ids_B=batch["example_id"], rng=key, max_new_tokens=max_new_tokens,
        eos_id=eos_id, temperature=temperature, top_k=top_k)
    return {"tokens": out["tokens_BxN"], "mask": out["mask_BxN"]}


def population_sample_fn(model_of, member_params, batch, member_keys, *, max_new_tokens: int,
                         temperature: float, top_k: int, eos_id: int, vmap=jax.vmap):
    """`sample_fn` for the members of a population at once: member_params and member_keys
    carry a leading member axis of size M, the outputs are [M, B, N], and member m's rows
    equal `sample_fn(model_of(member_params[m]), batch, member_keys[m])`. One decoding loop
    over M·B rows (`sampling.stacked_policy`), not a vmapped loop."""
    out = sampling.population_sample(
        lambda p: sampling.model_policy(model_of(p)), member_params, member_keys,
        batch["prompt_tokens"], batch["prompt_mask"], example_ids_B=batch["example_id"],
        vmap=vmap, max_new_tokens=max_new_tokens, eos_id=eos_id, temperature=temperature,
        top_k=top_k)
    return {"tokens": out["tokens_BxN"], "mask": out["mask_BxN"]}


def join(prompt_tokens_BxP, prompt_mask_BxP, tokens_BxN, mask_BxN):
    """Prompt + completion as one sequence, with the completion as the loss mask.

    NumPy in, NumPy out (host rollouts); jax arrays in, jax arrays out (inside jit).
    """
    xp = jnp if isinstance(tokens_BxN, jax.Array) else np
    comp_mask_BxN = (xp.asarray(mask_BxN) > 0).astype(xp.int32)
    tokens_BxL = xp.concatenate(
        [xp.asarray(prompt_tokens_BxP), xp.asarray(tokens_BxN).astype(prompt_tokens_BxP.dtype)],
        axis=1).astype(xp.int32)
    input_mask_BxL = xp.concatenate([xp.asarray(prompt_mask_BxP).astype(xp.int32), comp_mask_BxN],
                                    axis=1)
    loss_mask_BxL = xp.concatenate([xp.zeros(prompt_mask_BxP.shape, xp.int32), comp_mask_BxN],
                                   axis=1)
    return tokens_BxL, input_mask_BxL, loss_mask_BxL


def sequence_kl(policy_model, reference_model, batch, samples, *, chunk_size: int = 0):
    """Per-sample log π(y|x) − log π_ref(y|x) for y ~ π: its mean estimates KL(π ‖ π_ref)."""
    tokens, input_mask, loss_mask = join(batch["prompt_tokens"], batch["prompt_mask"],
                                         samples["tokens"], samples["mask"])
    logp = logprobs.shifted_logprobs(policy_model, tokens, input_mask, chunk_size=chunk_size)
    ref = logprobs.shifted_logprobs(reference_model, tokens, input_mask, chunk_size=chunk_size)
    return logprobs.sequence_logprobs(logp - ref, loss_mask, reduction="sum")


def decode(tokenizer, samples) -> list[str]:
    """Completion texts (tokens up to and including eos; the tokenizer drops control ids)."""
    tokens, mask = np.asarray(samples["tokens"]), np.asarray(samples["mask"])
    return [tokenizer.decode([int(t) for t, m in zip(row, mrow) if m])
            for row, mrow in zip(tokens, mask)]


def win_rate(gold_policy_B, gold_reference_B) -> tuple[float, float]:
    """P(policy's sample beats the reference's for the same prompt), ties half; with its SE."""
    a, b = np.asarray(gold_policy_B, np.float64), np.asarray(gold_reference_B, np.float64)
    wins = (a > b).astype(np.float64) + 0.5 * (a == b)
    return mean_and_se(wins)
