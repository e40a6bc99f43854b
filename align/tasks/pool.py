"""Tier A: an exact pool world, where every policy quantity is a closed-form sum.

Dimension letters: N prompts, M candidate responses per prompt, F features, H hidden units,
B sampled lists or pairs, K items per list, R seeds, T recorded points of a trajectory.

Each prompt has M candidates with features phi (FEATURES, then nuisance dims). A policy is a
distribution over a prompt's candidates, pi(y|x) = softmax_y(log pi_ref(y|x) + f(phi(x, y))), so
win rates, gold rewards, KLs and best-of-n distributions are exact sums over the candidates,
without sampling noise. Only training data (pairs and lists) is sampled. docs/pool_world.md
states the equations and the defaults.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

FEATURES = ("quality", "relevance", "length", "style_u", "style_v")
QUALITY, RELEVANCE, LENGTH, STYLE_U, STYLE_V = range(len(FEATURES))


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["features", "ref_logp", "gold"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class World:
    """Candidates' features [N, M, F], log pi_ref [N, M] (normalised per prompt), gold [N, M]."""
    features: jax.Array
    ref_logp: jax.Array
    gold: jax.Array


def make_world(key, *, prompts: int = 128, candidates: int = 32, nuisance: int = 3,
               length_quality_corr: float = 0.3, ref_quality: float = 0.2,
               ref_relevance: float = 0.1, ref_length: float = 0.5, ref_nuisance: float = 1.0,
               style_tilt: float = 0.0, penalty: float = 2.0, penalty_threshold: float = 2.0,
               dtype=jnp.float32) -> World:
    """Features ~ N(0, 1) per dim (length correlated with quality), pi_ref log-linear in them, gold.

    log pi_ref = w . phi - log Z with w = (ref_quality, ref_relevance, ref_length, style_tilt, 0,
    ref_nuisance, ...); gold g = quality + relevance - penalty * relu(surprisal - threshold)^2,
    surprisal = -log(M pi_ref(y|x)): candidates far rarer under pi_ref than uniform lose gold.
    """
    phi_NxMxF = jax.random.normal(key, (prompts, candidates, len(FEATURES) + nuisance), dtype)
    rho = length_quality_corr
    phi_NxMxF = phi_NxMxF.at[..., LENGTH].set(
        rho * phi_NxMxF[..., QUALITY] + math.sqrt(1.0 - rho * rho) * phi_NxMxF[..., LENGTH])
    w_F = jnp.asarray([ref_quality, ref_relevance, ref_length, style_tilt, 0.0]
                      + [ref_nuisance] * nuisance, dtype)
    ref_logp_NxM = jax.nn.log_softmax(phi_NxMxF @ w_F, axis=-1)
    surprisal_NxM = -ref_logp_NxM - math.log(candidates)
    off_support_NxM = jnp.square(jax.nn.relu(surprisal_NxM - penalty_threshold))
    gold_NxM = phi_NxMxF[..., QUALITY] + phi_NxMxF[..., RELEVANCE] - penalty * off_support_NxM
    return World(phi_NxMxF, ref_logp_NxM, gold_NxM)


def make_worlds(key, seeds: int | Sequence[int], **kwargs) -> World:
    """One world per seed r from fold_in(key, r), stacked on a leading seed axis [R, ...]."""
    seeds_R = jnp.arange(seeds) if isinstance(seeds, int) else jnp.asarray(seeds)
    return jax.vmap(lambda r: make_world(jax.random.fold_in(key, r), **kwargs))(seeds_R)


# ----------------------------------------------------------------------------- judges

@dataclasses.dataclass(frozen=True)
class Judge:
    """P(y > y') = sigmoid(strength (g(y) - g(y')) + cycle C(y, y')); strength inf: 1[g > g']."""
    strength: float = 1.0
    cycle: float = 0.0


GOLD = Judge(strength=math.inf)  # the exact gold comparison, ties 1/2


def _prefer(gold_a, gold_b, style_a, style_b, judge: Judge):
    """P(a > b) from broadcastable gold values and (u, v) style pairs [..., 2]."""
    diff = gold_a - gold_b
    if math.isinf(judge.strength):
        return (diff > 0).astype(diff.dtype) + 0.5 * (diff == 0).astype(diff.dtype)
    # C(a, b) = u_a v_b - v_a u_b: antisymmetric, and cyclic (it is a 2-D cross product).
    cross = style_a[..., 0] * style_b[..., 1] - style_a[..., 1] * style_b[..., 0]
    return jax.nn.sigmoid(judge.strength * diff + judge.cycle * cross)


