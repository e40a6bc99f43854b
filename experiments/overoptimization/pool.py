"""Gao et al. (arXiv 2210.10760) on the exact pool world (Tier A): best-of-n and KL-tilted policies
against Bradley-Terry proxies of several capacities and data sizes, with pre-registered verdicts.

    python experiments/overoptimization/pool.py --quick    # 16 seeds, 3 data sizes, 2 capacities
    python experiments/overoptimization/pool.py            # full protocol (32 seeds; README.md)
    python experiments/overoptimization/pool.py --publish  # the same, then pool_results.md and
                                                           # pool_*.png next to this file

Outputs go to ~/align-runs/experiments/overoptimization_pool (overoptimization_pool_quick for
--quick; $ALIGN_RUNS replaces ~/align-runs) or --out.

Seed r draws a training world and a held-out world of align/tasks/pool.py, one sample of pairs
from pi_ref on the training world labelled by the exact gold comparison (Gao's deterministic
labels), and a proxy initialisation. A proxy trained on P pairs uses the first P of that sample
(the data sets are nested), and every data size of one capacity starts from the same
initialisation, so comparisons across proxies are paired by seed. On the held-out prompts, for
each proxy r (standardised to mean 0, sd 1 under pi_ref on the training world):
  - best of n draws from pi_ref by r, for n on a grid (exact, by order statistics);
  - pi_beta ∝ pi_ref exp(r / beta), the optimum of E[r] - beta KL, for beta on a grid;
each with its exact gold reward relative to pi_ref, proxy reward and KL(pi || pi_ref), d = sqrt(KL).
Dimension letters: R seeds, N prompts, M candidates, S points of a curve, Z proxy data sizes.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
from typing import Sequence

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import harness  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from align.evaluate import stats  # noqa: E402
from align.tasks import pool  # noqa: E402
from third_party import published  # noqa: E402

NAME = "overoptimization_pool"
RESULTS_MD = "pool_results.md"
PLOTS = ("pool_gold_vs_d.png", "pool_coefficients.png")
METHODS = ("bon", "tilt")
FORM = {"bon": "bon", "tilt": "rl"}  # Gao's form fitted to each method's curve
METHOD_LABELS = {"bon": "best-of-n", "tilt": "KL-tilted (RL)"}

# Protocol (README.md, "Tier A"): fixed before the full run.
KEYS = {"train_worlds": 1, "eval_worlds": 2, "pairs": 3, "init": 4}
JUDGE = pool.GOLD  # labels: the exact gold comparison, as Gao's gold reward model labels
STEPS, LR = 300, 0.05  # full-batch Adam on the Bradley-Terry likelihood
BON_N = tuple(float(2.0 ** (k / 4)) for k in range(41))  # n = 1 ... 1024
INV_BETA = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 7.0,
            8.0, 10.0, 12.0, 14.0, 16.0, 20.0, 24.0, 32.0, 48.0, 64.0)  # 1 / beta, r in sd units
ORACLES = {"gold": "the gold itself (null: no over-optimisation)",
           "no_penalty": "quality + relevance (the gold without its off-support penalty)"}
# Verdicts.
ALPHA = 0.05
DELTA = 0.05  # gold units: the smallest rise and fall that make a hump
P0 = 0.5  # share claims: reproduced when more than half the seeds show the pattern
PAPER_SHARE = 1.0  # Gao: every proxy
RESOLUTION = 1e-6  # per-seed effects are rounded to this (float32 sums carry ~1e-7 noise)
QUANTITY_LABELS = {"peak_d": "peak d", "peak_gold": "peak gold", "alpha": "α",
                   "neg_beta": "−β"}
# Smallest effect of interest and a stand-in paper effect (the paper shows these trends only
# as figures): per doubling of the pairs, and for the widest capacity minus linear.
SMALLEST = {"peak_d": 0.005, "peak_gold": 0.005, "alpha": 0.005, "neg_beta": 0.0025}
PAPER = {"peak_d": 0.02, "peak_gold": 0.02, "alpha": 0.02, "neg_beta": 0.01}
KL_TOLERANCE = 1e-4  # nats: float32 slack when checking KL_bon <= log n - (n - 1) / n
LIMIT_POOLS = (32, 256, 2048)  # uniform pools for the continuum limit of KL_bon
LIMIT_N = (2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
LIMIT_TOLERANCE = 1e-3  # nats, at the largest pool

MODES = {
    "full": dict(seeds=32, prompts=128, eval_prompts=256, pairs=(128, 512, 2048, 8192, 32768),
                 widths=(0, 4, 16), steps=STEPS),
    "quick": dict(seeds=16, prompts=128, eval_prompts=256, pairs=(128, 2048, 32768),
                  widths=(0, 16), steps=STEPS),
    "tiny": dict(seeds=3, prompts=16, eval_prompts=16, pairs=(32, 128), widths=(0, 4), steps=20),
}


# ----------------------------------------------------------------------------- exact curves

def fit_proxy(key, world: pool.World, pairs: pool.Pairs, *, width: int, steps: int,
              lr: float = LR) -> dict:
    """argmin of pool.bt_nll on the given pairs by full-batch Adam, from init_params (an MLP's
    output layer random too, so its hidden units get a gradient at the first step)."""
    params = pool.init_params(key, world.features.shape[-1], width=width,
                              dtype=world.features.dtype)
    if width:
        params["w2"] = jax.random.normal(jax.random.fold_in(key, 1), (width,),
                                         params["w2"].dtype) / math.sqrt(width)
    opt = optax.adam(lr)

    def step(carry, _):
        params, opt_state = carry
        updates, opt_state = opt.update(jax.grad(pool.bt_nll)(params, world, pairs), opt_state)
        return (optax.apply_updates(params, updates), opt_state), None

    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
    return params


def standardise(ref_logp_NxM, reward_NxM):
    """(mu, sd): mean and sd of r under pi_ref, pooled over prompts."""
    p_NxM = jnp.exp(ref_logp_NxM)
    mu = jnp.mean(jnp.sum(p_NxM * reward_NxM, axis=-1))
    return mu, jnp.sqrt(jnp.mean(jnp.sum(p_NxM * jnp.square(reward_NxM - mu), axis=-1)))


def _point(logp_NxM, world: pool.World, reward_NxM) -> dict:
    """KL(pi || pi_ref), and E_pi - E_pi_ref of the gold and of the proxy, means over prompts."""
    def gain(values_NxM):
        return jnp.mean(pool.expected_N(logp_NxM, values_NxM)
                        - pool.expected_N(world.ref_logp, values_NxM))
    return {"kl": jnp.mean(pool.kl_N(logp_NxM, world.ref_logp)), "gold": gain(world.gold),
            "proxy": gain(reward_NxM)}


def bon_curve(world: pool.World, reward_NxM) -> dict:
    """{kl, gold, proxy}[S] of best of n by the reward, n over BON_N."""
    return jax.lax.map(
        lambda n: _point(pool.best_of_n_logits(world.ref_logp, reward_NxM, n), world, reward_NxM),
        jnp.asarray(BON_N, world.gold.dtype))


def tilt_curve(world: pool.World, reward_NxM) -> dict:
    """{kl, gold, proxy}[S] of pi ∝ pi_ref exp(t r), t = 1 / beta over INV_BETA."""
    return jax.lax.map(
        lambda t: _point(jax.nn.log_softmax(world.ref_logp + t * reward_NxM, axis=-1), world,
                         reward_NxM),
        jnp.asarray(INV_BETA, world.gold.dtype))


def agreement(world: pool.World, reward_NxM):
    """P(r orders y, y' as the gold does) for y, y' iid from pi_ref, pairs of unequal gold."""
    p_NxM = jnp.exp(world.ref_logp)
    pair_NxMxM = p_NxM[:, :, None] * p_NxM[:, None, :]
    dg_NxMxM = world.gold[:, :, None] - world.gold[:, None, :]
    dr_NxMxM = reward_NxM[:, :, None] - reward_NxM[:, None, :]
    agree = jnp.sum(pair_NxMxM * (dg_NxMxM * dr_NxMxM > 0))
    return agree / jnp.sum(pair_NxMxM * (dg_NxMxM != 0))


def curves(train_reward_NxM, eval_world: pool.World, eval_reward_NxM, train_world) -> dict:
    """Both methods' curves on the held-out world for a reward standardised on the training
    world, with the reward's agreement with the gold there."""
    mu, sd = standardise(train_world.ref_logp, train_reward_NxM)
    r_NxM = (eval_reward_NxM - mu) / sd
    return {"bon": bon_curve(eval_world, r_NxM), "tilt": tilt_curve(eval_world, r_NxM),
            "agreement": agreement(eval_world, r_NxM)}


def oracle_reward(name: str, world: pool.World):
    """The oracle proxies: the gold, or the gold without its penalty (quality + relevance)."""
    if name == "gold":
        return world.gold
    return world.features[..., pool.QUALITY] + world.features[..., pool.RELEVANCE]


@functools.lru_cache(maxsize=None)
def _proxy_fn(width: int, size: int, steps: int):
    """jit(vmap over seeds) of (train world, eval world, pairs, init key) -> curves, fit NLL."""
    def one(train_w, eval_w, pairs, key):
        pairs = jax.tree.map(lambda x: x[:size], pairs)
        params = fit_proxy(key, train_w, pairs, width=width, steps=steps)
        out = curves(pool.score(params, train_w.features), eval_w,
                     pool.score(params, eval_w.features), train_w)
        out["nll"] = pool.bt_nll(params, train_w, pairs)
        return out
    return jax.jit(jax.vmap(one))


@functools.lru_cache(maxsize=None)
def _oracle_fn(name: str):
    return jax.jit(jax.vmap(lambda train_w, eval_w: curves(
        oracle_reward(name, train_w), eval_w, oracle_reward(name, eval_w), train_w)))


# ----------------------------------------------------------------------------- runs

def proxy_name(width: int, size: int) -> str:
    return f"{'linear' if width == 0 else f'mlp{width}'}_{size}"


def capacity_label(width: int) -> str:
    return "linear" if width == 0 else f"MLP width {width}"


def seed_data(mode: dict):
    """Per-seed training and held-out worlds, the largest pair sample and the init keys."""
    r = mode["seeds"]
    train_w = pool.make_worlds(jax.random.key(KEYS["train_worlds"]), r, prompts=mode["prompts"])
    eval_w = pool.make_worlds(jax.random.key(KEYS["eval_worlds"]), r,
                              prompts=mode["eval_prompts"])
    count = max(mode["pairs"])
    pairs = jax.vmap(lambda s, w: pool.sample_pairs(
        jax.random.fold_in(jax.random.key(KEYS["pairs"]), s), w, w.ref_logp, JUDGE, count))(
            jnp.arange(r), train_w)
    keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(KEYS["init"]), s))(jnp.arange(r))
    return train_w, eval_w, pairs, keys


