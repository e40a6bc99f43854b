"""LLaMA-family decoder-only transformer in Flax NNX: RoPE, RMSNorm, SwiGLU, grouped-query attention.

Options cover Llama 2/3 (incl. Llama-3.1 rope scaling), Mistral, Qwen2 (q/k/v biases) and
Gemma v1 (norm scales as 1 + w, GeGLU, embeddings scaled by sqrt(D)).

Dimension letters: B batch, T tokens, S cache slots (keys), D model width, N query heads,
K kv heads, G query heads per kv head, H head width, F MLP width, V vocab, L layers.
"""
from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from align import matmul
from align import mesh as mesh_lib

_DTYPES = ("float32", "bfloat16")
_REMAT = ("none", "full", "dots")
_ACTIVATIONS = ("silu", "gelu_tanh")
_ROPE_SCALING = ("none", "llama3")
_ATTENTION = ("einsum", "dot_product_attention")
# A finite "minus infinity": a fully masked softmax row then stays finite instead of NaN.
_MASKED = -1e30
# Activations [B, T, D] are split over the batch only; their width stays whole.
_ACT_BxTxD = ("batch", None, None)


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Architecture and numerics of a Transformer; sizes come only from here."""

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_ff: int
    max_len: int
    head_dim: int = 0
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    tie_embeddings: bool = True
    dtype: str = "float32"
    remat: str = "none"
    scan_layers: bool = False
    init_std: float = 0.02
    qkv_bias: bool = False  # biases on the q/k/v projections (Qwen2)
    mlp_activation: str = "silu"  # "silu" (SwiGLU) or "gelu_tanh" (GeGLU, Gemma)
    norm_plus_one: bool = False  # RMSNorm multiplies by (1 + scale) (Gemma)
    embed_scale: bool = False  # embeddings times sqrt(d_model) (Gemma)
    rope_scaling: str = "none"  # "none" or "llama3" (Llama 3.1 frequency rescaling)
    rope_scaling_factor: float = 8.0  # the rope_* values below are read only for "llama3"
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_len: int = 8192
    # Uncached attention (training, scoring, prefill-free forward passes): "einsum", or JAX's
    # jax.nn.dot_product_attention, which may pick a fused kernel (cuDNN on GPU). Decoding with
    # a KV cache always uses the einsum path, which reads the cache in its own layout.
    attention: str = "einsum"

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff",
                     "max_len", "head_dim", "rope_original_max_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ValueError(f"TransformerConfig.{name} must be an int, got {value!r}")
            if value < 0 or (value == 0 and name != "head_dim"):
                raise ValueError(f"TransformerConfig.{name} must be positive, got {value}")
            object.__setattr__(self, name, int(value))
        for name in ("rope_theta", "norm_eps", "init_std", "rope_scaling_factor",
                     "rope_low_freq_factor", "rope_high_freq_factor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or value <= 0:
                raise ValueError(
                    f"TransformerConfig.{name} must be a positive number, got {value!r}")
            object.__setattr__(self, name, float(value))
        for name in ("tie_embeddings", "scan_layers", "qkv_bias", "norm_plus_one", "embed_scale"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(
                    f"TransformerConfig.{name} must be a bool, got {getattr(self, name)!r}")
        if self.dtype not in _DTYPES:
            raise ValueError(
                f"TransformerConfig.dtype must be one of {_DTYPES}, got {self.dtype!r}")
        if self.remat not in _REMAT:
            raise ValueError(f"TransformerConfig.remat must be one of {_REMAT}, got {self.remat!r}")
        if self.mlp_activation not in _ACTIVATIONS:
            raise ValueError(f"TransformerConfig.mlp_activation must be one of {_ACTIVATIONS}, "
                             f"got {self.mlp_activation!r}")
        if self.attention not in _ATTENTION:
            raise ValueError(f"TransformerConfig.attention must be one of {_ATTENTION}, got "
                             f"{self.attention!r}")
        if self.rope_scaling not in _ROPE_SCALING:
            raise ValueError(f"TransformerConfig.rope_scaling must be one of {_ROPE_SCALING}, "
                             f"got {self.rope_scaling!r}")
        low, high = self.rope_low_freq_factor, self.rope_high_freq_factor
        if self.rope_scaling == "llama3" and high <= low:
            raise ValueError(
                f"TransformerConfig.rope_high_freq_factor ({self.rope_high_freq_factor}) must "
                f"exceed rope_low_freq_factor ({self.rope_low_freq_factor})")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"TransformerConfig.n_heads ({self.n_heads}) must be divisible by "
                             f"n_kv_heads ({self.n_kv_heads})")
        if self.head_dim == 0 and self.d_model % self.n_heads:
            raise ValueError(f"TransformerConfig.d_model ({self.d_model}) must be divisible by "
                             f"n_heads ({self.n_heads}) when head_dim is 0")
        if self.head_size % 2:
            raise ValueError(f"TransformerConfig: the head width ({self.head_size}) must be even "
                             "for rotary embeddings")

    @property
    def head_size(self) -> int:
        """Head width H: head_dim, or d_model // n_heads when head_dim is 0."""
        return self.head_dim or self.d_model // self.n_heads


