"""Has a preference model learned the judge's cycle? The precondition of every Nash claim.

Nash-MD and IPO-MD differ from RLHF only where preferences cycle. A Nash experiment therefore
first checks that the preference model it trains against has learned the judge's cycle, not
only its transitive part. The review world's cyclic judge (align/tasks/labelers.py) has

    logit P(a ≻ b) = (Δs + w·C) / T,   Δs = s(a) − s(b),   C = C[style a, style b] ∈ {−1, 0, 1}.

A model's logits ℓ on held-out pairs are regressed by least squares on the judge's terms,

    ℓ ≈ μ + α·Δs + γ·C + Σ_g δ_g·(1[style a = g] − 1[style b = g]),

with a heteroscedasticity-robust (HC1 sandwich) covariance. The last terms (given the pairs'
styles) absorb any *transitive* preference between styles: on pairs drawn unevenly over the
styles, a Bradley–Terry model that scores one style above another has differences that
correlate with C, and without them would pass for a cycle. With them, γ measures only the
cyclic part (over three styles the antisymmetric functions of a style pair are two potential
differences and the cycle). The judge itself has α = 1/T and
γ = w/T, so its cycle-to-transitive ratio is γ/α = w. The model's **cycle share**

    ρ = (γ / α) / w

is 1 when the model weighs the cycle against the transitive part as the judge does, 0 when it
learned no cycle (a Bradley–Terry reward model has ρ = 0 in expectation: C is not a function of
one completion). The pre-registered rule: the cycle is *learned* when the one-sided (1 − α)
lower confidence bound of ρ (delta method) is at least `threshold` and α's is above 0.

`preference_model_check(workdir)` runs the whole check on a finished preference-model run: its
own held-out labelled pairs, its own judge (the run's `task.*` settings), its model's
probabilities on the pairs as the data pipeline encodes them.

Dimension letters: N pairs.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import numpy as np
from scipy import stats as sp_stats

from align import errors
from align import mesh as mesh_lib
from align.data import encoding, pipeline, sources
from align.tasks.labelers import Labeler, LabelerConfig
from align.train import runs
from align.train import scorers as scorers_lib

ALPHA = 0.05
THRESHOLD = 0.5  # at least half the judge's cycle, relative to its transitive part


@dataclasses.dataclass(frozen=True)
class CycleFit:
    """ℓ ≈ μ + α·Δs + γ·C with its robust covariance over (μ, α, γ)."""

    intercept: float
    alpha: float
    gamma: float
    cov: np.ndarray  # [3, 3], order (μ, α, γ)
    r2: float  # centred
    n: int

    @property
    def alpha_se(self) -> float:
        return math.sqrt(self.cov[1, 1])

    @property
    def gamma_se(self) -> float:
        return math.sqrt(self.cov[2, 2])

    def ratio(self) -> tuple[float, float]:
        """γ/α with its delta-method standard error."""
        r = self.gamma / self.alpha
        grad = np.array([0.0, -self.gamma / self.alpha ** 2, 1.0 / self.alpha])
        return r, math.sqrt(max(float(grad @ self.cov @ grad), 0.0))


@dataclasses.dataclass(frozen=True)
class CycleCheck:
    """The verdict of the precondition, with what it rests on."""

    learned: bool
    share: float  # ρ = (γ/α) / w
    share_low: float  # one-sided (1 − α) lower bound of ρ
    threshold: float
    fit: CycleFit

    def describe(self) -> str:
        f = self.fit
        return (f"logit ≈ {f.alpha:.3f}·Δs {f.gamma:+.3f}·C (± {f.alpha_se:.3f}, {f.gamma_se:.3f}; "
                f"centred R² {f.r2:.2f}, {f.n} pairs): cycle share {self.share:.2f} "
                f"(lower bound {self.share_low:.2f}, threshold {self.threshold:.2f}): "
                + ("learned" if self.learned else "NOT learned"))


def _column(x, name: str, n: int | None = None) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim != 1 or (n is not None and x.shape[0] != n):
        raise ValueError(f"cycle: {name} must be a vector of {n if n is not None else 'N'} "
                         f"values, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"cycle: {name} has non-finite values")
    return x


def _group_differences(group_a_N, group_b_N, n: int) -> np.ndarray:
    """[N, G − 1] columns 1[a = g] − 1[b = g] for all groups g but the first seen."""
    a, b = np.asarray(group_a_N), np.asarray(group_b_N)
    if a.shape != (n,) or b.shape != (n,):
        raise ValueError(f"cycle: style_a_N and style_b_N must be vectors of {n} groups, got "
                         f"shapes {a.shape} and {b.shape}")
    groups = np.unique(np.concatenate([a, b]))
    return np.stack([(a == g).astype(np.float64) - (b == g) for g in groups[1:]], axis=1) \
        if len(groups) > 1 else np.zeros((n, 0))


def fit_cycle(logit_N, delta_N, cycle_N, *, style_a_N=None, style_b_N=None) -> CycleFit:
    """Least squares of the model's logits on (1, Δs, C) and, given the pairs' styles, the
    styles' potential differences, with the HC1 covariance (reported over (μ, α, γ))."""
    y = _column(logit_N, "logit_N")
    n = y.shape[0]
    d, c = _column(delta_N, "delta_N", n), _column(cycle_N, "cycle_N", n)
    if n < 8:
        raise ValueError(f"cycle: need at least 8 pairs, got {n}")
    for name, x in (("delta_N", d), ("cycle_N", c)):
        if np.ptp(x) == 0:
            raise ValueError(f"cycle: {name} does not vary over the pairs, so its coefficient "
                             "cannot be fitted (are pairs of every style pair present?)")
    x = np.stack([np.ones(n), d, c], axis=1)
    if (style_a_N is None) != (style_b_N is None):
        raise ValueError("cycle: give both style_a_N and style_b_N, or neither")
    if style_a_N is not None:
        x = np.concatenate([x, _group_differences(style_a_N, style_b_N, n)], axis=1)
    if np.linalg.matrix_rank(x) < x.shape[1]:
        raise ValueError("cycle: the terms are collinear over these pairs (is every style pair "
                         "present in both orders?)")
    xtx_inv = np.linalg.inv(x.T @ x)
    coef = xtx_inv @ x.T @ y
    resid = y - x @ coef
    meat = (x * resid[:, None] ** 2).T @ x
    cov = xtx_inv @ meat @ xtx_inv * n / max(n - x.shape[1], 1)
    total = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(resid @ resid) / total if total > 0 else float("nan")
    return CycleFit(float(coef[0]), float(coef[1]), float(coef[2]), cov[:3, :3], r2, n)