def _listed(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float64).tolist(), tree)


def run_all(mode: dict, out: str) -> dict:
    """{"proxies": {name: curves}, "oracles": {name: curves}}, each curve [R][S]; cached in
    out/runs, one file per proxy."""
    data = functools.cache(lambda: seed_data(mode))  # only when some run is not cached
    spec = {"mode": {k: list(v) if isinstance(v, tuple) else v for k, v in mode.items()},
            "keys": KEYS, "bon_n": list(BON_N), "inv_beta": list(INV_BETA), "lr": LR}
    res = {"proxies": {}, "oracles": {}}
    for width in mode["widths"]:
        for size in mode["pairs"]:
            name = proxy_name(width, size)
            harness.log(f"proxy {name}")
            res["proxies"][name] = harness.cached(
                os.path.join(out, "runs", f"{name}.json"), dict(spec, proxy=name),
                lambda: _listed(_proxy_fn(width, size, mode["steps"])(*data())))
    for name in ORACLES:
        res["oracles"][name] = harness.cached(
            os.path.join(out, "runs", f"oracle_{name}.json"), dict(spec, oracle=name),
            lambda: _listed(_oracle_fn(name)(*data()[:2])))
    return res


# ----------------------------------------------------------------------------- per-curve rules

def curve(setting: dict, method: str):
    """(d_RxS, gold_RxS, proxy_RxS) of one method's curves, d = sqrt(KL) (KL clipped at 0)."""
    c = setting[method]
    kl = np.maximum(np.asarray(c["kl"], np.float64), 0.0)
    return np.sqrt(kl), np.asarray(c["gold"], np.float64), np.asarray(c["proxy"], np.float64)


