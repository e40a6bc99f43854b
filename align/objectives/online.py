"""Online preference objectives: online DPO, online IPO, online SLiC, IPO-MD(β) and Nash-MD-PG.

Dimension letters: M pairs of completions, L tokens (prompt + completion).

The online loop samples two completions a, b of each prompt (from the policy, or from its
token-level geometric mixture with the reference, per `OnlineSpec.mixture`), asks the scorer for
P(a ≻ b), and hands this objective a rollout shaped like an offline pairs batch: a as
`chosen_*`, b as `rejected_*` (names only: which one wins is in `pref`), plus `pref` [M].
`prepare` adds the reference log-probs once per rollout; `loss` runs on its minibatches and
reuses the offline maths (pairwise.py) and online_math.py.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from align import logprobs
from align.objectives import base, online_math, pairwise
from align.settings import Settings, setting

LABELS = ("soft", "hard")
NASH_VARIANTS = ("exact", "trl")
REF_TOKENS = "ref_chosen_token_logp"


@dataclasses.dataclass(frozen=True)
class OnlineDpoSettings(Settings):
    beta: float = setting(0.1, gt=0)
    labels: str = setting("hard", choices=LABELS)


@dataclasses.dataclass(frozen=True)
class OnlineIpoSettings(Settings):
    tau: float = setting(0.1, gt=0)
    labels: str = setting("soft", choices=LABELS)


@dataclasses.dataclass(frozen=True)
class IpoMdSettings(Settings):
    tau: float = setting(0.1, gt=0)
    mixture_beta: float = setting(0.125, ge=0, le=1)  # weight of the reference in the mixture
    labels: str = setting("soft", choices=LABELS)


@dataclasses.dataclass(frozen=True)
class NashMdSettings(Settings):
    tau: float = setting(0.1, gt=0)
    mixture_beta: float = setting(0.125, ge=0, le=1)
    variant: str = setting("exact", choices=NASH_VARIANTS)


def _check_rollout(batch, name):
    pairwise.check_pairs_batch(batch, name)
    if "pref" not in batch:
        raise ValueError(f"objective {name!r} reads a rollout with 'pref' = P(a ≻ b); fields "
                         f"present: {sorted(batch)}")


def _pair_reference(reference, batch, *, name, chunk_size):
    """S_ref(a), S_ref(b) for the rollout (no gradient)."""
    _check_rollout(batch, name)
    return pairwise.reference_logprobs(reference, batch, name=name, chunk_size=chunk_size)


def _kl_stat(batch, ref_a_M, a_from_policy: bool):
    """{"kl": mean log π_θ(a) − log μ(a)} when a was sampled from π_θ (a KL estimate)."""
    if not a_from_policy or "chosen_policy_logp" not in batch:
        return {}
    kl_M = batch["chosen_policy_logp"].astype(jnp.float32) - ref_a_M
    return {"kl": jnp.mean(jax.lax.stop_gradient(kl_M))}


def _prepare_pairs(policy, batch, obj_state, *, rng, a_from_policy):
    del policy, obj_state, rng
    return batch, _kl_stat(batch, batch["ref_chosen_logp"], a_from_policy)


def _pair_loss(model, batch, obj_state, *, rng, name, chunk_size, loss_fn, soft, scale):
    del obj_state, rng
    _check_rollout(batch, name)
    s_a, s_b, _, _ = pairwise.pair_logprobs(model, batch, chunk_size=chunk_size)
    ref_a = jax.lax.stop_gradient(batch["ref_chosen_logp"])
    ref_b = jax.lax.stop_gradient(batch["ref_rejected_logp"])
    r_a, r_b = s_a - ref_a, s_b - ref_b
    pref = jax.lax.stop_gradient(batch["pref"].astype(jnp.float32))
    loss_M = online_math.online_pair_loss(r_a, r_b, pref, loss_fn=loss_fn, soft=soft)
    m = jnp.asarray(loss_M.shape[0], jnp.float32)
    # The implicit reward agrees with the judge when it ranks the preferred completion higher.
    agree = jnp.where(pref >= 0.5, r_a > r_b, r_b > r_a).astype(jnp.float32)
    metrics = {
        "pref": base.ratio(jnp.sum(pref), m),
        "implicit_reward_a": base.ratio(jnp.sum(scale * r_a), m),
        "implicit_reward_b": base.ratio(jnp.sum(scale * r_b), m),
        "judge_agreement": base.ratio(jnp.sum(agree), m),
        "logratio_a": base.ratio(jnp.sum(r_a), m),
    }
    return base.LossOut(jnp.sum(loss_M), m, metrics)


def _pairs_objective(name, *, chunk_size, loss_fn, soft, scale, mixture):
    return base.make(
        name, "prompts",
        loss=functools.partial(_pair_loss, name=name, chunk_size=chunk_size, loss_fn=loss_fn,
                               soft=soft, scale=scale),
        reference_fields=functools.partial(_pair_reference, name=name, chunk_size=chunk_size),
        prepare=functools.partial(_prepare_pairs, a_from_policy=mixture[0] == 0),
        online=base.OnlineSpec(samples=2, mixture=mixture, score="preference"))


def make_online_dpo(cfg, *, chunk_size: int = 0) -> base.Objective:
    """Online DPO: two policy samples, the judge's winner, the DPO loss (not Nash-seeking)."""
    cfg = OnlineDpoSettings.of(cfg)
    beta = cfg.beta
    return _pairs_objective("online_dpo", chunk_size=chunk_size,
                            loss_fn=functools.partial(pairwise.dpo_loss, beta=beta),
                            soft=cfg.labels == "soft", scale=beta, mixture=(0.0, 0.0))


