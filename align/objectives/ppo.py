"""PPO for RLHF: a policy with a value function trained on its own reward-scored samples.

Dimension letters: M completions in the rollout, L tokens (prompt + completion).

The online loop samples one completion per prompt from the policy, scores it with a reward
(online.scorer: the world's gold reward or a trained reward model) and hands this objective a
rollout {tokens, input_mask, loss_mask [M, L], score, finished [M]}. `prepare` runs once per
rollout, before any update and with the parameters that sampled it: old log-probs, old values
and the reference's log-probs, per-token rewards (the score at one token, −kl_coef·KL on every
completion token), GAE advantages and returns. `loss` is the clipped surrogate plus vf_coef
times the clipped value loss, on minibatches for several epochs. The maths is ppo_math.py;
its module docstring lists where TRL, OpenRLHF and verl differ and which option gives each.

Every array here is aligned with tokens: column t holds log π(token t | <t) and V(<t), and
loss_mask selects the completion tokens (eos included), so [M, L] arrays play the role of
ppo_math's [B, N] ones with masked prompt columns in front.

Both loss terms are divided by the number of completion tokens in the minibatch (a global
count, so sharding and accumulation do not change it). With score_position="after_eos" the
value loss spans one more column per row, which TRL divides by its own larger count; ours
then weighs (n + 1)/n as much for a completion of n tokens. Entropy is reported by the
sampler, not here; there is no entropy bonus (neither TRL nor OpenRLHF use one by default).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from align import logprobs
from align import settings as settings_lib
from align.models import specs
from align.objectives import base, ppo_math
from align.settings import Settings, setting

ROLLOUT_FIELDS = ("tokens", "input_mask", "loss_mask", "score")
PREPARED = ("old_logp", "old_values", "advantages", "returns", "value_mask")


def check_rollout(batch, name: str) -> None:
    """A reward-scored rollout: tokens, masks [M, L] and score [M]."""
    missing = [k for k in ROLLOUT_FIELDS if k not in batch]
    if missing:
        raise ValueError(f"objective {name!r} reads a reward-scored rollout; missing {missing}, "
                         f"fields present: {sorted(batch)}")
    m, length = batch["tokens"].shape
    for k in ("input_mask", "loss_mask"):
        if batch[k].shape != (m, length):
            raise ValueError(f"objective {name!r}: {k} shape {batch[k].shape} != tokens shape "
                             f"{(m, length)}")
    if batch["score"].shape != (m,):
        raise ValueError(f"objective {name!r}: score shape {batch['score'].shape} != ({m},)")


def scores(batch, missing_eos_penalty: float):
    """The scorer's reward per completion, less a penalty for those cut before eos."""
    score_M = batch["score"].astype(jnp.float32)
    if missing_eos_penalty and "finished" in batch:
        score_M = score_M - missing_eos_penalty * (1.0 - batch["finished"].astype(jnp.float32))
    return score_M


def reference_logprobs(reference, batch, *, name: str, chunk_size: int):
    """ref_logp [M, L]: the reference's token log-probs of the rollout (no gradient)."""
    check_rollout(batch, name)
    return {"ref_logp": jax.lax.stop_gradient(logprobs.shifted_logprobs(
        reference, batch["tokens"], batch["input_mask"], chunk_size=chunk_size))}


def _row_sum(x_MxL, mask_MxL):
    return jnp.sum(jnp.where(mask_MxL > 0, x_MxL * mask_MxL, 0.0), axis=-1)


def _prepare(policy, batch, obj_state, *, rng, s, chunk_size):
    """Old log-probs and values, token rewards, advantages and returns (no gradient)."""
    del rng
    check_rollout(batch, "ppo")
    logp_MxL, values_MxL = policy.logprobs_and_values(
        batch["tokens"], batch["input_mask"], chunk_size=chunk_size)
    logp_MxL, values_MxL = jax.lax.stop_gradient((logp_MxL, values_MxL))
    ref_MxL = jax.lax.stop_gradient(batch["ref_logp"].astype(jnp.float32))
    mask_MxL = batch["loss_mask"].astype(jnp.float32)
    score_M = scores(batch, s["missing_eos_penalty"])
    kl_coef = obj_state["kl_coef"]
    kl_MxL = ppo_math.kl_penalty(logp_MxL, ref_MxL, kind=s["kl_kind"])
    rewards_MxL = ppo_math.token_rewards(score_M, kl_MxL, mask_MxL, kl_coef=kl_coef,
                                         score_position=s["score_position"])
    vmask_MxL = ppo_math.value_mask(mask_MxL, score_position=s["score_position"])
    if s["whiten_rewards"]:
        rewards_MxL = ppo_math.whiten(rewards_MxL, vmask_MxL, shift_mean=False)
    adv_MxL, returns_MxL = ppo_math.gae(rewards_MxL, values_MxL, vmask_MxL, gamma=s["gamma"],
                                        lam=s["lam"])
    if s["whiten_advantages"]:
        adv_MxL = ppo_math.whiten(adv_MxL, mask_MxL, unbiased=s["whiten_unbiased"])
    count_M = jnp.maximum(jnp.sum(vmask_MxL, -1), 1.0)
    prepared = dict(batch, old_logp=logp_MxL, old_values=values_MxL, advantages=adv_MxL,
                    returns=returns_MxL, value_mask=vmask_MxL)
    stats = {"score": jnp.mean(score_M),
             "kl": jnp.mean(_row_sum(logp_MxL - ref_MxL, mask_MxL)),
             "kl_penalty": jnp.mean(-kl_coef * _row_sum(kl_MxL, mask_MxL)),
             "kl_coef": jnp.asarray(kl_coef, jnp.float32),
             "value": jnp.mean(_row_sum(values_MxL, vmask_MxL) / count_M)}
    return prepared, stats