def vertex(d_3, g_3) -> tuple[float, float]:
    """(d, gold) at the vertex of the parabola through three points around a curve's highest
    point, kept within [d_0, d_2]: the peak between the grid points."""
    (d0, d1, d2), (g0, g1, g2) = d_3, g_3
    den = (d0 - d1) * (d0 - d2) * (d1 - d2)
    a = (d2 * (g1 - g0) + d1 * (g0 - g2) + d0 * (g2 - g1)) / den if den else 0.0
    if not a < 0:  # flat or not concave there: the grid point itself
        return float(d1), float(g1)
    b = (d2 * d2 * (g0 - g1) + d1 * d1 * (g2 - g0) + d0 * d0 * (g1 - g2)) / den
    x = min(max(-b / (2 * a), d0), d2)
    return float(x), float(g1 + a * (x - d1) ** 2 + (2 * a * d1 + b) * (x - d1))


def peaks(d_RxS, gold_RxS, proxy_RxS, *, delta: float = DELTA) -> dict:
    """Per seed, the highest gold point i* of a curve and whether it is a hump:
    0 < i* < S - 1, gold(i*) - gold(0) >= delta, gold(i*) - gold(S-1) >= delta, and the proxy
    still rises after it, proxy(S-1) > proxy(i*). "d" and "gold" are the parabolic vertex
    around an interior i* (the grid point itself at an end)."""
    d, g, p = (np.asarray(x, np.float64) for x in (d_RxS, gold_RxS, proxy_RxS))
    rows = np.arange(g.shape[0])
    i_R = np.argmax(g, axis=1)
    top_R = g[rows, i_R]
    interior_R = (i_R > 0) & (i_R < g.shape[1] - 1)
    at = [vertex(d[r, i - 1:i + 2], g[r, i - 1:i + 2]) if inside else (d[r, i], g[r, i])
          for r, (i, inside) in enumerate(zip(i_R, interior_R))]
    out = {"index": i_R, "d": np.array([x for x, _ in at]), "gold": np.array([y for _, y in at]),
           "rise": top_R - g[:, 0], "fall": top_R - g[:, -1],
           "proxy_rise": p[:, -1] - p[rows, i_R], "interior": interior_R}
    out["hump"] = (interior_R & (out["rise"] >= delta) & (out["fall"] >= delta)
                   & (out["proxy_rise"] > 0))
    return out


