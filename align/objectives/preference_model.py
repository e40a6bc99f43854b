"""Pairwise preference model P(y ≻ y' | x) trained on preference pairs by maximum likelihood.

Dimension letters: B batch (pairs), T tokens, M preference-embedding width.

The trained module is an align.models.preference.PreferenceModel, whose logit is antisymmetric
and can be intransitive; online objectives (Nash-MD, online IPO) score samples with it.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from align import errors
from align.models import specs
from align.objectives import base
from align.settings import Settings, setting
from align.objectives.reward_model import check_pairs, gold_agreement


def preference_loss(logit_B):
    """−log P(y_w ≻ y_l) = −log σ(logit) (preference model of Munos et al., arXiv 2312.00886)."""
    return -jax.nn.log_sigmoid(logit_B)


def preference_prob(model, tokens_a_BxT, mask_a_BxT, tokens_b_BxT, mask_b_BxT):
    """P(a ≻ b) per row in fp32."""
    return jax.nn.sigmoid(model(tokens_a_BxT, mask_a_BxT, tokens_b_BxT, mask_b_BxT))


def _loss(model, batch, obj_state, *, rng, pref_dim):
    del obj_state, rng
    check_pairs(batch, "preference_model")
    if getattr(model, "pref_dim", pref_dim) != pref_dim:
        raise ValueError(f"preference_model: objective.pref_dim is {pref_dim} but the model's "
                         f"preference embedding has width {model.pref_dim}")
    logit_B = model(batch["chosen_tokens"], batch["chosen_input_mask"],
                    batch["rejected_tokens"], batch["rejected_input_mask"])
    loss_B = preference_loss(logit_B)
    n = jnp.asarray(logit_B.shape[0], jnp.float32)
    metrics = {
        "accuracy": base.ratio(jnp.sum(logit_B > 0), n),
        "prob_chosen": base.ratio(jnp.sum(jax.nn.sigmoid(logit_B)), n),
    }
    if "chosen_gold" in batch:
        metrics["gold_agreement"] = gold_agreement(logit_B, batch)
    return base.LossOut(jnp.sum(loss_B), n, metrics)


@dataclasses.dataclass(frozen=True)
class PreferenceModelSettings(Settings):
    # Width M of the embedding e(y) in the skew-symmetric term; even (see PreferenceModel).
    pref_dim: int = setting(8, ge=2)

    def __post_init__(self):
        super().__post_init__()
        if self.pref_dim % 2:
            raise errors.ConfigError(f"objective.pref_dim must be a positive even int, got {self.pref_dim}")


def make(cfg, *, chunk_size: int = 0) -> base.Objective:
    """The pairwise preference model as an Objective; pref_dim sizes the model it trains."""
    del chunk_size  # the heads have no vocabulary to chunk
    pref_dim = PreferenceModelSettings.of(cfg).pref_dim
    return base.make("preference_model", "pairs",
                     loss=functools.partial(_loss, pref_dim=pref_dim),
                     model=specs.preference_model(pref_dim))


SETTINGS = {"preference_model": PreferenceModelSettings}

OBJECTIVES = {"preference_model": make}
