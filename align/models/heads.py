"""Scalar heads on a transformer backbone: reward models, value functions, a policy with a value.

Dimension letters: B batch, T tokens, D model width.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from align import logprobs
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


CRITICS = ("head", "separate")


class PolicyWithValue(nnx.Module):
    """A policy Transformer with a value function: a head on its trunk, or a separate critic.

    Used as a Transformer (sampling, log-probs, KL) through `__call__`, `unembed_matrix`,
    `logits` and `config`, which all belong to the policy. critic="head" puts a ScalarHead
    on the policy's last hidden states (one forward pass gives both, and the value loss also
    trains the trunk); critic="separate" is a ScalarModel of the same shape with its own trunk.
    Values start at 0: the head's weights start at 0.
    """

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs, critic: str = "head"):
        if critic not in CRITICS:
            raise ValueError(f"PolicyWithValue: critic must be one of {CRITICS}, got {critic!r}")
        self.policy = Transformer(cfg, rngs=rngs)
        if critic == "head":
            self.value_head = ScalarHead(cfg.d_model, rngs=rngs, init_std=0.0)
        else:
            self.critic = ScalarModel(cfg, rngs=rngs, head_init_std=0.0)

    @property
    def config(self) -> TransformerConfig:
        return self.policy.config

    def __call__(self, tokens_BxT, **kwargs):
        return self.policy(tokens_BxT, **kwargs)

    def unembed_matrix(self):
        return self.policy.unembed_matrix()

    def logits(self, hidden_BxTxD):
        return self.policy.logits(hidden_BxTxD)

    def logprobs_and_values(self, tokens_BxT, input_mask_BxT, *, chunk_size: int = 0):
        """(logp_BxT, values_BxT), both aligned with tokens: column t holds log p(token t | <t)
        and V(<t), the value of the state that emits token t; column 0 holds 0."""
        hidden_BxTxD, _ = self.policy(tokens_BxT, input_mask_BxT=input_mask_BxT)
        logp_BxT1 = logprobs.token_logprobs(hidden_BxTxD[:, :-1], self.policy.unembed_matrix(),
                                            tokens_BxT[:, 1:], chunk_size=chunk_size,
                                            dtype=self.config.dtype)
        if hasattr(self, "value_head"):
            values_BxT = self.value_head(hidden_BxTxD)
        else:
            values_BxT = self.critic(tokens_BxT, input_mask_BxT=input_mask_BxT)
        shift = lambda x_BxT: jnp.pad(x_BxT[:, :-1], [(0, 0), (1, 0)])
        return jnp.pad(logp_BxT1, [(0, 0), (1, 0)]), shift(values_BxT)