def make_online_ipo(cfg, *, chunk_size: int = 0) -> base.Objective:
    """Online IPO (Calandriello et al., arXiv 2403.08635): two policy samples, soft or hard labels."""
    cfg = OnlineIpoSettings.of(cfg)
    tau = cfg.tau
    return _pairs_objective("online_ipo", chunk_size=chunk_size,
                            loss_fn=functools.partial(pairwise.ipo_loss, tau=tau),
                            soft=cfg.labels == "soft", scale=tau, mixture=(0.0, 0.0))


def make_online_slic(cfg, *, chunk_size: int = 0) -> base.Objective:
    """Online SLiC (the normalised hinge max(0, 1 − βz) of arXiv 2309.06657) on two policy samples."""
    cfg = OnlineDpoSettings.of(cfg)  # the same settings: β and hard labels
    beta = cfg.beta
    return _pairs_objective("online_slic", chunk_size=chunk_size,
                            loss_fn=functools.partial(pairwise.slic_norm_loss, beta=beta),
                            soft=cfg.labels == "soft", scale=beta, mixture=(0.0, 0.0))


def make_ipo_md(cfg, *, chunk_size: int = 0) -> base.Objective:
    """IPO-MD(β) (arXiv 2403.08635): online IPO with both samples from the β-mixture."""
    cfg = IpoMdSettings.of(cfg)
    tau, beta = cfg.tau, cfg.mixture_beta
    return _pairs_objective("ipo_md", chunk_size=chunk_size,
                            loss_fn=functools.partial(pairwise.ipo_loss, tau=tau),
                            soft=cfg.labels == "soft", scale=tau, mixture=(beta, beta))


def _nash_reference(reference, batch, *, chunk_size):
    """Reference token log-probs of the policy's sample a (the only one trained on)."""
    _check_rollout(batch, "nash_md")
    ref = logprobs.shifted_logprobs(reference, batch["chosen_tokens"],
                                    batch["chosen_input_mask"], chunk_size=chunk_size)
    return {REF_TOKENS: jax.lax.stop_gradient(ref)}


def _prepare_nash(policy, batch, obj_state, *, rng):
    del policy, obj_state, rng
    ref_a_M = logprobs.sequence_logprobs(batch[REF_TOKENS], batch["chosen_loss_mask"],
                                         reduction="sum")
    return batch, _kl_stat(batch, ref_a_M, a_from_policy=True)


def _nash_loss(model, batch, obj_state, *, rng, chunk_size, tau, variant):
    del obj_state, rng
    _check_rollout(batch, "nash_md")
    logp_MxL = logprobs.shifted_logprobs(model, batch["chosen_tokens"], batch["chosen_input_mask"],
                                         chunk_size=chunk_size)
    ref_MxL = jax.lax.stop_gradient(batch[REF_TOKENS])
    mask_MxL = batch["chosen_loss_mask"].astype(jnp.float32)
    pref = jax.lax.stop_gradient(batch["pref"].astype(jnp.float32))
    if variant == "exact":
        loss_M = online_math.nash_md_pg_loss(logp_MxL, ref_MxL, mask_MxL, pref, tau=tau)
    else:
        loss_M = online_math.nash_md_pg_trl_loss(logp_MxL, ref_MxL, mask_MxL, pref, kl_coef=tau)
    m = jnp.asarray(loss_M.shape[0], jnp.float32)
    kl_M = jnp.sum(jnp.where(mask_MxL > 0, jax.lax.stop_gradient(logp_MxL) - ref_MxL, 0.0), -1)
    metrics = {"pref": base.ratio(jnp.sum(pref), m),
               "logratio_a": base.ratio(jnp.sum(kl_M), m)}
    return base.LossOut(jnp.sum(loss_M), m, metrics)


def make_nash_md(cfg, *, chunk_size: int = 0) -> base.Objective:
    """Nash-MD-PG (Munos et al., arXiv 2312.00886): y ~ π_θ against y' from the β-mixture.

    variant="exact": the policy gradient ∇log π(y)·[P(y ≻ y') − ½ − τ log(π/μ)] with the KL
    term as reward-to-go per token; variant="trl": TRL NashMDTrainer's surrogate (each token's
    own log-ratio, coefficient τ), for comparison with that library.
    """
    cfg = NashMdSettings.of(cfg)
    tau, beta = cfg.tau, cfg.mixture_beta
    return base.make(
        "nash_md", "prompts",
        loss=functools.partial(_nash_loss, chunk_size=chunk_size, tau=tau, variant=cfg.variant),
        reference_fields=functools.partial(_nash_reference, chunk_size=chunk_size),
        prepare=_prepare_nash,
        online=base.OnlineSpec(samples=2, mixture=(0.0, beta), score="preference"))


SETTINGS = {"online_dpo": OnlineDpoSettings, "online_ipo": OnlineIpoSettings,
            "online_slic": OnlineDpoSettings, "ipo_md": IpoMdSettings, "nash_md": NashMdSettings}
OBJECTIVES = {"online_dpo": make_online_dpo, "online_ipo": make_online_ipo,
              "online_slic": make_online_slic,
              "ipo_md": make_ipo_md, "nash_md": make_nash_md}