def form_fits(form: str, d_RxS, gold_RxS) -> list:
    """stats.fit_verdict of Gao's form on each seed's curve."""
    return [stats.fit_verdict(form, d_S, g_S) for d_S, g_S in zip(d_RxS, gold_RxS)]


def quantities(setting: dict, method: str) -> dict:
    """Per seed: peak d, peak gold, Gao's alpha and -beta (least squares on the whole curve)."""
    d, g, p = curve(setting, method)
    top = peaks(d, g, p)
    fits = [stats.fit(FORM[method], d_S, g_S) for d_S, g_S in zip(d, g)]
    return {"peak_d": top["d"], "peak_gold": top["gold"],
            "alpha": np.array([f.alpha for f in fits]),
            "neg_beta": -np.array([f.beta for f in fits])}


def log2_slopes(sizes_Z, values_RxZ) -> np.ndarray:
    """Per seed, the least-squares slope of values against log2(size)."""
    x_Z = np.log2(np.asarray(sizes_Z, np.float64))
    x_Z = x_Z - x_Z.mean()
    v = np.asarray(values_RxZ, np.float64)
    return (v - v.mean(axis=1, keepdims=True)) @ x_Z / np.sum(x_Z * x_Z)


# ----------------------------------------------------------------------------- verdicts

def share_part(pattern_R) -> stats.Judgement:
    """More than P0 of the seeds show the pattern (exact binomial / Clopper-Pearson)."""
    return stats.share(np.asarray(pattern_R, bool), p0=P0, paper_share=PAPER_SHARE,
                       smallest_share=P0, alpha=ALPHA)


def effect_part(effect_R, *, paper_effect: float, smallest: float) -> tuple:
    """(Judgement, minimum detectable effect) of a per-seed effect > 0 by Student t; effects are
    rounded to RESOLUTION, and effects without spread (identical arms) are a point interval."""
    x = np.round(np.asarray(effect_R, np.float64) / RESOLUTION) * RESOLUTION
    if np.ptp(x) == 0:
        e = float(x[0])
        v = stats.verdict(e, e, paper_effect=paper_effect, smallest_effect=smallest)
        return stats.Judgement(v, e, e, e, float(e <= 0), float(e >= smallest), x.size,
                               "t (no spread)"), math.nan
    j = stats.directional(x, paper_effect=paper_effect, smallest_effect=smallest, alpha=ALPHA)
    return j, stats.observed_minimum_detectable_effect(x, alpha=ALPHA)


def claim(text: str, scope: str, parts: list, power: str) -> dict:
    """A claim whose parts (label, Judgement, extra) must all hold: stats.conjunction, Holm."""
    conj = stats.conjunction([j for _, j, _ in parts], alpha=ALPHA)
    rows = []
    for (label, j, extra), held in zip(parts, conj.held):
        rows.append(dict(extra, part=label, verdict=j.verdict, estimate=j.estimate, low=j.low,
                         high=j.high, p_reproduce=j.p_reproduce, p_contradict=j.p_contradict,
                         n=j.n, method=j.method, held_after_holm=held))
    return {"claim": text, "scope": scope, "verdict": conj.verdict, "parts": rows,
            "power": power}


def share_power(seeds: int) -> str:
    share = stats.minimum_detectable_share(seeds, P0, alpha=ALPHA)
    test = f"the one-sided exact binomial test against {P0} (level {ALPHA})"
    if math.isnan(share):
        return f"with {seeds} seeds no outcome passes {test}: nothing is detectable"
    return (f"with {seeds} seeds {test} detects a true share of {share:.2f} or more with power "
            f"0.8 (Gao: every proxy, share {PAPER_SHARE:.1f})")


def form_claim(res: dict, method: str) -> dict:
    """Claim 1: Gao's form passes fit_verdict on more than half the seeds, for every proxy."""
    parts = []
    for name, setting in res["proxies"].items():
        fv = form_fits(FORM[method], *curve(setting, method)[:2])
        term = "d" if method == "bon" else "log d"
        parts.append((f"{name}: share of seeds where d(α − β {term}) passes",
                      share_part([f.passes for f in fv]),
                      {"proxy": name, "k": int(sum(f.passes for f in fv))}))
    form = published.OVEROPTIMIZATION["forms"][FORM[method]]
    return claim(f"{METHOD_LABELS[method]} gold follows {form}", METHOD_LABELS[method], parts,
                 share_power(parts[0][1].n))