def check(fit: CycleFit, *, judge_weight: float, threshold: float = THRESHOLD,
          alpha: float = ALPHA) -> CycleCheck:
    """Learned iff α is above 0 and the lower (1 − alpha) bound of ρ is at least threshold
    (both one-sided z tests on the robust standard errors)."""
    if not judge_weight > 0:
        raise ValueError(f"cycle: the judge's cycle weight must be > 0, got {judge_weight}")
    if not 0 < alpha < 0.5:
        raise ValueError(f"cycle: alpha must be in (0, 0.5), got {alpha}")
    z = float(sp_stats.norm.ppf(1 - alpha))
    transitive = fit.alpha - z * fit.alpha_se > 0
    if fit.alpha <= 0:
        return CycleCheck(False, float("nan"), float("nan"), threshold, fit)
    r, r_se = fit.ratio()
    share, low = r / judge_weight, (r - z * r_se) / judge_weight
    return CycleCheck(bool(transitive and low >= threshold), share, low, threshold, fit)


def labeler_terms(labeler, prompts: Sequence[str], texts_a: Sequence[str],
                  texts_b: Sequence[str]) -> dict[str, np.ndarray]:
    """The judge's terms of each pair (align.tasks.labelers.Labeler.pair_terms), as the
    keyword arguments of `fit_cycle` after the logits: delta_N, cycle_N, style_a_N, style_b_N."""
    if not len(prompts) == len(texts_a) == len(texts_b):
        raise ValueError(f"cycle: {len(prompts)} prompts, {len(texts_a)} and {len(texts_b)} "
                         "completions")
    terms = np.array([labeler.pair_terms(p, a, b) for p, a, b in zip(prompts, texts_a, texts_b)],
                     np.float64).reshape(-1, 4)
    return {"delta_N": terms[:, 0], "cycle_N": terms[:, 1], "style_a_N": terms[:, 2],
            "style_b_N": terms[:, 3]}


