"""Bradley–Terry reward model on preference pairs, and the reward offset that centres it.

Dimension letters: B batch (pairs), N sequences, T tokens.

The trained module is a ScalarModel; a response's reward is its value at the last real
token (from input_mask). Stiennon et al. (arXiv 2009.01325) shift the trained reward so
reference completions score 0 on average: `reward_offset` computes that shift.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from align import errors
from align.models import specs
from align.models.heads import last_token_value
from align.objectives import base
from align.settings import Settings, setting


@dataclasses.dataclass(frozen=True)
class RewardModelSettings(Settings):
    # Weight of (r_w + r_l)² added to each pair's loss; 0 leaves the BT loss alone.
    center_coef: float = setting(0.0, ge=0)

PAIR_KEYS = ("chosen_tokens", "chosen_input_mask", "rejected_tokens", "rejected_input_mask")


def bt_loss(reward_chosen_B, reward_rejected_B):
    """−log σ(r_w − r_l): Bradley–Terry reward-model loss (Stiennon et al., arXiv 2009.01325)."""
    return -jax.nn.log_sigmoid(reward_chosen_B - reward_rejected_B)


def center_penalty(reward_chosen_B, reward_rejected_B):
    """(r_w + r_l)²: keeps rewards near 0 (centring term, Eisenstein et al., arXiv 2312.09244)."""
    return jnp.square(reward_chosen_B + reward_rejected_B)


def check_pairs(batch: Mapping, where: str) -> None:
    """A clear error when a pairs batch lacks a field or has only one side's gold."""
    missing = [k for k in PAIR_KEYS if k not in batch]
    if missing:
        raise ValueError(f"{where}: batch lacks {missing} (it reads 'pairs' batches; fields "
                         f"present: {sorted(batch)})")
    golds = [k in batch for k in ("chosen_gold", "rejected_gold")]
    if any(golds) and not all(golds):
        raise ValueError(f"{where}: batch has only one of 'chosen_gold' / 'rejected_gold'; "
                         "gold agreement needs both")


def gold_agreement(pred_margin_B, batch: Mapping):
    """(#pairs whose predicted order matches the gold order, #pairs with distinct golds)."""
    gold_margin_B = (jnp.asarray(batch["chosen_gold"], jnp.float32)
                     - jnp.asarray(batch["rejected_gold"], jnp.float32))
    # Gold ties have no order to agree with, so they leave the denominator.
    ranked_B = (gold_margin_B != 0).astype(jnp.float32)
    agree_B = ((pred_margin_B > 0) == (gold_margin_B > 0)).astype(jnp.float32)
    return base.ratio(jnp.sum(agree_B * ranked_B), jnp.sum(ranked_B))


def reward_scores(model, tokens_NxT, input_mask_NxT):
    """Raw reward r(x, y) per sequence: the ScalarModel's value at the last real token."""
    values_NxT = model(tokens_NxT, input_mask_BxT=input_mask_NxT)
    if not hasattr(values_NxT, "shape") or values_NxT.shape != jnp.shape(tokens_NxT):
        raise ValueError("reward_scores: the model must return one value per token [N, T] "
                         "(a ScalarModel), got "
                         f"{getattr(values_NxT, 'shape', type(values_NxT).__name__)}")
    return last_token_value(values_NxT, input_mask_NxT)


def reward_offset(score_fn: Callable, batches: Iterable[Mapping]) -> float:
    """Mean raw reward over sft-style batches; subtract it so those completions score 0 on average.

    score_fn(tokens_NxT, input_mask_NxT) -> rewards_N, e.g. a jitted partial of reward_scores.
    """
    total, count = 0.0, 0
    for i, batch in enumerate(batches):
        for key in ("tokens", "input_mask"):
            if key not in batch:
                raise ValueError(f"reward_offset: batch {i} lacks {key!r} (fields present: "
                                 f"{sorted(batch)})")
        rewards_N = np.asarray(score_fn(batch["tokens"], batch["input_mask"]), np.float64)
        total += float(rewards_N.sum())
        count += rewards_N.size
    if count == 0:
        raise ValueError("reward_offset: no sequences in the batches given")
    return total / count


def _loss(model, batch, obj_state, *, rng, center_coef):
    del obj_state, rng
    check_pairs(batch, "reward_model")
    b = batch["chosen_tokens"].shape[0]
    tokens_2BxT = jnp.concatenate([batch["chosen_tokens"], batch["rejected_tokens"]], axis=0)
    mask_2BxT = jnp.concatenate([batch["chosen_input_mask"], batch["rejected_input_mask"]],
                                axis=0)
    rewards_2B = reward_scores(model, tokens_2BxT, mask_2BxT)
    chosen_B, rejected_B = rewards_2B[:b], rewards_2B[b:]
    loss_B = bt_loss(chosen_B, rejected_B)
    if center_coef:
        loss_B = loss_B + center_coef * center_penalty(chosen_B, rejected_B)
    n = jnp.asarray(b, jnp.float32)
    margin_B = chosen_B - rejected_B
    metrics = {
        "accuracy": base.ratio(jnp.sum(margin_B > 0), n),
        "margin": base.ratio(jnp.sum(margin_B), n),
        "reward_chosen": base.ratio(jnp.sum(chosen_B), n),
        "reward_rejected": base.ratio(jnp.sum(rejected_B), n),
    }
    if "chosen_gold" in batch:
        metrics["gold_agreement"] = gold_agreement(margin_B, batch)
    return base.LossOut(jnp.sum(loss_B), n, metrics)


OFFSET_ARTIFACT = "reward_offset"  # WORKDIR/reward_offset.json: {"offset": float}


def _offset_artifact(apply) -> dict:
    """Stiennon et al.: the shift that makes the training demonstrations score 0 on average."""
    scores = [np.asarray(out, np.float64) for _, out in apply(
        lambda model, b: reward_scores(model, b["tokens"], b["input_mask"]),
        kind="sft", split="train")]
    if not scores:
        raise errors.DataError("reward offset: the sft train split gave no batch of demonstrations")
    return {OFFSET_ARTIFACT: {"offset": float(np.concatenate(scores).mean())}}


def make(cfg, *, chunk_size: int = 0) -> base.Objective:
    """The Bradley–Terry reward model as an Objective (arXiv 2009.01325)."""
    del chunk_size  # a scalar head has no vocabulary to chunk
    center_coef = RewardModelSettings.of(cfg).center_coef
    return base.make("reward_model", "pairs",
                     loss=functools.partial(_loss, center_coef=center_coef),
                     model=specs.scalar_model(), artifacts=_offset_artifact)


SETTINGS = {"reward_model": RewardModelSettings}

OBJECTIVES = {"reward_model": make}