def hump_claim(res: dict) -> dict:
    """Claim 2: more than half the seeds show a hump, for every proxy and both methods."""
    parts = []
    for name, setting in res["proxies"].items():
        for method in METHODS:
            hump_R = peaks(*curve(setting, method))["hump"]
            parts.append((f"{name}, {METHOD_LABELS[method]}: share of seeds with a hump",
                          share_part(hump_R), {"proxy": name, "k": int(hump_R.sum())}))
    return claim(published.OVEROPTIMIZATION["claims"][0], "every proxy, both methods", parts,
                 share_power(parts[0][1].n))


def null_hump(res: dict) -> dict:
    """Claim 2's rule on the proxy that is the gold itself: it must not pass."""
    out = {}
    for method in METHODS:
        hump_R = peaks(*curve(res["oracles"]["gold"], method))["hump"]
        j = share_part(hump_R)
        out[method] = {"k": int(hump_R.sum()), "n": int(hump_R.size), "verdict": j.verdict}
    return out


def size_parts(res: dict, mode: dict, keys: Sequence[str]) -> tuple[list, list]:
    """Claim 3's parts for the given quantities: (data parts, capacity parts).

    Data: per method and capacity, the per-seed slope of the quantity against log2(pairs) > 0.
    Capacity: per method, at the most pairs, the widest capacity minus linear > 0. Paired by
    seed (same world, nested pairs, same initialisation); -beta stands for "beta shrinks".
    """
    sizes, widths = sorted(mode["pairs"]), sorted(mode["widths"])
    q = {(w, s, m): quantities(res["proxies"][proxy_name(w, s)], m)
         for w in widths for s in sizes for m in METHODS}

    def part(label, effect_R, key, **extra):
        j, mde = effect_part(effect_R, paper_effect=PAPER[key], smallest=SMALLEST[key])
        return (label, j, dict(extra, quantity=key, mde=mde, paper_effect=PAPER[key],
                               smallest=SMALLEST[key]))

    data, capacity = [], []
    for m in METHODS:
        for key in keys:
            if len(sizes) >= 2:
                data += [part(f"{METHOD_LABELS[m]}, {capacity_label(w)}: slope of "
                              f"{QUANTITY_LABELS[key]} per doubling of pairs",
                              log2_slopes(sizes, np.stack([q[(w, s, m)][key] for s in sizes], 1)),
                              key, method=m, width=w) for w in widths]
            if len(widths) >= 2:
                big, small = widths[-1], widths[0]
                capacity.append(part(
                    f"{METHOD_LABELS[m]}, {sizes[-1]} pairs: {QUANTITY_LABELS[key]}, "
                    f"{capacity_label(big)} − {capacity_label(small)}",
                    q[(big, sizes[-1], m)][key] - q[(small, sizes[-1], m)][key], key, method=m))
    return data, capacity


def effect_power(parts: list) -> str:
    """The largest ratio of a part's minimum detectable effect to its stand-in paper effect."""
    finite = [(x["mde"] / x["paper_effect"], x["quantity"]) for _, _, x in parts
              if not math.isnan(x["mde"])]
    if not finite:
        return "no seed-to-seed spread in any part: nothing to detect"
    worst, key = max(finite)
    can = "can" if worst <= 1 else "cannot"
    return (f"minimum detectable effects (one-sided t, level {ALPHA}, power 0.8, observed sd "
            f"over {parts[0][1].n} seeds) are at most {worst:.2f}× the stand-in paper effect "
            f"(largest for {QUANTITY_LABELS[key]}): this experiment {can} detect effects of the "
            "stand-in size in every part")


def size_claims(res: dict, mode: dict) -> list[dict]:
    """Claims 3a-3c: more pairs, and more capacity, give a later peak and a higher peak gold;
    alpha grows and beta shrinks with both."""
    out = []
    data, capacity = size_parts(res, mode, ("peak_d", "peak_gold"))
    if data:
        out.append(claim("more proxy data delays the peak and raises the peak gold",
                         "per capacity, over pairs", data, effect_power(data)))
    if capacity:
        out.append(claim("more proxy capacity delays the peak and raises the peak gold",
                         "at the most pairs", capacity, effect_power(capacity)))
    data, capacity = size_parts(res, mode, ("alpha", "neg_beta"))
    if data + capacity:
        out.append(claim("α grows and β shrinks with proxy size (data and capacity)",
                         "per capacity over pairs; capacity at the most pairs",
                         data + capacity, effect_power(data + capacity)))
    return out