def logits(prob_N, eps: float = 1e-6) -> np.ndarray:
    """log(p / (1 − p)) of preference probabilities, clipped to [eps, 1 − eps]."""
    p = np.clip(_column(prob_N, "prob_N"), eps, 1 - eps)
    return np.log(p) - np.log1p(-p)


def preference_model_check(workdir: str, *, max_pairs: int = 2048, batch_size: int = 64,
                           threshold: float = THRESHOLD, alpha: float = ALPHA,
                           devices=None) -> CycleCheck:
    """The learned-cycle check of a finished preference-model run on up to `max_pairs` of its
    held-out labelled pairs, against the judge its own config describes (task.intransitive
    is the judge's cycle weight w)."""
    workdir = str(workdir)
    run = runs.read_run(workdir)
    if run is None or not run.finished:
        raise FileNotFoundError(f"{workdir} holds no finished run")
    cfg = run.cfg
    if cfg.objective.name != "preference_model":
        raise errors.ConfigError(f"{workdir} trained {cfg.objective.name!r}, not a preference "
                                 "model", key="objective.name")
    if not float(cfg.task.intransitive) > 0:
        raise errors.ConfigError(f"{workdir}: its judge has no cycle (task.intransitive = "
                                 f"{cfg.task.intransitive}), so there is none to learn",
                                 key="task.intransitive")
    data = sources.prepare(cfg, workdir, kinds=("pairs",), data_dir=run.data_dir,
                           tokenizer_path=run.tokenizer_path)
    if data.world is None:
        raise errors.ConfigError(f"{workdir}: the cycle check needs the synthetic world's judge "
                                 "(data.source='reviews')", key="data.source")
    _, labeler_cfg = sources.world_settings(cfg)
    judge = Labeler(data.world, LabelerConfig(**labeler_cfg))
    mesh = mesh_lib.make_mesh({"data": -1, "fsdp": 1, "tensor": 1},
                              list(devices or jax.devices())[:1])
    rules = mesh_lib.logical_rules(cfg.mesh.rules)
    scorer = scorers_lib.make("preference_model", run=run, mesh=mesh, rules=rules)
    source = data.pairs["test"]
    n = min(max_pairs, len(source))
    batch_size = min(batch_size, n)
    tok = data.tokenizer
    pad_id = tok.pad_id if cfg.data.pad_id < 0 else int(cfg.data.pad_id)
    it = pipeline.batches("pairs", source, tok, batch_size=batch_size, max_len=cfg.data.max_len,
                          max_prompt_len=cfg.data.max_prompt_len, seed=0, shuffle=False,
                          num_epochs=1, pad_id=pad_id, process_index=0, process_count=1)
    probs, ids = [], []
    for batch in it:
        probs.append(scorer.preferences(
            tokens_a=batch["chosen_tokens"], mask_a=batch["chosen_input_mask"],
            tokens_b=batch["rejected_tokens"], mask_b=batch["rejected_input_mask"]))
        ids.append(np.asarray(batch["example_id"]))
        if sum(len(i) for i in ids) >= n:
            break
    prob_N, id_N = np.concatenate(probs), np.concatenate(ids)
    records = [source[int(i)] for i in id_N]
    texts = {k: [encoding.text_field(r, k, int(i)) for r, i in zip(records, id_N)]
             for k in ("prompt", "chosen", "rejected")}
    terms = labeler_terms(judge, texts["prompt"], texts["chosen"], texts["rejected"])
    return check(fit_cycle(logits(prob_N), **terms),
                 judge_weight=float(cfg.task.intransitive), threshold=threshold, alpha=alpha)

