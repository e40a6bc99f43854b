"""Critic-free policy gradients with group baselines: RLOO and GRPO.

Dimension letters: M completions in the rollout (G prompts × S samples, prompt-major),
L tokens (prompt + completion).

The online loop samples S completions of each prompt from the policy and scores each with a
reward; the rollout is shaped like PPO's (ppo.py). `prepare` (once per rollout) adds the
sampling policy's and the reference's token log-probs and a per-sequence advantage from the
group's baseline; `loss` is the clipped surrogate of ppo_math on minibatches, which with one
epoch and one minibatch is plain REINFORCE (the ratio is 1).

- RLOO (Ahmadian et al., arXiv 2402.14740): R = score − kl_coef·Σ_t (ℓ_t − ℓ^ref_t), the KL
  in the reward; A = R − mean of the other S − 1 rewards; each sequence's summed log-prob is
  weighted by A and the loss is averaged over sequences.
- GRPO (Shao et al., arXiv 2402.03300): A = (score − mean_g)/(std_g + ε) with no KL in the
  reward; the KL enters the loss as kl_coef·k3 per token; each sequence's tokens are averaged
  (1/|y| Σ_t) before the mean over sequences.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from align import errors
from align import logprobs
from align.objectives import base, online_math, ppo, ppo_math
from align.settings import Settings, setting


@dataclasses.dataclass(frozen=True)
class RlooSettings(Settings):
    # TRL's RLOOTrainer: k = 4 samples, KL coefficient 0.05.
    samples: int = setting(4, ge=1)  # >= 2 is checked in make, where the reason can be said
    kl_coef: float = setting(0.05, ge=0)
    clip_eps: float = setting(0.2, ge=0)
    missing_eos_penalty: float = setting(0.0)


@dataclasses.dataclass(frozen=True)
class GrpoSettings(RlooSettings):
    # GRPO's paper: β = 0.04, ε = 0.2.
    kl_coef: float = setting(0.04, ge=0)



def _prepare(policy, batch, obj_state, *, rng, name, samples, kl_coef, missing_eos_penalty,
             chunk_size, eps=1e-4):
    """Old token log-probs and the group-baseline advantage per sequence."""
    del obj_state, rng
    ppo.check_rollout(batch, name)
    m = batch["tokens"].shape[0]
    if m % samples:
        raise ValueError(f"objective {name!r}: {m} rollout rows are not groups of {samples}")
    old_MxL = jax.lax.stop_gradient(logprobs.shifted_logprobs(
        policy, batch["tokens"], batch["input_mask"], chunk_size=chunk_size))
    ref_MxL = jax.lax.stop_gradient(batch["ref_logp"].astype(jnp.float32))
    mask_MxL = batch["loss_mask"].astype(jnp.float32)
    score_M = ppo.scores(batch, missing_eos_penalty)
    kl_M = jnp.sum(jnp.where(mask_MxL > 0, old_MxL - ref_MxL, 0.0), -1)
    if name == "rloo":
        reward_M = score_M - kl_coef * kl_M
        adv_M = online_math.rloo_advantages(reward_M.reshape(-1, samples)).reshape(-1)
    else:
        reward_M = score_M
        adv_M = online_math.grpo_advantages(score_M.reshape(-1, samples), eps=eps).reshape(-1)
    stats = {"score": jnp.mean(score_M), "kl": jnp.mean(kl_M), "reward": jnp.mean(reward_M),
             "advantage_abs": jnp.mean(jnp.abs(adv_M))}
    return dict(batch, old_logp=old_MxL, advantages=adv_M), stats


def _loss(model, batch, obj_state, *, rng, name, kl_coef, clip_eps, chunk_size):
    del obj_state, rng
    ppo.check_rollout(batch, name)
    logp_MxL = logprobs.shifted_logprobs(model, batch["tokens"], batch["input_mask"],
                                         chunk_size=chunk_size)
    mask_MxL = batch["loss_mask"].astype(jnp.float32)
    if name == "grpo":
        # 1/|y| per token: each sequence's weights sum to 1 (0 for an empty completion).
        mask_MxL = mask_MxL / jnp.maximum(jnp.sum(mask_MxL, -1, keepdims=True), 1.0)
    adv_MxL = jnp.broadcast_to(batch["advantages"][:, None], mask_MxL.shape)
    pg_sum, _, pg = ppo_math.policy_loss(logp_MxL, batch["old_logp"], adv_MxL, mask_MxL,
                                         clip_eps=clip_eps)
    m = jnp.asarray(mask_MxL.shape[0], jnp.float32)
    loss_sum = pg_sum
    metrics = {"policy_loss": base.ratio(pg_sum, m), "clip_fraction": pg["clip_fraction"],
               "approx_kl": pg["approx_kl"], "ratio": pg["ratio"]}
    if name == "grpo":
        k3_MxL = online_math.k3_kl(logp_MxL, batch["ref_logp"])
        kl_sum = jnp.sum(jnp.where(mask_MxL > 0, mask_MxL * k3_MxL, 0.0))
        loss_sum = loss_sum + kl_coef * kl_sum
        metrics["k3_kl"] = base.ratio(jax.lax.stop_gradient(kl_sum), m)
    return base.LossOut(loss_sum, m, metrics)


def _make(name, cfg, *, chunk_size: int = 0) -> base.Objective:
    cfg = SETTINGS[name].of(cfg)
    samples, kl_coef = cfg.samples, cfg.kl_coef
    if samples < 2:
        raise errors.ConfigError(f"objective.samples must be >= 2 (a group baseline needs other "
                         f"samples), got {samples}")
    if kl_coef < 0 or cfg.clip_eps < 0:
        raise errors.ConfigError("objective.kl_coef and objective.clip_eps must be >= 0")
    return base.make(
        name, "prompts",
        prepare=functools.partial(_prepare, name=name, samples=samples, kl_coef=kl_coef,
                                  missing_eos_penalty=float(cfg.missing_eos_penalty),
                                  chunk_size=chunk_size),
        reference_fields=functools.partial(ppo.reference_logprobs, name=name,
                                           chunk_size=chunk_size),
        loss=functools.partial(_loss, name=name, kl_coef=kl_coef, clip_eps=float(cfg.clip_eps),
                               chunk_size=chunk_size),
        online=base.OnlineSpec(samples=samples, score="reward"))


SETTINGS = {"rloo": RlooSettings, "grpo": GrpoSettings}

OBJECTIVES = {"rloo": functools.partial(_make, "rloo"), "grpo": functools.partial(_make, "grpo")}