def bound_gap(res: dict) -> dict:
    """max over every best-of-n curve point of KL_exact - (log n - (n - 1) / n), and the mean
    gap formula - exact at each n (the finite pool's shortfall)."""
    bound_S = np.asarray(pool.best_of_n_kl_bound(np.asarray(BON_N)), np.float64)
    kl_XxS = np.concatenate([np.asarray(s["bon"]["kl"], np.float64)
                             for group in ("proxies", "oracles") for s in res[group].values()])
    gap_XxS = bound_S - kl_XxS
    return {"max_excess": float(np.max(-gap_XxS)), "mean_gap_S": gap_XxS.mean(axis=0).tolist(),
            "min_gap_S": gap_XxS.min(axis=0).tolist(), "max_gap_S": gap_XxS.max(axis=0).tolist(),
            "mean_kl_S": kl_XxS.mean(axis=0).tolist(), "bound_S": bound_S.tolist()}


def uniform_pool_gaps(sizes=LIMIT_POOLS, ns=LIMIT_N) -> np.ndarray:
    """formula - exact KL of best of n on one prompt with M equally likely candidates and
    distinct scores, [len(sizes), len(ns)]: the continuum limit is M -> infinity."""
    kl_fn = jax.jit(jax.vmap(lambda ref_1xM, score_1xM, n: pool.kl_N(
        pool.best_of_n_logits(ref_1xM, score_1xM, n), ref_1xM)[0], in_axes=(None, None, 0)))
    bound_S = np.asarray(pool.best_of_n_kl_bound(np.asarray(ns, np.float64)))
    return np.stack([bound_S - np.asarray(kl_fn(jnp.full((1, m), -math.log(m)),
                                                jnp.arange(m, dtype=jnp.float32)[None],
                                                jnp.asarray(ns, jnp.float32)), np.float64)
                     for m in sizes])


def kl_claim(res: dict) -> dict:
    """Claim 4 (an exact check): KL_bon <= log n - (n - 1) / n on every curve, and the gap on
    uniform pools shrinks with M to below LIMIT_TOLERANCE at the largest."""
    gap = bound_gap(res)
    limit_ZxS = uniform_pool_gaps()
    bounded = gap["max_excess"] <= KL_TOLERANCE
    shrinks = bool(np.all(np.diff(limit_ZxS, axis=0) <= KL_TOLERANCE))
    limit = bool(np.all(np.abs(limit_ZxS[-1]) <= LIMIT_TOLERANCE))
    ok = bounded and shrinks and limit
    return {"claim": "best-of-n KL equals log n − (n − 1)/n for distinct scores",
            "scope": "exact check", "verdict": stats.REPRODUCED if ok else stats.CONTRADICTED,
            "bounded": bounded, "shrinks": shrinks, "limit": limit, "gap": gap,
            "limit_pools": list(LIMIT_POOLS), "limit_n": list(LIMIT_N),
            "limit_gap": limit_ZxS.tolist(),
            "power": "exact (no sampling): tolerances "
                     f"{KL_TOLERANCE:g} nats on the bound, {LIMIT_TOLERANCE:g} nats at M = "
                     f"{LIMIT_POOLS[-1]}"}


def claims(res: dict, mode: dict) -> list[dict]:
    """The pre-registered claims (README.md, Tier A) with their verdicts."""
    out = [form_claim(res, "bon"), form_claim(res, "tilt"), hump_claim(res)]
    out[-1]["null"] = null_hump(res)
    return out + size_claims(res, mode) + [kl_claim(res)]


# ----------------------------------------------------------------------------- outputs

def _cell(values_R, digits: int = 3) -> str:
    return harness.seeds_summary(values_R, digits=digits)


def proxy_table(res: dict, method: str) -> list[str]:
    rows = []
    groups = [("proxies", n, s) for n, s in res["proxies"].items()]
    groups += [("oracles", n, s) for n, s in res["oracles"].items()]
    for group, name, setting in groups:
        d, g, p = curve(setting, method)
        top = peaks(d, g, p)
        fv = form_fits(FORM[method], d, g)
        label = name if group == "proxies" else f"oracle: {name}"
        rows.append([label, _cell(setting["agreement"]), _cell(top["d"], 2),
                     _cell(top["gold"]), _cell(top["fall"]),
                     f"{int(np.sum(top['index'] == g.shape[1] - 1))}/{g.shape[0]}",
                     f"{int(top['hump'].sum())}/{g.shape[0]}",
                     f"{sum(f.passes for f in fv)}/{len(fv)}",
                     _cell([f.alpha for f in fv]), _cell([f.beta for f in fv]),
                     f"{np.median([f.r2 for f in fv]):.3f}"])
    form = published.OVEROPTIMIZATION["forms"][FORM[method]]
    return ["", f"### {METHOD_LABELS[method]}: gold against d (form {form})", "",
            harness.markdown_table(
                ["proxy", "agreement with gold", "peak d", "peak gold", "fall after peak",
                 "peak at the last point", "hump", "form passes", "α", "β", "median R²"],
                rows)]


