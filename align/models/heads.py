"""Scalar heads on a transformer backbone: reward models and value functions.

Dimension letters: B batch, T tokens, D model width.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from align.models.transformer import Transformer, TransformerConfig


class ScalarHead(nnx.Module):
    """hidden_BxTxD -> one fp32 scalar per token (a linear map plus bias)."""

    def __init__(self, d_model: int, *, rngs: nnx.Rngs, init_std: float = 0.02):
        with nnx.use_eager_sharding(False):
            kernel_D = init_std * jax.random.normal(rngs.params(), (d_model,), jnp.float32)
            self.kernel = nnx.Param(kernel_D, out_sharding=("embed",))
            # A 0-d parameter: its tuple of logical names is empty (one name per dimension).
            self.bias = nnx.Param(jnp.zeros((), jnp.float32), out_sharding=())

    def __call__(self, hidden_BxTxD):
        # fp32 throughout: a scalar head is cheap and reward differences are small.
        values_BxT = jnp.einsum("btd,d->bt", hidden_BxTxD.astype(jnp.float32), self.kernel[...])
        return values_BxT + self.bias[...]


class ScalarModel(nnx.Module):
    """A Transformer backbone with a ScalarHead: tokens -> values_BxT (a reward or value)."""

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs,
                 head_init_std: float | None = None):
        self.backbone = Transformer(cfg, rngs=rngs)
        self.head = ScalarHead(cfg.d_model, rngs=rngs,
                               init_std=cfg.init_std if head_init_std is None else head_init_std)

    @property
    def config(self) -> TransformerConfig:
        return self.backbone.config

    def __call__(self, tokens_BxT, *, input_mask_BxT=None, positions_BxT=None):
        """Values for every token in fp32 (a sequence's reward: see last_token_value)."""
        hidden_BxTxD, _ = self.backbone(tokens_BxT, input_mask_BxT=input_mask_BxT,
                                        positions_BxT=positions_BxT)
        return self.head(hidden_BxTxD)


def last_token_value(values_BxT, mask_BxT):
    """The value at each row's last masked-in token (0 for an empty mask): a sequence's reward."""
    mask_BxT = jnp.asarray(mask_BxT) > 0
    t = mask_BxT.shape[1]
    last_B = t - 1 - jnp.argmax(mask_BxT[:, ::-1], axis=1)
    value_B = jnp.take_along_axis(values_BxT.astype(jnp.float32), last_B[:, None], axis=1)[:, 0]
    return jnp.where(jnp.any(mask_BxT, axis=1), value_B, 0.0)
