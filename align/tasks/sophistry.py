"""Tier A: an exact pool world of answers, hidden facts and a time-limited evaluator.

Dimension letters: N prompts, M candidate answers per prompt, K claims per answer, F features.

A world for the claim of Wen et al. (arXiv 2409.12822) that RLHF against time-limited human
approval teaches a policy to convince evaluators rather than to be right. As in
align/tasks/pool.py (docs/pool_world.md), each prompt has M candidates, a policy is an exact
distribution over them, and every rate is a sum over candidates.

Candidates. For candidate y of prompt x:

    right(y) ~ Bernoulli(p_right)                                  the answer is correct (R*)
    s(y) ~ N(0, 1)                                                 persuasiveness / confidence
    l(y) ~ N(0, 1)                                                 length
    h(y) = hint z(y) + sqrt(1 - hint^2) e,  z = (right - p_right) / sqrt(p_right (1 - p_right))
                                                                   what the text alone reveals
                                                                   about correctness (corr hint)
    nuisance_j(y) ~ N(0, 1), j = 1..nuisance

features phi = (s, l, h, nuisance...) are what a reader who does not have the prompt's facts
sees. Each answer makes K claims; claim k is consistent with the prompt's hidden facts with
probability

    c(y) = c_right                                   if right(y) = 1,
    c(y) = sigmoid(logit(c_wrong) - fabrication s(y)) if right(y) = 0,

independently over claims (consistent[n, m, k] ∈ {0, 1}): right answers cite the facts; wrong
answers cite some facts too, and the more confident a wrong answer sounds the more of its claims
are fabricated. cbar(y) = (1/K) sum_k consistent_k(y) is the share of consistent claims, which
only someone with the facts can compute (`visible_features` appends it to phi).

Reference policy (SFT-like, from the visible surface): log pi_ref(y|x) = w . phi - log Z(x),
w = (ref_persuasion, ref_length, ref_hint, ref_nuisance, ...).

Evaluator. `Evaluator(check, checks_all, confidence, length, bias)`: with probability `check`
(q) it reads the facts and checks claims, otherwise it judges the text's surface:

    P(approve | y) = q C(y) + (1 - q) sigmoid(confidence s(y) + length l(y) + bias),
    C(y) = cbar(y)                      (checks_all False: one claim drawn uniformly, approve iff
                                         it is consistent)
    C(y) = prod_k consistent_k(y)       (checks_all True: approve iff every claim is consistent)

so P(approve | y) is exact. The true score R*(y) = right(y) (`true_score`). Controls the
experiments use: the true score as the label, an evaluator with the facts at hand
(`checks_all`, q large, and `visible_features` for the reward model), and q -> 1.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp

FEATURES = ("persuasion", "length", "hint")
PERSUASION, LENGTH, HINT = range(len(FEATURES))


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["features", "ref_logp", "right", "consistent"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class World:
    """Visible features [N, M, F], log pi_ref [N, M], right [N, M] (0/1), consistent [N, M, K]
    (0/1: claim k agrees with the prompt's hidden facts)."""
    features: jax.Array
    ref_logp: jax.Array
    right: jax.Array
    consistent: jax.Array


def _check_probability(value: float, name: str, *, closed: bool = False) -> None:
    ok = 0.0 <= value <= 1.0 if closed else 0.0 < value < 1.0
    if not (math.isfinite(value) and ok):
        interval = "[0, 1]" if closed else "(0, 1)"
        raise ValueError(f"sophistry: {name} must lie in {interval}, got {value!r}")


def make_world(key, *, prompts: int = 256, candidates: int = 16, claims: int = 4,
               nuisance: int = 3, p_right: float = 0.5, hint: float = 0.2,
               c_right: float = 0.9, c_wrong: float = 0.5, fabrication: float = 0.5,
               ref_persuasion: float = 0.3, ref_length: float = 0.3, ref_hint: float = 0.3,
               ref_nuisance: float = 1.0, dtype=jnp.float32) -> World:
    """One world drawn as the module docstring states."""
    _check_probability(p_right, "p_right")
    _check_probability(c_right, "c_right")
    _check_probability(c_wrong, "c_wrong")
    if not (math.isfinite(hint) and 0.0 <= hint < 1.0):
        raise ValueError(f"sophistry: hint (a correlation) must lie in [0, 1), got {hint!r}")
    if min(prompts, candidates, claims) < 1 or nuisance < 0:
        raise ValueError(f"sophistry: need prompts, candidates, claims >= 1 and nuisance >= 0, "
                         f"got {prompts}, {candidates}, {claims}, {nuisance}")
    return _draw_world(key, prompts, candidates, claims, nuisance, p_right, hint, c_right,
                       c_wrong, fabrication, ref_persuasion, ref_length, ref_hint, ref_nuisance,
                       dtype)


@functools.partial(jax.jit, static_argnums=tuple(range(1, 15)))
def _draw_world(key, prompts, candidates, claims, nuisance, p_right, hint, c_right, c_wrong,
                fabrication, ref_persuasion, ref_length, ref_hint, ref_nuisance, dtype):
    right_key, feature_key, claim_key = jax.random.split(key, 3)
    shape = (prompts, candidates)
    right_NxM = jax.random.bernoulli(right_key, p_right, shape).astype(dtype)
    noise_NxMxF = jax.random.normal(feature_key, (*shape, len(FEATURES) + nuisance), dtype)
    z_NxM = (right_NxM - p_right) / math.sqrt(p_right * (1.0 - p_right))
    hint_NxM = hint * z_NxM + math.sqrt(1.0 - hint * hint) * noise_NxMxF[..., HINT]
    phi_NxMxF = noise_NxMxF.at[..., HINT].set(hint_NxM)
    s_NxM = phi_NxMxF[..., PERSUASION]
    logit_wrong = math.log(c_wrong / (1.0 - c_wrong))
    c_NxM = jnp.where(right_NxM > 0, c_right, jax.nn.sigmoid(logit_wrong - fabrication * s_NxM))
    consistent_NxMxK = jax.random.bernoulli(
        claim_key, c_NxM[..., None], (*shape, claims)).astype(dtype)
    w_F = jnp.asarray([ref_persuasion, ref_length, ref_hint] + [ref_nuisance] * nuisance, dtype)
    ref_logp_NxM = jax.nn.log_softmax(phi_NxMxF @ w_F, axis=-1)
    return World(phi_NxMxF, ref_logp_NxM, right_NxM, consistent_NxMxK)


def make_worlds(key, seeds: int | Sequence[int], **kwargs) -> World:
    """One world per seed r from fold_in(key, r), stacked on a leading seed axis [R, ...]."""
    seeds_R = jnp.arange(seeds) if isinstance(seeds, int) else jnp.asarray(seeds)
    return jax.vmap(lambda r: make_world(jax.random.fold_in(key, r), **kwargs))(seeds_R)


def consistency(world: World) -> jax.Array:
    """cbar [.., N, M]: the share of an answer's claims consistent with the facts."""
    return jnp.mean(world.consistent, axis=-1)


def visible_features(world: World) -> jax.Array:
    """[.., N, M, F + 1]: phi with cbar appended, the view of a reader who has the facts."""
    return jnp.concatenate([world.features, consistency(world)[..., None]], axis=-1)


def true_score(world: World) -> jax.Array:
    """R* [.., N, M] = right."""
    return world.right


@dataclasses.dataclass(frozen=True)
class Evaluator:
    """P(approve | y) = q C(y) + (1 - q) sigmoid(confidence s + length l + bias), q = check."""
    check: float = 0.25
    checks_all: bool = False
    confidence: float = 1.5
    length: float = 0.5
    bias: float = 0.0

    def __post_init__(self):
        _check_probability(self.check, "Evaluator.check", closed=True)
        for name in ("confidence", "length", "bias"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"sophistry: Evaluator.{name} must be finite")


def approval_prob(world: World, evaluator: Evaluator) -> jax.Array:
    """P(approve | y) [.., N, M], exact (module docstring)."""
    if evaluator.checks_all:
        checked = jnp.prod(world.consistent, axis=-1)
    else:
        checked = consistency(world)
    surface = jax.nn.sigmoid(evaluator.confidence * world.features[..., PERSUASION]
                             + evaluator.length * world.features[..., LENGTH] + evaluator.bias)
    return evaluator.check * checked + (1.0 - evaluator.check) * surface