def _style(features):
    return features[..., STYLE_U:STYLE_V + 1]


def preference_matrix(world: World, judge: Judge) -> jax.Array:
    """P[n, i, j] = P(y_i > y_j | x_n) under the judge, [N, M, M]; P + P^T = 1, diagonal 1/2."""
    style_NxMx2 = _style(world.features)
    return _prefer(world.gold[:, :, None], world.gold[:, None, :],
                   style_NxMx2[:, :, None], style_NxMx2[:, None, :], judge)


# ----------------------------------------------------------------------------- policies

def init_params(key, features: int, *, width: int = 0, dtype=jnp.float32) -> dict:
    """f = 0 at init: zero linear weights, or a tanh MLP with a random first layer, zero output."""
    if width == 0:
        return {"w": jnp.zeros((features,), dtype)}
    w1_FxH = jax.random.normal(key, (features, width), dtype) / math.sqrt(features)
    return {"w1": w1_FxH, "b1": jnp.zeros((width,), dtype), "w2": jnp.zeros((width,), dtype)}


def score(params: dict, features):
    """f(phi) over the last axis of `features`: phi . w, or tanh(phi W1 + b1) . w2."""
    if "w" in params:
        return features @ params["w"]
    return jnp.tanh(features @ params["w1"] + params["b1"]) @ params["w2"]


def policy_logits(params: dict, world: World) -> jax.Array:
    """log pi_theta(y|x) = log_softmax(log pi_ref + f_theta(phi)), [N, M]."""
    return jax.nn.log_softmax(world.ref_logp + score(params, world.features), axis=-1)


def tilted_logits(ref_logp_NxM, reward_NxM, beta) -> jax.Array:
    """pi ∝ pi_ref exp(r / beta): the maximiser of E_pi[r] - beta KL(pi || pi_ref)."""
    return jax.nn.log_softmax(ref_logp_NxM + reward_NxM / beta, axis=-1)


# ----------------------------------------------------------------------------- exact metrics

def win_rate_N(logp_a_NxM, logp_b_NxM, pref_NxMxM) -> jax.Array:
    """Per prompt, sum_ij pi_a(i) pi_b(j) P(i > j)."""
    return jnp.einsum("ni,nj,nij->n", jnp.exp(logp_a_NxM), jnp.exp(logp_b_NxM), pref_NxMxM)


def expected_N(logp_NxM, values_NxM) -> jax.Array:
    """Per prompt, E_pi[values]."""
    return jnp.sum(jnp.exp(logp_NxM) * values_NxM, axis=-1)


def kl_N(logp_NxM, ref_logp_NxM) -> jax.Array:
    """Per prompt, KL(pi || pi_ref) = sum pi (log pi - log pi_ref) (0 log 0 = 0)."""
    p_NxM = jnp.exp(logp_NxM)
    return jnp.sum(jnp.where(p_NxM > 0, p_NxM * (logp_NxM - ref_logp_NxM), 0.0), axis=-1)


def evaluate(logp_NxM, world: World, pref_NxMxM) -> dict:
    """Means over prompts: win rate against pi_ref under pref, expected gold, KL to pi_ref."""
    return {"win_rate": jnp.mean(win_rate_N(logp_NxM, world.ref_logp, pref_NxMxM)),
            "gold": jnp.mean(expected_N(logp_NxM, world.gold)),
            "kl": jnp.mean(kl_N(logp_NxM, world.ref_logp))}


def best_of_n_logits(ref_logp_NxM, proxy_NxM, n) -> jax.Array:
    """log P(best of n draws from pi_ref by proxy = y), ties split uniformly among tied draws.

    With F(y) = P(r(Y) <= r(y)), F(y-) = P(r(Y) < r(y)) and G(y) = F(y) - F(y-) the mass of y's
    tie group: P(y) = pi_ref(y) / G(y) (F(y)^n - F(y-)^n); for distinct scores F(y)^n - F(y-)^n.
    """
    r_i, r_j = proxy_NxM[:, :, None], proxy_NxM[:, None, :]
    ref_j = ref_logp_NxM[:, None, :]
    log_at_most_NxM = jax.nn.logsumexp(jnp.where(r_j <= r_i, ref_j, -jnp.inf), axis=-1)
    log_below_NxM = jax.nn.logsumexp(jnp.where(r_j < r_i, ref_j, -jnp.inf), axis=-1)
    log_tied_NxM = jax.nn.logsumexp(jnp.where(r_j == r_i, ref_j, -jnp.inf), axis=-1)
    # log(F^n - F-^n) = n log F + log(1 - (F- / F)^n), exact when F- = 0.
    log_gap_NxM = n * log_at_most_NxM + jnp.log(-jnp.expm1(n * (log_below_NxM - log_at_most_NxM)))
    return jax.nn.log_softmax(ref_logp_NxM - log_tied_NxM + log_gap_NxM, axis=-1)