def transformer_config(d: Mapping[str, Any]) -> TransformerConfig:
    """Builds a TransformerConfig from a dict or ConfigDict; unknown or missing keys are errors."""
    if hasattr(d, "to_dict"):
        d = d.to_dict()
    d = dict(d)
    fields = {f.name: f for f in dataclasses.fields(TransformerConfig)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown transformer config key(s) {unknown}; valid keys: {sorted(fields)}")
    missing = sorted(name for name, f in fields.items()
                     if f.default is dataclasses.MISSING and name not in d)
    if missing:
        raise ValueError(f"missing transformer config key(s) {missing}")
    return TransformerConfig(**d)


def _layer_matmul_params(cfg: TransformerConfig) -> int:
    d, h, n, k = cfg.d_model, cfg.head_size, cfg.n_heads, cfg.n_kv_heads
    return d * n * h + 2 * d * k * h + n * h * d + 3 * d * cfg.d_ff


def _layer_params(cfg: TransformerConfig) -> int:
    bias = (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_size if cfg.qkv_bias else 0
    return 2 * cfg.d_model + _layer_matmul_params(cfg) + bias


def num_params(cfg: TransformerConfig) -> int:
    """Number of parameters of Transformer(cfg)."""
    embeddings = cfg.vocab_size * cfg.d_model * (1 if cfg.tie_embeddings else 2)
    return embeddings + cfg.n_layers * _layer_params(cfg) + cfg.d_model


def flops_per_token(cfg: TransformerConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6 * N_matmul + 12 * L * N * H * T (PaLM, arXiv 2204.02311, App. B).

    N_matmul counts every weight used in a matmul (the layers and the unembedding, not the
    embedding lookup or norm scales); the attention term counts QK^T and PV over the full
    context of T = seq_len tokens (no causal halving), forward plus twice that for backward.
    """
    n_matmul = cfg.n_layers * _layer_matmul_params(cfg) + cfg.vocab_size * cfg.d_model
    attention = 12 * cfg.n_layers * cfg.n_heads * cfg.head_size * seq_len
    return float(6 * n_matmul + attention)


def _param(rngs: nnx.Rngs, shape, names, std: float) -> nnx.Param:
    value = std * jax.random.normal(rngs.params(), shape, jnp.float32)
    return nnx.Param(value, out_sharding=names)


class RMSNorm(nnx.Module):
    """Root-mean-square norm computed in fp32; times scale, or (1 + scale) when plus_one."""

    def __init__(self, dim: int, eps: float, plus_one: bool = False):
        # Both forms start as the identity map.
        init = jnp.zeros if plus_one else jnp.ones
        self.scale = nnx.Param(init((dim,), jnp.float32), out_sharding=("norm",))
        self.eps = eps
        self.plus_one = plus_one

    def __call__(self, x_BxTxD):
        x = x_BxTxD.astype(jnp.float32)
        x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.eps)
        scale = self.scale[...].astype(jnp.float32)
        return x * (1.0 + scale) if self.plus_one else x * scale


def rope_inv_freq(cfg: TransformerConfig) -> np.ndarray:
    """Rotary inverse frequencies [H/2] in fp32, with Llama-3.1 rescaling when configured."""
    half = cfg.head_size // 2
    inv_freq = 1.0 / (cfg.rope_theta ** (np.arange(half, dtype=np.float64) / half))
    if cfg.rope_scaling == "llama3":
        # Long wavelengths are stretched by the factor, short ones kept, the band between
        # interpolated smoothly (the Llama 3.1 reference recipe).
        low, high = cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
        factor, original = cfg.rope_scaling_factor, cfg.rope_original_max_len
        wavelen = 2 * np.pi / inv_freq
        smooth = (original / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * inv_freq / factor + smooth * inv_freq
        inv_freq = np.where(wavelen > original / low, inv_freq / factor,
                            np.where(wavelen < original / high, inv_freq, smoothed))
    return inv_freq.astype(np.float32)


def apply_rope(x_BxTxNxH, positions_BxT, theta: float, inv_freq_H2=None):
    """Rotates the two halves of each head (the HF LLaMA layout) by position-dependent angles."""
    half = x_BxTxNxH.shape[-1] // 2
    if inv_freq_H2 is None:
        inv_freq_H2 = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
    inv_freq_H2 = jnp.asarray(inv_freq_H2, jnp.float32)
    angle_BxTx1xH2 = (positions_BxT.astype(jnp.float32)[..., None] * inv_freq_H2)[:, :, None, :]
    sin, cos = jnp.sin(angle_BxTx1xH2), jnp.cos(angle_BxTx1xH2)
    x = x_BxTxNxH.astype(jnp.float32)
    x1, x2 = x[..., :half], x[..., half:]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BxTxNxH.dtype)


class Attention(nnx.Module):
    """Grouped-query self-attention with rotary positions and an optional KV cache."""

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
        d, n, k, h, std = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_size, cfg.init_std
        self.q = _param(rngs, (d, n, h), ("embed", "heads", "head_dim"), std)
        self.k = _param(rngs, (d, k, h), ("embed", "kv_heads", "head_dim"), std)
        self.v = _param(rngs, (d, k, h), ("embed", "kv_heads", "head_dim"), std)
        self.o = _param(rngs, (n, h, d), ("heads", "head_dim", "embed"), std)
        if cfg.qkv_bias:
            self.q_bias = nnx.Param(jnp.zeros((n, h), jnp.float32),
                                    out_sharding=("heads", "head_dim"))
            self.k_bias = nnx.Param(jnp.zeros((k, h), jnp.float32),
                                    out_sharding=("kv_heads", "head_dim"))
            self.v_bias = nnx.Param(jnp.zeros((k, h), jnp.float32),
                                    out_sharding=("kv_heads", "head_dim"))
        self.cfg = cfg

    def _project(self, x_BxTxD, name, dt):
        out = matmul.dense(x_BxTxD, getattr(self, name)[...], dtype=dt)
        if self.cfg.qkv_bias:
            out = out + getattr(self, f"{name}_bias")[...].astype(dt)
        return out

    def __call__(self, x_BxTxD, positions_BxT, mask_BxTxS, kv=None):
        """Returns the attention output and this layer's (k, v) for the cache (or None)."""
        cfg, dt = self.cfg, jnp.dtype(self.cfg.dtype)
        b, t, _ = x_BxTxD.shape
        k_heads, g = cfg.n_kv_heads, cfg.n_heads // cfg.n_kv_heads
        # Unscaled rotary frequencies are computed inside apply_rope, as they always were.
        inv_freq_H2 = None if cfg.rope_scaling == "none" else rope_inv_freq(cfg)
        q_BxTxNxH = apply_rope(self._project(x_BxTxD, "q", dt), positions_BxT,
                               cfg.rope_theta, inv_freq_H2)
        k_BxTxKxH = apply_rope(self._project(x_BxTxD, "k", dt), positions_BxT,
                               cfg.rope_theta, inv_freq_H2)
        v_BxTxKxH = self._project(x_BxTxD, "v", dt)
        if kv is None and cfg.attention == "dot_product_attention":
            out_BxTxNxH = jax.nn.dot_product_attention(
                q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, mask=mask_BxTxS[:, None],
                scale=cfg.head_size ** -0.5)
            return matmul.dense(out_BxTxNxH, self.o[...], 2, dtype=dt).astype(jnp.float32), None
        # Heads before slots: both attention products are then plain batched matmuls over
        # (B, K), and a cached layer is read as it lies, with no transpose per decoding step.
        q_BxKxGxTxH = q_BxTxNxH.reshape(b, t, k_heads, g, cfg.head_size).transpose(0, 2, 3, 1, 4)
        k_BxKxTxH = k_BxTxKxH.transpose(0, 2, 1, 3)
        v_BxKxTxH = v_BxTxKxH.transpose(0, 2, 1, 3)
        if kv is None:
            k_BxKxSxH, v_BxKxSxH, new_kv = k_BxKxTxH, v_BxKxTxH, None
        else:
            cache_k, cache_v, index = kv
            k_BxKxSxH = jax.lax.dynamic_update_slice(
                cache_k, k_BxKxTxH.astype(cache_k.dtype), (0, 0, index, 0))
            v_BxKxSxH = jax.lax.dynamic_update_slice(
                cache_v, v_BxKxTxH.astype(cache_v.dtype), (0, 0, index, 0))
            new_kv = (k_BxKxSxH, v_BxKxSxH)
        # Query head n uses kv head n // G (the HF repeat_kv order), so N splits as K x G.
        scores_BxKxGxTxS = jnp.einsum("bkgth,bksh->bkgts", q_BxKxGxTxH, k_BxKxSxH.astype(dt),
                                      preferred_element_type=jnp.float32)
        scores_BxKxGxTxS = scores_BxKxGxTxS * (cfg.head_size ** -0.5)
        scores_BxKxGxTxS = jnp.where(mask_BxTxS[:, None, None], scores_BxKxGxTxS, _MASKED)
        probs_BxKxGxTxS = jax.nn.softmax(scores_BxKxGxTxS, axis=-1).astype(dt)
        out_BxTxKxGxH = jnp.einsum("bkgts,bksh->btkgh", probs_BxKxGxTxS, v_BxKxSxH.astype(dt))
        out_BxTxNxH = out_BxTxKxGxH.reshape(b, t, cfg.n_heads, cfg.head_size)
        out_BxTxD = matmul.dense(out_BxTxNxH, self.o[...], 2, dtype=dt)
        return out_BxTxD.astype(jnp.float32), new_kv


def _activation(name: str):
    return (lambda x: jax.nn.gelu(x, approximate=True)) if name == "gelu_tanh" else jax.nn.silu


class MLP(nnx.Module):
    """Gated feed-forward block: SwiGLU, or GeGLU with tanh-approximate GELU."""

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
        d, f, std = cfg.d_model, cfg.d_ff, cfg.init_std
        self.gate = _param(rngs, (d, f), ("embed", "mlp"), std)
        self.up = _param(rngs, (d, f), ("embed", "mlp"), std)
        self.down = _param(rngs, (f, d), ("mlp", "embed"), std)
        self.dtype = cfg.dtype
        self.activation = cfg.mlp_activation

    def __call__(self, x_BxTxD):
        dt = jnp.dtype(self.dtype)
        gate_BxTxF = matmul.dense(x_BxTxD, self.gate[...], dtype=dt)
        up_BxTxF = matmul.dense(x_BxTxD, self.up[...], dtype=dt)
        h_BxTxF = _activation(self.activation)(gate_BxTxF) * up_BxTxF
        return matmul.dense(h_BxTxF, self.down[...], dtype=dt).astype(jnp.float32)


class Block(nnx.Module):
    """One pre-norm decoder layer: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps, cfg.norm_plus_one)
        self.attn = Attention(cfg, rngs=rngs)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps, cfg.norm_plus_one)
        self.mlp = MLP(cfg, rngs=rngs)

    def __call__(self, x_BxTxD, positions_BxT, mask_BxTxS, kv=None):
        attn_BxTxD, new_kv = self.attn(self.attn_norm(x_BxTxD), positions_BxT, mask_BxTxS, kv)
        x_BxTxD = x_BxTxD + attn_BxTxD
        return x_BxTxD + self.mlp(self.mlp_norm(x_BxTxD)), new_kv


def _apply_block(graphdef, params, x_BxTxD, positions_BxT, mask_BxTxS, kv):
    return nnx.merge(graphdef, params)(x_BxTxD, positions_BxT, mask_BxTxS, kv)


def _remat_policy(remat: str):
    if remat == "full":
        return jax.checkpoint_policies.nothing_saveable
    # "dots": keep the weight matmuls' outputs, recompute attention scores and elementwise ops.
    return jax.checkpoint_policies.dots_with_no_batch_dims_saveable


def init_cache(cfg: TransformerConfig, batch: int, max_len: int) -> dict[str, Any]:
    """An empty KV cache with max_len slots: mask [B, S], index [], and k, v: one [B, K, S, H]
    array per layer (a tuple), or with scan_layers one [L, B, K, S, H] array."""
    if not 0 < max_len <= cfg.max_len:
        raise ValueError(f"init_cache: max_len must be in [1, cfg.max_len={cfg.max_len}], "
                         f"got {max_len}")
    shape = (batch, cfg.n_kv_heads, max_len, cfg.head_size)
    if cfg.scan_layers:
        k = v = jnp.zeros((cfg.n_layers,) + shape, cfg.dtype)
    else:
        k = v = tuple(jnp.zeros(shape, cfg.dtype) for _ in range(cfg.n_layers))
    return dict(k=k, v=v, mask=jnp.zeros((batch, max_len), jnp.bool_),
                index=jnp.zeros((), jnp.int32))


class Transformer(nnx.Module):
    """Token ids -> final hidden states (fp32); the unembedding is separate (see logprobs.py)."""

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
        self.config = cfg
        # Logical axis names stay metadata; align.mesh maps them to mesh axes, so no mesh is needed.
        with nnx.use_eager_sharding(False):
            self.embed = _param(rngs, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"),
                                cfg.init_std)
            if cfg.scan_layers:
                @nnx.split_rngs(splits=cfg.n_layers)
                @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
                def make_layers(rngs):
                    return Block(cfg, rngs=rngs)
                self.layers = make_layers(rngs)
            else:
                self.layers = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.n_layers)])
            self.final_norm = RMSNorm(cfg.d_model, cfg.norm_eps, cfg.norm_plus_one)
            if not cfg.tie_embeddings:
                self.unembed = _param(rngs, (cfg.d_model, cfg.vocab_size), ("embed", "vocab"),
                                      cfg.init_std)

    def __call__(self, tokens_BxT, *, input_mask_BxT=None, positions_BxT=None, cache=None):
        """Returns (hidden_BxTxD after the final norm, fp32; the updated cache or None)."""
        cfg = self.config
        tokens_BxT = jnp.asarray(tokens_BxT)
        if tokens_BxT.ndim != 2 or not jnp.issubdtype(tokens_BxT.dtype, jnp.integer):
            raise ValueError(f"Transformer: tokens must be an int [B, T] array, got "
                             f"{tokens_BxT.dtype}{list(tokens_BxT.shape)}")
        b, t = tokens_BxT.shape
        if input_mask_BxT is None:
            input_mask_BxT = jnp.ones((b, t), jnp.bool_)
        input_mask_BxT = jnp.asarray(input_mask_BxT).astype(jnp.bool_)
        if input_mask_BxT.shape != (b, t):
            raise ValueError(f"Transformer: input_mask shape {input_mask_BxT.shape} != tokens "
                             f"shape {(b, t)}")
        if positions_BxT is not None and jnp.shape(positions_BxT) != (b, t):
            raise ValueError(f"Transformer: positions shape {jnp.shape(positions_BxT)} != tokens "
                             f"shape {(b, t)}")

        if cache is None:
            if t > cfg.max_len:
                raise ValueError(f"Transformer: sequence length {t} exceeds max_len {cfg.max_len}")
            index, key_mask_BxS, seen_B = 0, input_mask_BxT, jnp.zeros((b,), jnp.int32)
            q_slot_T, k_slot_S = jnp.arange(t), jnp.arange(t)
        else:
            s = cache["mask"].shape[1]
            if cache["mask"].shape[0] != b or t > s:
                raise ValueError(f"Transformer: cache of batch {cache['mask'].shape[0]} and {s} "
                                 f"slots cannot take tokens of shape {(b, t)}")
            # The write index is traced, so overflowing the cache cannot be checked here; callers
            # size the cache (init_cache) for the prompt plus every decoding step.
            index = cache["index"]
            key_mask_BxS = jax.lax.dynamic_update_slice(cache["mask"], input_mask_BxT, (0, index))
            seen_B = jnp.sum(cache["mask"], axis=1, dtype=jnp.int32)
            q_slot_T, k_slot_S = index + jnp.arange(t), jnp.arange(s)
        if positions_BxT is None:
            # Left-padded rows count positions from their first real token.
            counts_BxT = jnp.cumsum(input_mask_BxT, axis=1, dtype=jnp.int32)
            positions_BxT = seen_B[:, None] + counts_BxT - 1
            positions_BxT = jnp.maximum(positions_BxT, 0)
        # A query always sees its own slot, so padded queries never have an empty softmax row.
        causal_TxS = k_slot_S[None, :] <= q_slot_T[:, None]
        own_TxS = k_slot_S[None, :] == q_slot_T[:, None]
        mask_BxTxS = causal_TxS[None] & (key_mask_BxS[:, None, :] | own_TxS[None])

        # jnp.take fills out-of-range ids with NaN: a bad token id surfaces as a NaN loss.
        # Gather rows from a table whole in its width (an FSDP all-gather), so the looked-up
        # activations come out split by batch, not by the table's fsdp-split width.
        table_VxD = mesh_lib.constrain(self.embed[...], ("vocab", None))
        x_BxTxD = mesh_lib.constrain(jnp.take(table_VxD, tokens_BxT, axis=0), _ACT_BxTxD)
        if cfg.embed_scale:
            # Gemma rounds sqrt(D) to the compute dtype first (bf16: sqrt(3072) -> 55.5).
            x_BxTxD = x_BxTxD * jnp.asarray(cfg.d_model ** 0.5, cfg.dtype).astype(x_BxTxD.dtype)
        x_BxTxD, new_k, new_v = self._layers(x_BxTxD, positions_BxT, mask_BxTxS, cache, index)
        hidden_BxTxD = self.final_norm(x_BxTxD)
        if cache is None:
            return hidden_BxTxD, None
        return hidden_BxTxD, dict(k=new_k, v=new_v, mask=key_mask_BxS, index=index + t)

    def _layers(self, x_BxTxD, positions_BxT, mask_BxTxS, cache, index):
        cfg = self.config
        apply_fn = _apply_block
        if cfg.remat != "none":
            apply_fn = jax.checkpoint(_apply_block, static_argnums=(0,),
                                      policy=_remat_policy(cfg.remat),
                                      prevent_cse=not cfg.scan_layers)
        if cfg.scan_layers:
            graphdef, params = nnx.split(self.layers)
            t = x_BxTxD.shape[1]

            def body(carry, layer):
                x, cache_k, cache_v = carry
                params_l, i = layer
                kv = None
                if cache is not None:
                    kv = (jax.lax.dynamic_index_in_dim(cache_k, i, 0, keepdims=False),
                          jax.lax.dynamic_index_in_dim(cache_v, i, 0, keepdims=False), index)
                x, new_kv = apply_fn(graphdef, params_l, x, positions_BxT, mask_BxTxS, kv)
                if new_kv is not None:
                    # Only this call's T slots go back into the stacked cache, in place.
                    new = [jax.lax.dynamic_slice_in_dim(c, index, t, axis=2)[None] for c in new_kv]
                    cache_k = jax.lax.dynamic_update_slice(cache_k, new[0], (i, 0, 0, index, 0))
                    cache_v = jax.lax.dynamic_update_slice(cache_v, new[1], (i, 0, 0, index, 0))
                return (mesh_lib.constrain(x, _ACT_BxTxD), cache_k, cache_v), None

            # The cache rides in the carry, not as per-layer inputs and outputs, which would
            # stack a fresh copy of the whole cache at every call.
            carry = (x_BxTxD, None, None) if cache is None else (x_BxTxD, cache["k"], cache["v"])
            (x_BxTxD, new_k, new_v), _ = jax.lax.scan(
                body, carry, (params, jnp.arange(cfg.n_layers, dtype=jnp.int32)))
            return x_BxTxD, new_k, new_v

        # Unrolled layers keep one cache array per layer: each is updated where it lies and read
        # whole by attention, with no slicing or stacking (copies) per decoding step.
        new_ks, new_vs = [], []
        for i, layer in enumerate(self.layers):
            kv = None if cache is None else (cache["k"][i], cache["v"][i], index)
            if cfg.remat == "none":
                x_BxTxD, new_kv = layer(x_BxTxD, positions_BxT, mask_BxTxS, kv)
            else:
                graphdef, params = nnx.split(layer)
                x_BxTxD, new_kv = apply_fn(graphdef, params, x_BxTxD, positions_BxT, mask_BxTxS, kv)
            x_BxTxD = mesh_lib.constrain(x_BxTxD, _ACT_BxTxD)
            if new_kv is not None:
                new_ks.append(new_kv[0])
                new_vs.append(new_kv[1])
        if cache is None:
            return x_BxTxD, None, None
        return x_BxTxD, tuple(new_ks), tuple(new_vs)

    def unembed_matrix(self) -> jax.Array:
        """The D x V output projection in fp32: the tied embedding transposed, or its own."""
        if self.config.tie_embeddings:
            return self.embed[...].T.astype(jnp.float32)
        return self.unembed[...].astype(jnp.float32)

    def logits(self, hidden_BxTxD):
        """Logits in fp32; the matmul runs in the compute dtype."""
        dt = jnp.dtype(self.config.dtype)
        return matmul.dense(hidden_BxTxD, self.unembed_matrix(), dtype=dt,
                            preferred_element_type=jnp.float32)
