"""Pairwise preference objectives: DPO, cDPO, robust DPO, IPO, SLiC-HF, SLiC_norm, SimPO, CPO, ORPO.

Dimension letters: B pairs, T tokens (a forward pass sees 2B rows: chosen rows, then rejected).

Notation (docs/formulas.md): S(y) is the summed completion log-prob, r = S_θ − S_ref the
log-ratio, z = r_w − r_l for chosen y_w and rejected y_l. Layer 1 is the per-pair maths; layer 2
binds it to a pairs batch and a policy (`make_*`).

Implicit rewards reported as metrics (`reward_chosen`, `reward_rejected`, and from them
`accuracy`, `margin`, `gold_agreement`):
  dpo, cdpo, robust_dpo, slic_norm: β·r       ipo: τ·r (per-token r when normalize="mean")
  slic_hf: S_θ (log π, no scale)              simpo: β·S_θ/|y| (SimPO's own reward)
  cpo: β·S_θ                                  orpo: log odds of y, odds = p/(1−p), p = e^{S_θ/|y|}
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from align import logprobs
from align.objectives import base
from align.settings import Settings, setting

PAIR_FIELDS = tuple(f"{side}_{field}" for side in ("chosen", "rejected")
                    for field in ("tokens", "input_mask", "loss_mask"))
REF_FIELDS = ("ref_chosen_logp", "ref_rejected_logp")
IPO_NORMALIZE = ("sum", "mean")
SLIC_TARGETS = ("chosen",)

# ORPO's odds need log(1 − p); a policy that puts all mass on a response (mean token log-prob
# rounding to 0 in fp32) would make them infinite, so the mean log-prob is capped just below 0.
_ORPO_MAX_MEAN_LOGP = -1e-6


# ----------------------------------------------------------------------------- layer 1: maths

def _float(x_B):
    """At least fp32 (float64 stays float64, so oracles can run in x64)."""
    x_B = jnp.asarray(x_B)
    return x_B.astype(jnp.promote_types(x_B.dtype, jnp.float32))


def _margin(logratio_chosen_B, logratio_rejected_B):
    return _float(logratio_chosen_B) - _float(logratio_rejected_B)


def _check_smoothing(label_smoothing, *, upper: float, closed: bool, loss: str) -> None:
    """Rejects a concrete ε outside [0, upper] (or [0, upper)); traced values pass through."""
    if not isinstance(label_smoothing, numbers.Real):
        return
    eps = float(label_smoothing)
    if not (0.0 <= eps and (eps <= upper if closed else eps < upper)):
        bound = f"<= {upper}" if closed else f"< {upper}"
        raise ValueError(f"{loss}: label_smoothing must be >= 0 and {bound}, got {eps}")


def dpo_loss(logratio_chosen_B, logratio_rejected_B, *, beta):
    """−log σ(β z) per pair (Rafailov et al., arXiv 2305.18290)."""
    return -jax.nn.log_sigmoid(beta * _margin(logratio_chosen_B, logratio_rejected_B))


def cdpo_loss(logratio_chosen_B, logratio_rejected_B, *, beta, label_smoothing):
    """−(1−ε) log σ(βz) − ε log σ(−βz) (Mitchell's 2023 cDPO note on DPO, arXiv 2305.18290)."""
    _check_smoothing(label_smoothing, upper=0.5, closed=True, loss="cdpo_loss")
    x_B = beta * _margin(logratio_chosen_B, logratio_rejected_B)
    eps = label_smoothing
    return -(1.0 - eps) * jax.nn.log_sigmoid(x_B) - eps * jax.nn.log_sigmoid(-x_B)


def robust_dpo_loss(logratio_chosen_B, logratio_rejected_B, *, beta, label_smoothing):
    """[−(1−ε) log σ(βz) + ε log σ(−βz)] / (1−2ε) (Chowdhury et al., arXiv 2403.00409)."""
    _check_smoothing(label_smoothing, upper=0.5, closed=False, loss="robust_dpo_loss")
    x_B = beta * _margin(logratio_chosen_B, logratio_rejected_B)
    eps = label_smoothing
    return (-(1.0 - eps) * jax.nn.log_sigmoid(x_B)
            + eps * jax.nn.log_sigmoid(-x_B)) / (1.0 - 2.0 * eps)


def ipo_loss(logratio_chosen_B, logratio_rejected_B, *, tau):
    """(z − 1/(2τ))² per pair (Azar et al., arXiv 2310.12036; their τ is TRL's β)."""
    return (_margin(logratio_chosen_B, logratio_rejected_B) - 1.0 / (2.0 * tau)) ** 2


def slic_hf_loss(logp_chosen_B, logp_rejected_B, logp_target_B, *, delta, lam):
    """max(0, δ − S(y_w) + S(y_l)) − λ S(y_ref) per pair (Zhao et al., arXiv 2305.10425)."""
    hinge_B = jnp.maximum(0.0, delta - _margin(logp_chosen_B, logp_rejected_B))
    return hinge_B - lam * _float(logp_target_B)


def slic_norm_loss(logratio_chosen_B, logratio_rejected_B, *, beta):
    """max(0, 1 − β z) per pair: SLiC on log-ratios, SLiC_norm (Liu et al., arXiv 2309.06657)."""
    return jnp.maximum(0.0, 1.0 - beta * _margin(logratio_chosen_B, logratio_rejected_B))


def dpo_gradient_weight(logratio_chosen_B, logratio_rejected_B, *, beta):
    """σ(β(r_l − r_w)): how strongly DPO pushes each pair (arXiv 2305.18290, §4)."""
    return jax.nn.sigmoid(-beta * _margin(logratio_chosen_B, logratio_rejected_B))


def simpo_loss(avg_logp_chosen_B, avg_logp_rejected_B, *, beta, gamma):
    """−log σ(β S(y_w)/|y_w| − β S(y_l)/|y_l| − γ) per pair (Meng et al., arXiv 2405.14734)."""
    # γ enters as the reward margin of the paper's equation, not as γ/β (the authors' code option).
    return -jax.nn.log_sigmoid(beta * _margin(avg_logp_chosen_B, avg_logp_rejected_B) - gamma)


def cpo_loss(logp_chosen_B, logp_rejected_B, *, beta, nll_weight):
    """−log σ(β(S(y_w) − S(y_l))) − λ S(y_w) per pair (Xu et al., arXiv 2401.08417)."""
    # The NLL is the summed sequence log-prob of the paper's equation; TRL's CPOTrainer instead
    # adds the token-mean cross-entropy of the chosen responses over the batch.
    prefer_B = -jax.nn.log_sigmoid(beta * _margin(logp_chosen_B, logp_rejected_B))
    return prefer_B - nll_weight * _float(logp_chosen_B)


def _log1mexp(x_B):
    """log(1 − eˣ) for x < 0, accurate near 0 and far below it (Mächler 2012)."""
    return jnp.where(x_B > -math.log(2.0), jnp.log(-jnp.expm1(x_B)), jnp.log1p(-jnp.exp(x_B)))


def orpo_log_odds(avg_logp_B):
    """log(p/(1−p)) with p = exp(mean token log-prob), as ORPO defines the odds of a response."""
    x_B = jnp.minimum(_float(avg_logp_B), _ORPO_MAX_MEAN_LOGP)
    return x_B - _log1mexp(x_B)


def orpo_loss(avg_logp_chosen_B, avg_logp_rejected_B, *, lam):
    """−S(y_w)/|y_w| − λ log σ(log odds(y_w) − log odds(y_l)) (Hong et al., arXiv 2403.07691)."""
    # The NLL is the per-response token mean (the paper's L_SFT); TRL averages over batch tokens.
    ratio_B = orpo_log_odds(avg_logp_chosen_B) - orpo_log_odds(avg_logp_rejected_B)
    return -_float(avg_logp_chosen_B) - lam * jax.nn.log_sigmoid(ratio_B)


# ----------------------------------------------------------------------------- layer 2: bindings

class PairLogps(NamedTuple):
    """Per-pair policy sums S_θ, completion token counts, and reference sums S_ref (or None)."""

    chosen_B: jax.Array
    rejected_B: jax.Array
    n_chosen_B: jax.Array
    n_rejected_B: jax.Array
    ref_chosen_B: jax.Array | None = None
    ref_rejected_B: jax.Array | None = None

    def logratios(self, normalize: str = "sum"):
        """(r_w, r_l); "mean" divides each by its completion token count."""
        r_w_B, r_l_B = self.chosen_B - self.ref_chosen_B, self.rejected_B - self.ref_rejected_B
        if normalize == "mean":
            return _per_token(r_w_B, self.n_chosen_B), _per_token(r_l_B, self.n_rejected_B)
        return r_w_B, r_l_B

    def means(self):
        """Policy mean token log-probs S_θ/|y| (0 for an empty completion)."""
        return (_per_token(self.chosen_B, self.n_chosen_B),
                _per_token(self.rejected_B, self.n_rejected_B))


def _per_token(sum_B, count_B):
    return jnp.where(count_B > 0, sum_B / jnp.maximum(count_B, 1.0), 0.0)


def check_pairs_batch(batch, name: str) -> tuple[int, int]:
    """(B, T) of a pairs batch, or a ValueError naming the missing or mismatched fields."""
    missing = [k for k in PAIR_FIELDS if k not in batch]
    if missing:
        raise ValueError(f"objective {name!r} reads a pairs batch, but it lacks {missing} "
                         f"(fields present: {sorted(batch)})")
    shapes = {k: tuple(jnp.shape(batch[k])) for k in PAIR_FIELDS}
    if len(set(shapes.values())) != 1 or len(shapes["chosen_tokens"]) != 2:
        raise ValueError(f"objective {name!r}: pair fields must all be [B, T] of one shape, "
                         f"got {shapes}")
    return shapes["chosen_tokens"]


def pair_logprobs(model, batch, *, chunk_size: int = 0):
    """S(y_w), S(y_l), |y_w|, |y_l| [B] from ONE forward pass over [chosen; rejected]."""
    both = lambda k: jnp.concatenate([batch[f"chosen_{k}"], batch[f"rejected_{k}"]], axis=0)
    logp_2BxT = logprobs.shifted_logprobs(model, both("tokens"), both("input_mask"),
                                          chunk_size=chunk_size)
    loss_mask_2BxT = both("loss_mask")
    sums_2B = logprobs.sequence_logprobs(logp_2BxT, loss_mask_2BxT)
    counts_2B = jnp.sum(loss_mask_2BxT.astype(jnp.float32), axis=1)
    b = batch["chosen_tokens"].shape[0]
    return sums_2B[:b], sums_2B[b:], counts_2B[:b], counts_2B[b:]


def reference_logprobs(reference, batch, *, name: str, chunk_size: int = 0):
    """ref_chosen_logp / ref_rejected_logp [B]: S_ref of each completion (no gradient)."""
    check_pairs_batch(batch, name)
    ref_w_B, ref_l_B, _, _ = pair_logprobs(reference, batch, chunk_size=chunk_size)
    return {"ref_chosen_logp": jax.lax.stop_gradient(ref_w_B),
            "ref_rejected_logp": jax.lax.stop_gradient(ref_l_B)}


def pair_metrics(reward_chosen_B, reward_rejected_B, logp_chosen_B, logp_rejected_B, batch):
    """Implicit-reward and likelihood metrics as (sum, count) parts over the pairs."""
    n = jnp.asarray(reward_chosen_B.shape[0], jnp.float32)
    margin_B = reward_chosen_B - reward_rejected_B
    metrics = {
        "reward_chosen": base.ratio(jnp.sum(reward_chosen_B), n),
        "reward_rejected": base.ratio(jnp.sum(reward_rejected_B), n),
        "accuracy": base.ratio(jnp.sum((margin_B > 0).astype(jnp.float32)), n),
        "margin": base.ratio(jnp.sum(margin_B), n),
        # Summed policy log-probs: a falling logp_chosen shows likelihood displacement.
        "logp_chosen": base.ratio(jnp.sum(logp_chosen_B), n),
        "logp_rejected": base.ratio(jnp.sum(logp_rejected_B), n),
    }
    if "chosen_gold" in batch and "rejected_gold" in batch:
        gold_w_B = jnp.asarray(batch["chosen_gold"], jnp.float32)
        gold_l_B = jnp.asarray(batch["rejected_gold"], jnp.float32)
        # Pairs the gold reward ties have no order to agree with: left out of the count.
        decided_B = gold_w_B != gold_l_B
        agree_B = jnp.where(gold_w_B > gold_l_B, margin_B > 0, margin_B < 0) & decided_B
        metrics["gold_agreement"] = base.ratio(jnp.sum(agree_B.astype(jnp.float32)),
                                               jnp.sum(decided_B.astype(jnp.float32)))
    return metrics


TermsFn = Callable[[PairLogps], tuple[jax.Array, jax.Array, jax.Array]]


def _loss(model, batch, obj_state, *, rng, name: str, terms_fn: TermsFn, uses_reference: bool,
          chunk_size: int):
    del obj_state, rng
    b, _ = check_pairs_batch(batch, name)
    w_B, l_B, n_w_B, n_l_B = pair_logprobs(model, batch, chunk_size=chunk_size)
    ref = ()
    if uses_reference:
        missing = [k for k in REF_FIELDS if k not in batch]
        if missing:
            raise ValueError(f"objective {name!r}: the batch lacks {missing}; run the objective's "
                             "prepare (or supply cached reference log-probs) before loss")
        for k in REF_FIELDS:
            if tuple(jnp.shape(batch[k])) != (b,):
                raise ValueError(f"objective {name!r}: {k!r} must have shape ({b},), got "
                                 f"{tuple(jnp.shape(batch[k]))}")
        ref = tuple(jax.lax.stop_gradient(jnp.asarray(batch[k], jnp.float32)) for k in REF_FIELDS)
    loss_B, reward_w_B, reward_l_B = terms_fn(PairLogps(w_B, l_B, n_w_B, n_l_B, *ref))
    metrics = pair_metrics(reward_w_B, reward_l_B, w_B, l_B, batch)
    return base.LossOut(jnp.sum(loss_B), jnp.asarray(b, jnp.float32), metrics)


def _objective(name: str, terms_fn: TermsFn, *, uses_reference: bool, chunk_size: int,
               settings=None) -> base.Objective:
    loss = functools.partial(_loss, name=name, terms_fn=terms_fn, uses_reference=uses_reference,
                             chunk_size=chunk_size)
    ref = (functools.partial(reference_logprobs, name=name, chunk_size=chunk_size)
           if uses_reference else None)
    return base.make(name, "pairs", loss=loss, reference_fields=ref, settings=settings)


def _dpo_terms(lp: PairLogps, *, beta):
    r_w_B, r_l_B = lp.logratios()
    return dpo_loss(r_w_B, r_l_B, beta=beta), beta * r_w_B, beta * r_l_B


def _cdpo_terms(lp: PairLogps, *, beta, label_smoothing):
    r_w_B, r_l_B = lp.logratios()
    loss_B = cdpo_loss(r_w_B, r_l_B, beta=beta, label_smoothing=label_smoothing)
    return loss_B, beta * r_w_B, beta * r_l_B


def _robust_dpo_terms(lp: PairLogps, *, beta, label_smoothing):
    r_w_B, r_l_B = lp.logratios()
    loss_B = robust_dpo_loss(r_w_B, r_l_B, beta=beta, label_smoothing=label_smoothing)
    return loss_B, beta * r_w_B, beta * r_l_B


def _ipo_terms(lp: PairLogps, *, tau, normalize):
    r_w_B, r_l_B = lp.logratios(normalize)
    return ipo_loss(r_w_B, r_l_B, tau=tau), tau * r_w_B, tau * r_l_B


def _slic_hf_terms(lp: PairLogps, *, delta, lam):
    # target="chosen" is the only choice: the paper regularises towards SFT targets, which a
    # preference pair lacks, and the chosen response is the standard stand-in.
    loss_B = slic_hf_loss(lp.chosen_B, lp.rejected_B, lp.chosen_B, delta=delta, lam=lam)
    return loss_B, lp.chosen_B, lp.rejected_B


def _slic_norm_terms(lp: PairLogps, *, beta):
    r_w_B, r_l_B = lp.logratios()
    return slic_norm_loss(r_w_B, r_l_B, beta=beta), beta * r_w_B, beta * r_l_B


def _simpo_terms(lp: PairLogps, *, beta, gamma):
    avg_w_B, avg_l_B = lp.means()
    return simpo_loss(avg_w_B, avg_l_B, beta=beta, gamma=gamma), beta * avg_w_B, beta * avg_l_B


def _cpo_terms(lp: PairLogps, *, beta, nll_weight):
    loss_B = cpo_loss(lp.chosen_B, lp.rejected_B, beta=beta, nll_weight=nll_weight)
    return loss_B, beta * lp.chosen_B, beta * lp.rejected_B


def _orpo_terms(lp: PairLogps, *, lam):
    avg_w_B, avg_l_B = lp.means()
    return orpo_loss(avg_w_B, avg_l_B, lam=lam), orpo_log_odds(avg_w_B), orpo_log_odds(avg_l_B)


@dataclasses.dataclass(frozen=True)
class DpoSettings(Settings):
    beta: float = setting(0.1, gt=0)


@dataclasses.dataclass(frozen=True)
class CdpoSettings(Settings):
    beta: float = setting(0.1, gt=0)
    label_smoothing: float = setting(0.1, ge=0, le=0.5)


@dataclasses.dataclass(frozen=True)
class RobustDpoSettings(Settings):
    beta: float = setting(0.1, gt=0)
    label_smoothing: float = setting(0.1, ge=0, lt=0.5)  # 1/(1 − 2ε) is infinite at 0.5


@dataclasses.dataclass(frozen=True)
class IpoSettings(Settings):
    tau: float = setting(0.1, gt=0)
    normalize: str = setting("sum", choices=IPO_NORMALIZE)


@dataclasses.dataclass(frozen=True)
class SlicHfSettings(Settings):
    delta: float = setting(1.0, ge=0)
    lam: float = setting(0.1, ge=0)
    target: str = setting("chosen", choices=SLIC_TARGETS)


@dataclasses.dataclass(frozen=True)
class SimpoSettings(Settings):
    beta: float = setting(2.0, gt=0)
    gamma: float = setting(0.5)


@dataclasses.dataclass(frozen=True)
class CpoSettings(Settings):
    beta: float = setting(0.1, gt=0)
    nll_weight: float = setting(1.0, ge=0)


@dataclasses.dataclass(frozen=True)
class OrpoSettings(Settings):
    lam: float = setting(0.1, ge=0)


def make_dpo(cfg, *, chunk_size: int = 0) -> base.Objective:
    """DPO (arXiv 2305.18290) on pairs with a frozen reference."""
    terms = functools.partial(_dpo_terms, beta=DpoSettings.of(cfg).beta)
    return _objective("dpo", terms, uses_reference=True, chunk_size=chunk_size)


def make_cdpo(cfg, *, chunk_size: int = 0) -> base.Objective:
    """Conservative DPO (label smoothing ε, arXiv 2305.18290 follow-up note)."""
    s = CdpoSettings.of(cfg)
    terms = functools.partial(_cdpo_terms, beta=s.beta, label_smoothing=s.label_smoothing)
    return _objective("cdpo", terms, uses_reference=True, chunk_size=chunk_size)


def make_robust_dpo(cfg, *, chunk_size: int = 0) -> base.Objective:
    """Robust DPO under label noise ε (arXiv 2403.00409)."""
    s = RobustDpoSettings.of(cfg)
    terms = functools.partial(_robust_dpo_terms, beta=s.beta, label_smoothing=s.label_smoothing)
    return _objective("robust_dpo", terms, uses_reference=True, chunk_size=chunk_size)


def make_ipo(cfg, *, chunk_size: int = 0) -> base.Objective:
    """IPO (arXiv 2310.12036); normalize="mean" uses per-token log-ratios as TRL's DPO trainer."""
    s = IpoSettings.of(cfg)
    terms = functools.partial(_ipo_terms, tau=s.tau, normalize=s.normalize)
    return _objective("ipo", terms, uses_reference=True, chunk_size=chunk_size)


def make_slic_hf(cfg, *, chunk_size: int = 0) -> base.Objective:
    """SLiC-HF (arXiv 2305.10425), regularised towards the chosen response (target="chosen")."""
    s = SlicHfSettings.of(cfg)
    terms = functools.partial(_slic_hf_terms, delta=s.delta, lam=s.lam)
    return _objective("slic_hf", terms, uses_reference=False, chunk_size=chunk_size)


def make_slic_norm(cfg, *, chunk_size: int = 0) -> base.Objective:
    """SLiC on reference-normalised log-probs, RSO's hinge (arXiv 2309.06657)."""
    terms = functools.partial(_slic_norm_terms, beta=DpoSettings.of(cfg).beta)
    return _objective("slic_norm", terms, uses_reference=True, chunk_size=chunk_size)


def make_simpo(cfg, *, chunk_size: int = 0) -> base.Objective:
    """SimPO (arXiv 2405.14734): reference-free, length-normalised, with a reward margin γ."""
    s = SimpoSettings.of(cfg)
    terms = functools.partial(_simpo_terms, beta=s.beta, gamma=s.gamma)
    return _objective("simpo", terms, uses_reference=False, chunk_size=chunk_size)


def make_cpo(cfg, *, chunk_size: int = 0) -> base.Objective:
    """CPO (arXiv 2401.08417): reference-free DPO plus an NLL term on the chosen response."""
    s = CpoSettings.of(cfg)
    terms = functools.partial(_cpo_terms, beta=s.beta, nll_weight=s.nll_weight)
    return _objective("cpo", terms, uses_reference=False, chunk_size=chunk_size)


def make_orpo(cfg, *, chunk_size: int = 0) -> base.Objective:
    """ORPO (arXiv 2403.07691): token-mean NLL plus λ times an odds-ratio preference term."""
    terms = functools.partial(_orpo_terms, lam=OrpoSettings.of(cfg).lam)
    return _objective("orpo", terms, uses_reference=False, chunk_size=chunk_size)


SETTINGS = {"dpo": DpoSettings, "cdpo": CdpoSettings, "robust_dpo": RobustDpoSettings,
            "ipo": IpoSettings, "slic_hf": SlicHfSettings, "slic_norm": DpoSettings,
            "simpo": SimpoSettings, "cpo": CpoSettings, "orpo": OrpoSettings}

OBJECTIVES = {
    "dpo": make_dpo,
    "cdpo": make_cdpo,
    "robust_dpo": make_robust_dpo,
    "ipo": make_ipo,
    "slic_hf": make_slic_hf,
    "slic_norm": make_slic_norm,
    "simpo": make_simpo,
    "cpo": make_cpo,
    "orpo": make_orpo,
}