def _loss(model, batch, obj_state, *, rng, s, chunk_size):
    del obj_state, rng
    check_rollout(batch, "ppo")
    logp_MxL, values_MxL = model.logprobs_and_values(batch["tokens"], batch["input_mask"],
                                                     chunk_size=chunk_size)
    mask_MxL = batch["loss_mask"].astype(jnp.float32)
    pg_sum, count, pg = ppo_math.policy_loss(logp_MxL, batch["old_logp"], batch["advantages"],
                                             mask_MxL, clip_eps=s["clip_eps"])
    vf_sum, v_count, vf = ppo_math.value_loss(values_MxL, batch["old_values"], batch["returns"],
                                              batch["value_mask"],
                                              clip_range=s["value_clip"] or None)
    vmask_MxL = batch["value_mask"]
    metrics = {
        "policy_loss": base.ratio(pg_sum, count),
        "value_loss": base.ratio(vf_sum, v_count),
        "clip_fraction": pg["clip_fraction"],
        "approx_kl": pg["approx_kl"],
        "ratio": pg["ratio"],
        "value_clip_fraction": vf["clip_fraction"],
        "value": base.ratio(jnp.sum(jax.lax.stop_gradient(values_MxL) * vmask_MxL), v_count),
        "return": base.ratio(jnp.sum(batch["returns"] * vmask_MxL), v_count),
    }
    return base.LossOut(pg_sum + s["vf_coef"] * vf_sum, count, metrics)


def _update_state(obj_state, stats, *, s):
    """Once per rollout: the adaptive KL controller (Ziegler et al.) when kl_target > 0."""
    if not s["kl_target"]:
        return obj_state
    coef = ppo_math.adaptive_kl_update(
        ppo_math.AdaptiveKL(obj_state["kl_coef"]), stats["kl"], stats["rows"],
        target=s["kl_target"], horizon=s["kl_horizon"]).coef
    return {**obj_state, "kl_coef": coef}


@dataclasses.dataclass(frozen=True)
class PpoSettings(Settings):
    # "head": a value head on the policy trunk; "separate": its own trunk.
    critic: str = setting("head", choices=("head", "separate"))
    gamma: float = setting(1.0, ge=0, le=1)
    lam: float = setting(0.95, ge=0, le=1)
    clip_eps: float = setting(0.2, ge=0)
    value_clip: float = setting(0.2, ge=0)  # 0 = an unclipped value loss
    vf_coef: float = setting(0.1, ge=0)
    score_position: str = setting("last", choices=ppo_math.SCORE_POSITIONS)  # "after_eos": TRL
    whiten_advantages: bool = setting(True)
    whiten_unbiased: bool = setting(False)
    whiten_rewards: bool = setting(False)
    kl_kind: str = setting("k1", choices=ppo_math.KL_KINDS)
    kl_coef: float = setting(0.2, ge=0)
    kl_target: float = setting(6.0, ge=0)  # nats per completion; 0 = a fixed kl_coef
    kl_horizon: int = setting(10000, ge=1)
    # Subtracted from the score of a completion cut before eos.
    missing_eos_penalty: float = setting(0.0, ge=0)


DEFAULTS = settings_lib.schema(PpoSettings)


def make_ppo(cfg, *, chunk_size: int = 0) -> base.Objective:
    """PPO with GAE, clipped policy and value losses and a fixed or adaptive KL penalty.

    Defaults follow the papers (Stiennon et al. / Ziegler et al.; docs/formulas.md): γ 1, λ 0.95,
    ε 0.2, value clip 0.2, score at the last completion token, k1 KL, adaptive coefficient
    0.2 → 6 nats.
    TRL: score_position="after_eos", whiten_unbiased=True, kl_coef=0.05, kl_target=0.
    OpenRLHF / verl: lam=1, value_clip=0.5, critic="separate", kl_coef=0.01 (verl 0.001),
    kl_target=0.
    """
    s = dataclasses.asdict(PpoSettings.of(cfg))
    init_coef = float(s["kl_coef"])
    return base.make(
        "ppo", "prompts",
        init=lambda: {"kl_coef": jnp.asarray(init_coef, jnp.float32)},
        prepare=functools.partial(_prepare, s=s, chunk_size=chunk_size),
        reference_fields=functools.partial(reference_logprobs, name="ppo", chunk_size=chunk_size),
        loss=functools.partial(_loss, s=s, chunk_size=chunk_size),
        update_state=functools.partial(_update_state, s=s),
        model=specs.policy_with_value(s["critic"]),
        online=base.OnlineSpec(samples=1, score="reward"))


SETTINGS = {"ppo": PpoSettings}

OBJECTIVES = {"ppo": make_ppo}
