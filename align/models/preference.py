"""A pairwise preference model P(y ≻ y' | x) that can represent intransitive preferences.

Dimension letters: B batch, T tokens, D model width, M preference-embedding width.

Architecture: a Transformer backbone encodes each (x, y) once. At the last real token its
final hidden state h ∈ R^D gives a scalar u(y) = w·h + b (the ScalarHead of a reward model)
and an embedding e(y) = E h ∈ R^M. A pair is scored by

    logit(y, y') = u(y) − u(y') + e(y)ᵀ (A − Aᵀ) e(y'),    P(y ≻ y') = σ(logit(y, y')).

A − Aᵀ is antisymmetric, so logit(y', y) = −logit(y, y'): P(y ≻ y') + P(y' ≻ y) = 1 and
P(y ≻ y) = 1/2. The u term alone is a Bradley–Terry reward (transitive); the skew term adds
the rotational part of a general preference, e.g. a ≻ b ≻ c ≻ a, which no reward can express.
A real antisymmetric matrix has even rank (eigenvalues ±iλ in pairs): an odd M would waste a
direction, so M must be even.

Attribute names match ScalarModel (`backbone`, `head`), so an SFT backbone or a trained reward
model loads directly; A starts at zero, so such a model starts as exactly that reward model.
Parameters carry logical axis names; M is the new logical axis "pref" (meant to be replicated).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from align.models.heads import ScalarHead
from align.models.transformer import Transformer, TransformerConfig


def last_token_hidden(hidden_BxTxD, mask_BxT):
    """The hidden state at each row's last masked-in token (zeros for an empty mask)."""
    mask_BxT = jnp.asarray(mask_BxT) > 0
    t = mask_BxT.shape[1]
    last_B = t - 1 - jnp.argmax(mask_BxT[:, ::-1], axis=1)
    hidden_BxD = jnp.take_along_axis(hidden_BxTxD.astype(jnp.float32), last_B[:, None, None],
                                     axis=1)[:, 0]
    return jnp.where(jnp.any(mask_BxT, axis=1)[:, None], hidden_BxD, 0.0)


class PreferenceModel(nnx.Module):
    """A Transformer backbone with a reward head u and a skew-symmetric pairwise term."""

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs, pref_dim: int = 8,
                 head_init_std: float | None = None):
        if isinstance(pref_dim, bool) or not isinstance(pref_dim, int) or pref_dim <= 0 \
                or pref_dim % 2:
            raise ValueError(f"PreferenceModel: pref_dim must be a positive even int, got "
                             f"{pref_dim!r}")
        std = cfg.init_std if head_init_std is None else head_init_std
        self.backbone = Transformer(cfg, rngs=rngs)
        self.head = ScalarHead(cfg.d_model, rngs=rngs, init_std=std)
        with nnx.use_eager_sharding(False):
            proj_DxM = std * jax.random.normal(rngs.params(), (cfg.d_model, pref_dim), jnp.float32)
            self.pref_proj = nnx.Param(proj_DxM, out_sharding=("embed", "pref"))
            self.pref_skew = nnx.Param(jnp.zeros((pref_dim, pref_dim), jnp.float32),
                                       out_sharding=("pref", "pref"))

    @property
    def config(self) -> TransformerConfig:
        return self.backbone.config

    @property
    def pref_dim(self) -> int:
        return self.pref_proj.shape[1]

    def embed(self, tokens_BxT, *, input_mask_BxT):
        """(u_B, e_BxM) in fp32 from the last real token of each row."""
        hidden_BxTxD, _ = self.backbone(tokens_BxT, input_mask_BxT=input_mask_BxT)
        hidden_BxD = last_token_hidden(hidden_BxTxD, input_mask_BxT)
        u_B = self.head(hidden_BxD[:, None, :])[:, 0]
        e_BxM = hidden_BxD @ self.pref_proj[...]
        return u_B, e_BxM

    def logit(self, u_a_B, e_a_BxM, u_b_B, e_b_BxM):
        """logit P(a ≻ b) = u_a − u_b + e_aᵀ (A − Aᵀ) e_b."""
        skew_MxM = self.pref_skew[...]
        ab_B = jnp.einsum("bm,mn,bn->b", e_a_BxM, skew_MxM, e_b_BxM)
        ba_B = jnp.einsum("bm,mn,bn->b", e_b_BxM, skew_MxM, e_a_BxM)
        # e_aᵀAe_b − e_bᵀAe_a equals e_aᵀ(A − Aᵀ)e_b, and written as a difference of the same
        # two terms it is antisymmetric bit for bit: swapping a and b only flips signs.
        return (u_a_B - u_b_B) + (ab_B - ba_B)

    def __call__(self, tokens_a_BxT, mask_a_BxT, tokens_b_BxT, mask_b_BxT):
        """logit P(a ≻ b) per row, with one backbone pass over [a; b]."""
        if jnp.shape(tokens_a_BxT) != jnp.shape(tokens_b_BxT):
            raise ValueError(f"PreferenceModel: tokens a {jnp.shape(tokens_a_BxT)} and b "
                             f"{jnp.shape(tokens_b_BxT)} must have the same shape")
        b = jnp.shape(tokens_a_BxT)[0]
        u_2B, e_2BxM = self.embed(
            jnp.concatenate([tokens_a_BxT, tokens_b_BxT], axis=0),
            input_mask_BxT=jnp.concatenate([mask_a_BxT, mask_b_BxT], axis=0))
        return self.logit(u_2B[:b], e_2BxM[:b], u_2B[b:], e_2BxM[b:])
