"""Token and sequence log-probabilities: the only place where logits become log-probs (fp32).

Dimension letters: B batch, T tokens, C tokens per chunk, D model width, V vocab.
"""
from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp

from align import matmul

_REDUCTIONS = ("sum", "mean")


def _logits(hidden_BxTxD, unembed_DxV, dtype):
    dt = jnp.dtype(dtype)
    return matmul.dense(hidden_BxTxD, unembed_DxV, dtype=dt,
                        preferred_element_type=jnp.float32).astype(jnp.float32)


def token_logprobs_from_logits(logits_BxTxV, targets_BxT):
    """log softmax(logits)[target] in fp32."""
    logits_BxTxV = logits_BxTxV.astype(jnp.float32)
    picked_BxT = jnp.take_along_axis(logits_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
    return picked_BxT - jax.nn.logsumexp(logits_BxTxV, axis=-1)


def token_entropy_from_logits(logits_BxTxV):
    """Entropy of softmax(logits) per token in fp32."""
    logp_BxTxV = jax.nn.log_softmax(logits_BxTxV.astype(jnp.float32), axis=-1)
    return -jnp.sum(jnp.exp(logp_BxTxV) * logp_BxTxV, axis=-1)


def _map_time_chunks(fn, chunk_size: int, hidden_BxTxD, *per_token_BxT):
    """fn(hidden_BxCxD, *per_token_BxC) -> out_BxC over chunks of the T axis, one chunk alive.

    Each chunk is checkpointed, so the backward pass recomputes that chunk's [B, C, V] logits
    instead of keeping all of them alive: peak memory is one chunk, not [B, T, V].
    """
    b, t, d = hidden_BxTxD.shape
    n = -(-t // chunk_size)
    pad = n * chunk_size - t

    def to_chunks(x):
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
        return jnp.moveaxis(x.reshape(b, n, chunk_size, *x.shape[2:]), 1, 0)

    chunk_fn = jax.checkpoint(lambda args: fn(*args))
    out_NxBxC = jax.lax.map(chunk_fn, tuple(to_chunks(x) for x in (hidden_BxTxD, *per_token_BxT)))
    return jnp.moveaxis(out_NxBxC, 0, 1).reshape(b, n * chunk_size)[:, :t]


def _check_chunk_size(chunk_size) -> int:
    if (isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral)
            or chunk_size < 0):
        raise ValueError(f"chunk_size must be an int >= 0 (0 = no chunking), got {chunk_size!r}")
    return int(chunk_size)


def token_logprobs(hidden_BxTxD, unembed_DxV, targets_BxT, *, chunk_size: int = 0,
                   dtype: str = "float32"):
    """log softmax(hidden @ unembed)[target] in fp32; chunk_size > 0 bounds the logits in memory."""
    chunk_size = _check_chunk_size(chunk_size)
    if hidden_BxTxD.shape[:2] != targets_BxT.shape:
        raise ValueError(f"token_logprobs: hidden {hidden_BxTxD.shape} and targets "
                         f"{targets_BxT.shape} disagree on [B, T]")
    if hidden_BxTxD.shape[-1] != unembed_DxV.shape[0]:
        raise ValueError(f"token_logprobs: hidden width {hidden_BxTxD.shape[-1]} != unembed rows "
                         f"{unembed_DxV.shape[0]}")

    def fn(hidden_BxCxD, targets_BxC):
        return token_logprobs_from_logits(_logits(hidden_BxCxD, unembed_DxV, dtype), targets_BxC)

    if chunk_size == 0 or chunk_size >= hidden_BxTxD.shape[1]:
        return fn(hidden_BxTxD, targets_BxT)
    return _map_time_chunks(fn, chunk_size, hidden_BxTxD, targets_BxT)


def token_entropy(hidden_BxTxD, unembed_DxV, *, chunk_size: int = 0, dtype: str = "float32"):
    """Entropy of softmax(hidden @ unembed) per token in fp32, chunked like token_logprobs."""
    chunk_size = _check_chunk_size(chunk_size)
    fn = lambda hidden_BxCxD: token_entropy_from_logits(_logits(hidden_BxCxD, unembed_DxV, dtype))
    if chunk_size == 0 or chunk_size >= hidden_BxTxD.shape[1]:
        return fn(hidden_BxTxD)
    return _map_time_chunks(fn, chunk_size, hidden_BxTxD)


def _shift_right(x_BxT):
    """Puts the value for predicting token t at column t, with 0 at t = 0."""
    return jnp.pad(x_BxT, [(0, 0), (1, 0)])


def shifted_logprobs(model, tokens_BxT, input_mask_BxT, *, chunk_size: int = 0):
    """logp[:, t] = log p(tokens[t] | tokens[<t]) for t >= 1 and 0 at t = 0, aligned with tokens.

    `model` is a Transformer (or anything with its __call__, unembed_matrix() and config.dtype).
    """
    hidden_BxTxD, _ = model(tokens_BxT, input_mask_BxT=input_mask_BxT)
    logp_BxT1 = token_logprobs(hidden_BxTxD[:, :-1], model.unembed_matrix(), tokens_BxT[:, 1:],
                               chunk_size=chunk_size, dtype=model.config.dtype)
    return _shift_right(logp_BxT1)


def sequence_logprobs(logp_BxT, mask_BxT, *, reduction: str = "sum"):
    """Masked sum, or mean over the mask (0 for an empty mask), of token log-probs per row."""
    if reduction not in _REDUCTIONS:
        raise ValueError(f"sequence_logprobs: reduction must be one of {_REDUCTIONS}, got "
                         f"{reduction!r}")
    if logp_BxT.shape != mask_BxT.shape:
        raise ValueError(f"sequence_logprobs: logp shape {logp_BxT.shape} != mask shape "
                         f"{mask_BxT.shape}")
    mask_BxT = mask_BxT.astype(jnp.float32)
    # where, not multiply: a -inf or NaN log-prob under padding must not leak into the sum.
    total_B = jnp.sum(jnp.where(mask_BxT > 0, logp_BxT.astype(jnp.float32), 0.0) * mask_BxT, axis=1)
    if reduction == "sum":
        return total_B
    count_B = jnp.sum(mask_BxT, axis=1)
    return jnp.where(count_B > 0, total_B / jnp.maximum(count_B, 1e-9), 0.0)