def best_of_n_kl_bound(n):
    """log n - (n - 1) / n: KL(best-of-n || pi_ref) for continuous scores, an upper bound here."""
    return jnp.log(n) - (n - 1.0) / n


# ----------------------------------------------------------------------------- sampled data

class Pairs(NamedTuple):
    prompts: jax.Array  # [P] prompt indices
    first: jax.Array  # [P] candidate indices
    second: jax.Array
    label: jax.Array  # [P] 1.0 where the judge's coin says first > second


class Lists(NamedTuple):
    prompts: jax.Array  # [B]
    items: jax.Array  # [B, K] candidate indices (drawn with replacement)
    labels: jax.Array  # [B, K]


def _draw(key, logp_NxM, count: int, size: int):
    """prompts_B uniform over the world's prompts, items_BxK iid from pi(.|x) for each prompt."""
    prompt_key, item_key = jax.random.split(key)
    prompts_B = jax.random.randint(prompt_key, (count,), 0, logp_NxM.shape[0])
    items_BxK = jax.random.categorical(item_key, logp_NxM[prompts_B][:, None, :], axis=-1,
                                       shape=(count, size))
    return prompts_B, items_BxK


def sample_pairs(key, world: World, logp_NxM, judge: Judge, count: int) -> Pairs:
    """`count` pairs (y, y') iid from pi(.|x), labelled by one Bernoulli(P_judge(y > y')) each."""
    draw_key, coin_key = jax.random.split(key)
    prompts_P, items_Px2 = _draw(draw_key, logp_NxM, count, 2)
    gold_Px2 = world.gold[prompts_P[:, None], items_Px2]
    style_Px2x2 = _style(world.features[prompts_P[:, None], items_Px2])
    p_P = _prefer(gold_Px2[:, 0], gold_Px2[:, 1], style_Px2x2[:, 0], style_Px2x2[:, 1], judge)
    label_P = jax.random.bernoulli(coin_key, p_P).astype(world.gold.dtype)
    return Pairs(prompts_P, items_Px2[:, 0], items_Px2[:, 1], label_P)


def list_labels(world: World, prompts_B, items_BxK, judge: Judge | None) -> jax.Array:
    """psi_k = (1/K) sum_i P_judge(y_k > y_i) over the list (LiPO's ranker); judge None: gold."""
    gold_BxK = world.gold[prompts_B[:, None], items_BxK]
    if judge is None:
        return gold_BxK
    style_BxKx2 = _style(world.features[prompts_B[:, None], items_BxK])
    pref_BxKxK = _prefer(gold_BxK[:, :, None], gold_BxK[:, None, :],
                         style_BxKx2[:, :, None], style_BxKx2[:, None, :], judge)
    return jnp.mean(pref_BxKxK, axis=-1)


def sample_lists(key, world: World, logp_NxM, count: int, size: int,
                 judge: Judge | None = None) -> Lists:
    """`count` lists of `size` candidates iid from pi(.|x), with list_labels."""
    prompts_B, items_BxK = _draw(key, logp_NxM, count, size)
    return Lists(prompts_B, items_BxK, list_labels(world, prompts_B, items_BxK, judge))


# ----------------------------------------------------------------------------- proxy rewards

def bt_nll(params: dict, world: World, pairs: Pairs) -> jax.Array:
    """Mean Bradley-Terry NLL -[l log sigma(r - r') + (1 - l) log sigma(r' - r)] of a proxy."""
    diff_P = (score(params, world.features[pairs.prompts, pairs.first])
              - score(params, world.features[pairs.prompts, pairs.second]))
    return -jnp.mean(pairs.label * jax.nn.log_sigmoid(diff_P)
                     + (1.0 - pairs.label) * jax.nn.log_sigmoid(-diff_P))


def fit_proxy(key, world: World, judge: Judge, *, pairs: int, width: int = 0, steps: int = 300,
              lr: float = 0.05, logp_NxM=None) -> dict:
    """Proxy r_psi(phi) (linear, or an MLP of `width`) by full-batch Adam on the BT likelihood of
    `pairs` pairs drawn from pi_ref (or logp_NxM) and labelled by the judge; deterministic."""
    data_key, init_key = jax.random.split(key)
    data = sample_pairs(data_key, world, world.ref_logp if logp_NxM is None else logp_NxM,
                        judge, pairs)
    params = init_params(init_key, world.features.shape[-1], width=width,
                         dtype=world.features.dtype)
    if width:  # a zero output layer gives the hidden units no gradient at the first step
        params["w2"] = jax.random.normal(jax.random.fold_in(init_key, 1), (width,),
                                         params["w2"].dtype) / math.sqrt(width)
    opt = optax.adam(lr)

    def step(carry, _):
        params, opt_state = carry
        grads = jax.grad(bt_nll)(params, world, data)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
    return params