def kl_table(kl: dict) -> list[str]:
    gap = kl["gap"]
    rows = []
    for s, n in enumerate(BON_N):
        if s % 4:
            continue
        rows.append([f"{n:g}", f"{gap['bound_S'][s]:.3f}", f"{gap['mean_kl_S'][s]:.3f}",
                     f"{gap['mean_gap_S'][s]:.3f} [{gap['min_gap_S'][s]:.3f}, "
                     f"{gap['max_gap_S'][s]:.3f}]",
                     f"{math.sqrt(gap['bound_S'][s]):.2f} / "
                     f"{math.sqrt(max(gap['mean_kl_S'][s], 0)):.2f}"])
    lim = [[f"{m}", *[f"{v:.1e}" for v in row]] for m, row in zip(kl["limit_pools"],
                                                                  kl["limit_gap"])]
    return ["", "### Best-of-n KL: the published formula against the exact value", "",
            "Exact KL on the held-out worlds (mean over seeds and over every proxy, the oracles "
            "included); gap = formula − exact, with its range.", "",
            harness.markdown_table(["n", "log n − (n−1)/n (published)", "exact KL (mean)",
                                    "gap [min, max]", "d: formula / exact"], rows),
            "", "Uniform pools (one prompt, M equally likely candidates, distinct scores): "
            "formula − exact KL.", "",
            harness.markdown_table(["M", *[f"n = {n:g}" for n in kl["limit_n"]]], lim)]


def _interval(p: dict) -> str:
    return f"{p['estimate']:+.4f} [{p['low']:+.4f}, {p['high']:+.4f}]"


def claim_lines(cl: list[dict]) -> list[str]:
    lines = ["", "### Claims (criteria pre-registered in README.md)", "",
             f"Each part: its estimate with the two-sided {100 * (1 - 2 * ALPHA):.0f}% interval "
             "(Clopper–Pearson for shares of seeds, Student t for per-seed effects), its "
             "verdict, and whether its direction (share > 0.5, effect > 0) survives Holm "
             "within the claim.", ""]
    for c in cl:
        lines.append(f"- **{c['claim']}** ({c['scope']}) → **{c['verdict']}**")
        for p in c.get("parts", []):
            if "k" in p:
                what = (f"{p['k']}/{p['n']} seeds, share {p['estimate']:.2f} "
                        f"[{p['low']:.2f}, {p['high']:.2f}]")
            else:
                what = _interval(p)
            holm = "share > 0.5" if "k" in p else "> 0"
            lines.append(f"  - {p['part']}: {what}, {p['verdict']}"
                         f"{f' ({holm} after Holm)' if p['held_after_holm'] else ''}")
        if "null" in c:
            lines.append("  - null (proxy = gold): " + "; ".join(
                f"{METHOD_LABELS[m]} {v['k']}/{v['n']} seeds, {v['verdict']}"
                for m, v in c["null"].items()))
        if "bounded" in c:
            lines.append(f"  - KL_bon ≤ formula on every curve: {c['bounded']} (largest excess "
                         f"{c['gap']['max_excess']:.1e} nats); gap shrinks with M: "
                         f"{c['shrinks']}; |gap| ≤ {LIMIT_TOLERANCE:g} at M = "
                         f"{LIMIT_POOLS[-1]}: {c['limit']}")
        lines.append(f"  - power: {c['power']}")
    return lines


def summary_rows(cl: list[dict]) -> list[list[str]]:
    """claim | published | ours | verdict."""
    rows = []
    for c in cl:
        if "bounded" in c:
            top = max(map(abs, c["limit_gap"][-1]))
            ours = (f"exact KL ≤ formula everywhere; gap ≤ {top:.0e} at M = "
                    f"{c['limit_pools'][-1]}; at n = {BON_N[-1]:g} on the worlds "
                    f"{c['gap']['mean_gap_S'][-1]:.2f} nats")
            published_text = "KL = log n − (n−1)/n"
        else:
            count = {v: sum(p["verdict"] == v for p in c["parts"]) for v in stats.VERDICTS}
            ours = (f"of {len(c['parts'])} parts: {count[stats.REPRODUCED]} reproduced, "
                    f"{count[stats.CONTRADICTED]} contradicted")
            published_text = "yes (curves)"
        rows.append([c["claim"], published_text, ours, c["verdict"]])
    return rows


