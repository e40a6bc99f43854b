"""Supervised fine-tuning: token-level negative log-likelihood of the completion.

Dimension letters: B batch, T tokens.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp

from align import logprobs
from align.objectives import base


def sft_loss(logp_BxT, loss_mask_BxT):
    """Summed negative log-likelihood over masked tokens and the token count."""
    mask_BxT = loss_mask_BxT.astype(jnp.float32)
    return -jnp.sum(logp_BxT * mask_BxT), jnp.sum(mask_BxT)


def _loss(model, batch, obj_state, *, rng, chunk_size):
    del obj_state, rng
    logp_BxT = logprobs.shifted_logprobs(
        model, batch["tokens"], batch["input_mask"], chunk_size=chunk_size)
    nll_sum, n_tokens = sft_loss(logp_BxT, batch["loss_mask"])
    n_seq = jnp.asarray(batch["tokens"].shape[0], jnp.float32)
    metrics = {
        "nll_per_token": base.ratio(nll_sum, n_tokens),
        "nll_per_sequence": base.ratio(nll_sum, n_seq),
        "completion_tokens": base.ratio(n_tokens, n_seq),
    }
    return base.LossOut(nll_sum, n_tokens, metrics)


def make(config, *, chunk_size: int = 0) -> base.Objective:
    """SFT as an Objective; `config` is the objective section (no settings yet)."""
    del config
    return base.make("sft", "sft", loss=functools.partial(_loss, chunk_size=chunk_size))


OBJECTIVES = {"sft": make}