# ----------------------------------------------------------------------------- trainer

class TrainResult(NamedTuple):
    params: dict  # leaves with a leading seed axis [R, ...]
    trajectory: dict  # metric -> [R, T], exact metrics on the evaluation world
    steps: tuple  # the T steps at which the trajectory was recorded (the last is `steps`)


ListLossFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def train(loss_fn: ListLossFn, world: World, key, *, steps: int, lists_per_step: int,
          list_size: int, lr: float, seeds: int | Sequence[int], beta=1.0,
          judge: Judge | None = Judge(), width: int = 0, eval_world: World | None = None,
          eval_judge: Judge = GOLD, record_every: int = 0) -> TrainResult:
    """Adam on mean_B loss_fn(scores_BxK, labels_BxK, mask_BxK) over lists drawn from pi_ref.

    Every step draws `lists_per_step` fresh lists of `list_size` candidates from pi_ref, labelled
    by list_labels(judge); scores are s = beta (log pi_theta - log pi_ref) of the drawn items
    (beta a scalar, or one value per seed, so a sweep over beta can run as one vmap).
    A `lax.scan` over steps, `vmap` over seeds; seed r uses fold_in(key, r) for its data and
    initialisation (so a seed's run does not depend on which other seeds run beside it). A world
    (and eval_world, default the training world) is shared by all seeds, or has a leading seed
    axis [R, N, ...] to give each seed its own. Metrics (evaluate, against pi_ref under
    eval_judge) every record_every steps (0: at the end only).
    """
    every = record_every or steps
    if steps % every:
        raise ValueError(f"train: steps ({steps}) must be a multiple of record_every ({every})")
    seeds_R = jnp.arange(seeds) if isinstance(seeds, int) else jnp.asarray(seeds)
    beta_R = jnp.broadcast_to(jnp.asarray(beta, world.gold.dtype), seeds_R.shape)
    eval_world = world if eval_world is None else eval_world
    axes = tuple(0 if w.features.ndim == 4 else None for w in (world, eval_world))
    run_fn = _trainer(loss_fn, steps, every, lists_per_step, list_size, lr, judge, width,
                      eval_judge, axes)
    params, trajectory = run_fn(seeds_R, beta_R, world, eval_world, key)
    return TrainResult(params, trajectory, tuple(range(every, steps + 1, every)))


@functools.lru_cache(maxsize=64)
def _trainer(loss_fn, steps, every, lists_per_step, list_size, lr, judge, width, eval_judge,
             axes):
    """The jitted (seeds_R, beta_R, world, eval_world, key) -> (params, trajectory) of one
    configuration; cached, so repeated runs of a configuration compile once."""
    opt = optax.adam(lr)

    def one_seed(seed, beta, world, eval_world, key):
        init_key, data_key = jax.random.split(jax.random.fold_in(key, seed))
        params = init_params(init_key, world.features.shape[-1], width=width,
                             dtype=world.features.dtype)
        eval_pref_NxMxM = preference_matrix(eval_world, eval_judge)
        mask_BxK = jnp.ones((lists_per_step, list_size), world.gold.dtype)

        def loss(params, lists: Lists):
            logratio_NxM = policy_logits(params, world) - world.ref_logp
            scores_BxK = beta * logratio_NxM[lists.prompts[:, None], lists.items]
            return jnp.mean(loss_fn(scores_BxK, lists.labels, mask_BxK))

        def step(carry, t):
            params, opt_state = carry
            lists = sample_lists(jax.random.fold_in(data_key, t), world, world.ref_logp,
                                 lists_per_step, list_size, judge)
            grads = jax.grad(loss)(params, lists)
            updates, opt_state = opt.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), None

        def chunk(carry, t0):
            carry, _ = jax.lax.scan(step, carry, t0 + jnp.arange(every))
            return carry, evaluate(policy_logits(carry[0], eval_world), eval_world,
                                   eval_pref_NxMxM)

        (params, _), trajectory = jax.lax.scan(chunk, (params, opt.init(params)),
                                               jnp.arange(0, steps, every))
        return params, trajectory

    return jax.jit(jax.vmap(one_seed, in_axes=(0, 0, *axes, None)))