def markdown(res: dict, mode: dict, mode_name: str, cl: list[dict]) -> str:
    seconds = sum(s.get("seconds", 0.0) for g in ("proxies", "oracles")
                  for s in res[g].values())
    lines = [f"# Over-optimisation on the pool world, Tier A ({mode_name} mode, "
             f"{mode['seeds']} seeds)", "",
             f"Source: {published.OVEROPTIMIZATION['citation']}.", "",
             f"Mean ± 95% t interval over seeds. Proxies: Bradley–Terry on pairs from π_ref "
             f"labelled by the exact gold comparison, {mode['steps']} full-batch Adam steps; "
             f"`linear_P` / `mlpH_P`: capacity and number of pairs P. Gold: relative to π_ref "
             f"on {mode['eval_prompts']} held-out prompts; d = sqrt(KL). A hump: an interior "
             f"highest point at least {DELTA} above both ends, with the proxy still rising "
             "after it. Agreement: the share of π_ref pairs the proxy orders as the gold does.",
             ""]
    lines += proxy_table(res, "bon") + proxy_table(res, "tilt")
    kl = next(c for c in cl if "bounded" in c)
    lines += kl_table(kl) + claim_lines(cl)
    lines += ["", "### Summary", "",
              harness.markdown_table(["claim", "published", "ours", "verdict"],
                                     summary_rows(cl)),
              "", f"Compute time of all proxies and curves (compilation included): "
                  f"{seconds / 60:.1f} min."]
    return "\n".join(lines) + "\n"


def _mean_curve(setting: dict, method: str):
    d, g, _ = curve(setting, method)
    return d.mean(axis=0), g.mean(axis=0)


def plot_curves(res: dict, mode: dict, path: str) -> None:
    """Seed-mean gold against seed-mean d at each grid point: one panel per method and capacity,
    one line per data size, the oracles dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    widths, sizes = mode["widths"], sorted(mode["pairs"])
    fig, axes = plt.subplots(len(METHODS), len(widths), figsize=(4.2 * len(widths), 7.0),
                             squeeze=False, sharey="row")
    cmap = plt.get_cmap("viridis")
    for i, method in enumerate(METHODS):
        for j, width in enumerate(widths):
            ax = axes[i, j]
            for z, size in enumerate(sizes):
                ax.plot(*_mean_curve(res["proxies"][proxy_name(width, size)], method),
                        color=cmap(z / max(1, len(sizes) - 1)), label=f"{size} pairs")
            for name, style in (("gold", "k--"), ("no_penalty", "k:")):
                ax.plot(*_mean_curve(res["oracles"][name], method), style,
                        label=f"oracle: {name}", lw=1.0)
            ax.set_title(f"{METHOD_LABELS[method]}, {capacity_label(width)}", fontsize=9)
            ax.set_xlabel("d = sqrt(KL)")
            ax.grid(alpha=0.3)
        axes[i, 0].set_ylabel("gold − gold(π_ref)")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_coefficients(res: dict, mode: dict, path: str) -> None:
    """Gao's alpha and beta (mean ± 95% CI over seeds) against the number of pairs."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sizes = sorted(mode["pairs"])
    fig, axes = plt.subplots(2, len(METHODS), figsize=(9.0, 6.0), squeeze=False)
    for j, method in enumerate(METHODS):
        for width in mode["widths"]:
            q = [quantities(res["proxies"][proxy_name(width, s)], method) for s in sizes]
            for i, (key, sign) in enumerate((("alpha", 1.0), ("neg_beta", -1.0))):
                ci = [stats.mean_ci(sign * x[key]) for x in q]
                axes[i, j].errorbar(sizes, [m for m, _ in ci],
                                    yerr=[0 if math.isnan(h) else h for _, h in ci], marker="o",
                                    capsize=3, label=capacity_label(width))
        for i, key in enumerate(("α", "β")):
            axes[i, j].set_xscale("log", base=2)
            axes[i, j].set_title(f"{METHOD_LABELS[method]}: {key}", fontsize=9)
            axes[i, j].set_xlabel("pairs")
            axes[i, j].grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _json_claims(cl: list[dict]) -> list[dict]:
    return json.loads(json.dumps(cl, default=lambda x: x.item() if hasattr(x, "item") else str(x)))


def main(argv=None) -> int:
    p = harness.parser(__doc__)
    args = p.parse_args(argv)
    mode_name, mode = harness.mode_settings(p, args, MODES, min_seeds=3,
                                            why="intervals over seeds")
    out = harness.experiment_output(args, mode_name, NAME)
    res = run_all(mode, out)
    cl = claims(res, mode)
    md = markdown(res, mode, mode_name, cl)
    plot_curves(res, mode, os.path.join(out, PLOTS[0]))
    plot_coefficients(res, mode, os.path.join(out, PLOTS[1]))
    return harness.finish(out, {"mode": mode_name, "settings": mode, "keys": KEYS,
                                "bon_n": BON_N, "inv_beta": INV_BETA, "delta": DELTA, "p0": P0,
                                "alpha": ALPHA, "results": res, "claims": _json_claims(cl)}, md,
                          publish_to=HERE if args.publish else "", results_md=RESULTS_MD,
                          plots=PLOTS)


if __name__ == "__main__":
    sys.exit(main())
