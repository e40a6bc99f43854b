"""Munos et al. (arXiv 2312.00886) Table 1 on the exact pool world (Tier A): Nash-MD-PG's mixture
coefficient beta against RLHF under a cyclic judge, Nash-EMA-PG, with pre-registered verdicts.

    python experiments/nash_md/pool.py --quick    # 16 seeds
    python experiments/nash_md/pool.py            # full protocol (32 seeds; README.md, Tier A)
    python experiments/nash_md/pool.py --publish  # the same, then pool_results.md here

Outputs go to ~/align-runs/experiments/nash_md_pool (nash_md_pool_quick for --quick;
$ALIGN_RUNS replaces ~/align-runs) or --out.

Seed r draws a training world and a held-out world of align/tasks/pool.py (pi_ref tilted towards
one style direction), and one sample of pairs from pi_ref on the training world labelled by the
cyclic judge. On those pairs it fits a Bradley-Terry linear reward (for RLHF) and a pairwise
preference model logit(a, b) = w.(phi_a - phi_b) + phi_a^T (A - A^T) phi_b (for the Nash
methods; it can represent the judge's cycle). Every policy is pi ∝ pi_ref exp(phi . theta)
(linear), trained by Adam on the exact objective over the training world's prompts:
  - RLHF: the maximiser of E[r] - tau KL, pi_ref exp(r / tau), exact (r is in the family);
  - Nash-MD-PG(beta): ascent on P(pi_theta > sg pi_mix) - tau KL(pi_theta || pi_ref),
    pi_mix ∝ pi_theta^(1 - beta) pi_ref^beta;
  - Nash-EMA-PG: the same with the opponent pi_theta_bar, theta_bar <- g theta_bar + (1 - g) theta.
Win rates are exact, under the judge itself, on the held-out prompts.
Dimension letters: R seeds, N prompts, M candidates, F features, P pairs, J beta grid points.
"""

from __future__ import annotations

import functools
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import harness  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from align.evaluate import cycle, stats  # noqa: E402
from align.tasks import pool  # noqa: E402

NAME = "nash_md_pool"
RESULTS_MD = "pool_results.md"

# Protocol (README.md, "Tier A"): fixed before the full run.
KEYS = {"train_worlds": 11, "eval_worlds": 12, "pairs": 13, "cycle_pairs": 14}
JUDGE = pool.Judge(strength=1.0, cycle=2.0)
TAU = 0.1  # KL coefficient of every method
BETAS = (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)
EMA = 0.99  # Nash-EMA's parameter averaging g
LR = 0.02  # Adam on the exact objectives
FIT_STEPS, FIT_LR = 400, 0.05  # full-batch Adam for the reward and the preference model
CYCLE_PAIRS = 4096  # held-out pairs, uniform over candidates, for the learned-cycle check
# Verdicts.
ALPHA = 0.05
SMALL = (0.0, 0.5)  # the argmax must lie in (0, 0.5]
PAPER_SHARE = 1.0
SMALLEST_SHARE = 0.6
SMALLEST_GAP = 0.01  # win-rate points: smallest "beta beats beta = 1" of interest
# Paper Table 1 (transcription), win rate against RLHF; beta = 0.875 has no row (0.75's used).
PAPER_WIN = {0.0: 0.489, 0.125: 0.598, 0.25: 0.519, 0.375: 0.561, 0.5: 0.501, 0.625: 0.436,
             0.75: 0.284, 0.875: 0.284, 1.0: 0.148}
EMA_BETAS = (0.125, 0.25, 0.375, 0.5)  # Nash-EMA below Nash-MD at each of these
SMALLEST_EMA = 0.005

TILTS = {"tilted": 3.0, "neutral": 0.0}  # pi_ref style tilt: imbalanced, and the control
MODES = {
    "full": dict(seeds=32, prompts=128, eval_prompts=256, pairs=8192, steps=1500,
                 tilts=TILTS),
    "quick": dict(seeds=16, prompts=64, eval_prompts=128, pairs=4096, steps=800,
                  tilts=TILTS),
    "tiny": dict(seeds=3, prompts=8, eval_prompts=8, pairs=256, steps=20,
                 tilts=TILTS),
}


# ----------------------------------------------------------------------------- models

def pm_logits(pm: dict, feat_a, feat_b):
    """logit P(a > b) = w.(phi_a - phi_b) + phi_a^T (A - A^T) phi_b: antisymmetric, can cycle."""
    skew_FxF = pm["a"] - pm["a"].T
    return (feat_a - feat_b) @ pm["w"] + jnp.einsum("...f,fg,...g->...", feat_a, skew_FxF, feat_b)


def pm_matrix(pm: dict, world: pool.World):
    """The model's P[n, i, j] = sigmoid(logit(y_i, y_j)), [N, M, M]."""
    phi = world.features
    skew_FxF = pm["a"] - pm["a"].T
    lin_NxM = phi @ pm["w"]
    bil_NxMxM = jnp.einsum("nif,fg,njg->nij", phi, skew_FxF, phi)
    return jax.nn.sigmoid(lin_NxM[:, :, None] - lin_NxM[:, None, :] + bil_NxMxM)


def _pair_features(world: pool.World, pairs: pool.Pairs):
    return (world.features[pairs.prompts, pairs.first], world.features[pairs.prompts, pairs.second])


def pm_nll(pm: dict, world: pool.World, pairs: pool.Pairs):
    logit_P = pm_logits(pm, *_pair_features(world, pairs))
    return -jnp.mean(pairs.label * jax.nn.log_sigmoid(logit_P)
                     + (1.0 - pairs.label) * jax.nn.log_sigmoid(-logit_P))


def _adam_fit(loss_fn, params, steps: int, lr: float):
    opt = optax.adam(lr)

    def step(carry, _):
        params, state = carry
        updates, state = opt.update(jax.grad(loss_fn)(params), state)
        return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
    return params


def fit_models(world: pool.World, pairs: pool.Pairs, *, cyclic: bool = True):
    """(Bradley-Terry linear reward, pairwise model) on the same pairs; cyclic=False fits the
    pairwise model with A = 0 (a Bradley-Terry model in pairwise form: it cannot cycle)."""
    f = world.features.shape[-1]
    dtype = world.features.dtype
    bt = _adam_fit(lambda p: pool.bt_nll(p, world, pairs), {"w": jnp.zeros((f,), dtype)},
                   FIT_STEPS, FIT_LR)
    scale = 1.0 if cyclic else 0.0
    pm = _adam_fit(lambda p: pm_nll({"w": p["w"], "a": scale * p["a"]}, world, pairs),
                   {"w": jnp.zeros((f,), dtype), "a": jnp.zeros((f, f), dtype)},
                   FIT_STEPS, FIT_LR)
    return bt, {"w": pm["w"], "a": scale * pm["a"]}


def cycle_terms(world: pool.World, pairs: pool.Pairs, judge: pool.Judge = JUDGE):
    """(gold difference Δs_P, cross product C_P) of each pair: the judge's two terms."""
    fa, fb = _pair_features(world, pairs)
    delta = world.gold[pairs.prompts, pairs.first] - world.gold[pairs.prompts, pairs.second]
    cross = (fa[..., pool.STYLE_U] * fb[..., pool.STYLE_V]
             - fa[..., pool.STYLE_V] * fb[..., pool.STYLE_U])
    return delta, cross


def cycle_check(logit_P, delta_P, cross_P, judge: pool.Judge = JUDGE) -> cycle.CycleCheck:
    """align.evaluate.cycle's rule: the model's logits on Δs and C, share of the judge's c / a."""
    return cycle.check(cycle.fit_cycle(logit_P, delta_P, cross_P),
                       judge_weight=judge.cycle / judge.strength)


# ----------------------------------------------------------------------------- policies

def logits(theta_F, world: pool.World):
    return jax.nn.log_softmax(world.ref_logp + world.features @ theta_F, axis=-1)


def mixture(theta_F, world: pool.World, beta):
    """pi_theta^(1 - beta) pi_ref^beta: in the family, with parameters (1 - beta) theta."""
    return logits((1.0 - beta) * theta_F, world)


def nash_objective(theta_F, opp_logp_NxM, world: pool.World, pref_NxMxM, tau=TAU):
    """P(pi_theta > opponent) - tau KL(pi_theta || pi_ref), mean over prompts (opponent fixed)."""
    logp = logits(theta_F, world)
    return jnp.mean(pool.win_rate_N(logp, jax.lax.stop_gradient(opp_logp_NxM), pref_NxMxM)
                    - tau * pool.kl_N(logp, world.ref_logp))


def train_nash(world: pool.World, pref_NxMxM, *, steps: int, beta=0.0, ema=None, lr=LR,
               tau=TAU):
    """Nash-MD-PG(beta) (ema None) or Nash-EMA-PG(ema) by Adam ascent on the exact objective;
    returns (theta_F, |gradient| at the end)."""
    f = world.features.shape[-1]
    opt = optax.adam(lr)
    theta = jnp.zeros((f,), world.features.dtype)

    def opponent(theta, bar):
        return logits(bar, world) if ema is not None else mixture(theta, world, beta)

    def grad(theta, bar):
        return jax.grad(nash_objective)(theta, opponent(theta, bar), world, pref_NxMxM, tau)

    def step(carry, _):
        theta, bar, state = carry
        updates, state = opt.update(-grad(theta, bar), state)
        theta = optax.apply_updates(theta, updates)
        bar = bar if ema is None else ema * bar + (1.0 - ema) * theta
        return (theta, bar, state), None

    (theta, bar, _), _ = jax.lax.scan(step, (theta, theta, opt.init(theta)), None, length=steps)
    return theta, jnp.linalg.norm(grad(theta, bar))


# ----------------------------------------------------------------------------- runs

def seed_data(mode: dict, tilt: float):
    """Per-seed training and held-out worlds, judge-labelled pairs from pi_ref on the training
    world, and held-out pairs uniform over the held-out world's candidates (the cycle check's)."""
    r = mode["seeds"]
    kw = dict(style_tilt=tilt)
    train_w = pool.make_worlds(jax.random.key(KEYS["train_worlds"]), r, prompts=mode["prompts"],
                               **kw)
    eval_w = pool.make_worlds(jax.random.key(KEYS["eval_worlds"]), r,
                              prompts=mode["eval_prompts"], **kw)

    def draw(name, worlds, count, uniform=False):
        return jax.vmap(lambda s, w: pool.sample_pairs(
            jax.random.fold_in(jax.random.key(KEYS[name]), s), w,
            jnp.zeros_like(w.ref_logp) if uniform else w.ref_logp, JUDGE, count))(
                jnp.arange(r), worlds)

    # The check's pairs are uniform over candidates, not from pi_ref: under a style-tilted
    # pi_ref, u is nearly constant on its samples, so there C(a, b) ≈ U (v_b - v_a) is a
    # difference of one-item scores and a Bradley-Terry model would pass the check.
    return (train_w, eval_w, draw("pairs", train_w, mode["pairs"]),
            draw("cycle_pairs", eval_w, min(CYCLE_PAIRS, 16 * mode["pairs"]), uniform=True))


@functools.lru_cache(maxsize=None)
def _run_fn(steps: int, cyclic: bool = True):
    """jit(vmap over seeds): models, cycle-check inputs, RLHF, the beta sweep and Nash-EMA."""
    betas_J = jnp.asarray(BETAS)

    def one(train_w, eval_w, pairs, held):
        bt, pm = fit_models(train_w, pairs, cyclic=cyclic)
        pref_train = pm_matrix(pm, train_w)
        judge_eval = pool.preference_matrix(eval_w, JUDGE)
        rlhf = pool.tilted_logits(eval_w.ref_logp, pool.score(bt, eval_w.features), TAU)
        thetas_J, grads_J = jax.lax.map(
            lambda b: train_nash(train_w, pref_train, steps=steps, beta=b), betas_J)
        ema_theta, ema_grad = train_nash(train_w, pref_train, steps=steps, ema=EMA)

        def report(theta):
            logp = logits(theta, eval_w)
            return {"vs_rlhf": jnp.mean(pool.win_rate_N(logp, rlhf, judge_eval)),
                    "vs_ref": jnp.mean(pool.win_rate_N(logp, eval_w.ref_logp, judge_eval)),
                    "kl": jnp.mean(pool.kl_N(logp, eval_w.ref_logp)),
                    "gold": jnp.mean(pool.expected_N(logp, eval_w.gold))}

        delta, cross = cycle_terms(eval_w, held)
        return {"sweep": jax.vmap(report)(thetas_J), "sweep_grad": grads_J,
                "ema": report(ema_theta), "ema_grad": ema_grad,
                "rlhf": {"vs_ref": jnp.mean(pool.win_rate_N(rlhf, eval_w.ref_logp, judge_eval)),
                         "kl": jnp.mean(pool.kl_N(rlhf, eval_w.ref_logp)),
                         "gold": jnp.mean(pool.expected_N(rlhf, eval_w.gold))},
                "cycle": {"logit": pm_logits(pm, *_pair_features(eval_w, held)),
                          "delta": delta, "cross": cross},
                "judge_cycle": {"logit": JUDGE.strength * delta + JUDGE.cycle * cross}}

    return jax.jit(jax.vmap(one))


def _listed(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float64).tolist(), tree)


def cycle_summary(c: dict) -> dict:
    """Per seed, the learned-cycle check of the fitted preference model."""
    checks = [cycle_check(l, d, x) for l, d, x in zip(c["logit"], c["delta"], c["cross"])]
    return {"share": [k.share for k in checks], "share_low": [k.share_low for k in checks],
            "learned": [k.learned for k in checks], "describe": checks[0].describe()}


def run_condition(mode: dict, tilt: float, out: str, label: str) -> dict:
    """One condition's results, cached in out/runs/<label>.json beside the spec it ran with."""
    spec = {"mode": {k: v for k, v in mode.items() if k != "tilts"}, "tilt": tilt, "keys": KEYS,
            "judge": [JUDGE.strength, JUDGE.cycle], "tau": TAU, "betas": list(BETAS),
            "ema": EMA, "lr": LR, "fit": [FIT_STEPS, FIT_LR], "cycle_pairs": "uniform"}

    def compute():
        harness.log(f"condition {label} (style tilt {tilt})")
        res = _listed(_run_fn(mode["steps"])(*seed_data(mode, tilt)))
        res["cycle_check"] = cycle_summary(res["cycle"])
        res["judge_check"] = cycle_summary(res["judge_cycle"] | {"delta": res["cycle"]["delta"],
                                                                 "cross": res["cycle"]["cross"]})
        del res["cycle"], res["judge_cycle"]
        return res

    return harness.cached(os.path.join(out, "runs", f"{label}.json"), spec, compute)


# ----------------------------------------------------------------------------- rules

def in_small(beta: float) -> bool:
    return SMALL[0] < beta <= SMALL[1]


def chance_share(betas=BETAS) -> float:
    """The share of grid points in (0, 0.5]: the argmax's chance share when the truth is flat."""
    return sum(in_small(b) for b in betas) / len(betas)


def argmax_rule(win_RxJ, betas=BETAS) -> stats.Judgement:
    """More seeds than chance have their argmax over beta in (0, 0.5] (exact binomial)."""
    w = np.asarray(win_RxJ, np.float64)
    top_R = np.asarray(betas)[np.argmax(w, axis=1)]
    return stats.share(np.array([in_small(b) for b in top_R]), p0=chance_share(betas),
                       paper_share=PAPER_SHARE, smallest_share=SMALLEST_SHARE, alpha=ALPHA)


def worst_rule(win_RxJ, betas=BETAS) -> tuple[stats.Conjunction, list]:
    """beta = 1 is worst: for every beta < 1, win(beta) - win(1) > 0 by paired t, all parts
    held, contradiction by Holm (stats.conjunction)."""
    w = np.asarray(win_RxJ, np.float64)
    last = list(betas).index(1.0)
    parts = [(b, stats.directional(w[:, j], w[:, last], alpha=ALPHA,
                                   paper_effect=PAPER_WIN[b] - PAPER_WIN[1.0],
                                   smallest_effect=SMALLEST_GAP))
             for j, b in enumerate(betas) if b != 1.0]
    return stats.conjunction([j for _, j in parts], alpha=ALPHA), parts


def ema_rule(win_RxJ, ema_R, betas=BETAS) -> tuple[stats.Conjunction, list]:
    """Nash-EMA below Nash-MD(beta) for every beta in EMA_BETAS (paired t, conjunction)."""
    w = np.asarray(win_RxJ, np.float64)
    parts = [(b, stats.directional(w[:, list(betas).index(b)], ema_R, alpha=ALPHA,
                                   paper_effect=max(PAPER_WIN[b] - PAPER_WIN[0.0], 0.01),
                                   smallest_effect=SMALLEST_EMA))
             for b in EMA_BETAS]
    return stats.conjunction([j for _, j in parts], alpha=ALPHA), parts


def permuted(win_RxJ, seed: int = 0) -> np.ndarray:
    """Each seed's values with the beta labels shuffled: a flat truth built from the data."""
    rng = np.random.default_rng(seed)
    w = np.asarray(win_RxJ, np.float64)
    return np.stack([row[rng.permutation(row.size)] for row in w])


def precondition(res: dict) -> bool:
    return all(res["cycle_check"]["learned"])


def _part_rows(parts) -> list:
    return [{"beta": b, "verdict": j.verdict, "estimate": j.estimate, "low": j.low,
             "high": j.high, "p_reproduce": j.p_reproduce, "p_contradict": j.p_contradict}
            for b, j in parts]


def claims(res: dict) -> dict:
    """The pre-registered claims of one condition; none when the precondition fails."""
    win = np.asarray(res["sweep"]["vs_rlhf"], np.float64)
    n = win.shape[0]
    out = {"precondition": precondition(res)}
    am = argmax_rule(win)
    null = argmax_rule(permuted(win))
    worst, wparts = worst_rule(win)
    emac, eparts = ema_rule(win, np.asarray(res["ema"]["vs_rlhf"], np.float64))
    mde = stats.minimum_detectable_share(n, chance_share(), alpha=ALPHA)
    gap_sd = max(float(np.std(win[:, j] - win[:, -1], ddof=1)) for j in range(win.shape[1] - 1))
    out["argmax"] = {"verdict": am.verdict, "k": int(round(am.estimate * n)), "n": n,
                     "low": am.low, "high": am.high, "p": am.p_reproduce,
                     "null_verdict": null.verdict, "null_k": int(round(null.estimate * n)),
                     "power": f"with {n} seeds the exact binomial test against the chance share "
                              f"{chance_share():.3f} (level {ALPHA}) detects a true share of "
                              f"{mde:.2f} or more with power 0.8"}
    gap_mde = stats.minimum_detectable_effect(gap_sd, n, alpha=ALPHA)
    out["worst"] = {"verdict": worst.verdict, "parts": _part_rows(wparts),
                    "held": list(worst.held),
                    "power": f"minimum detectable paired gap {gap_mde:.4f} "
                             f"(largest sd {gap_sd:.4f} over {n} seeds, one-sided t, power 0.8); "
                             f"smallest gap of interest {SMALLEST_GAP}"}
    esd = max(float(np.std(win[:, BETAS.index(b)] - np.asarray(res["ema"]["vs_rlhf"]), ddof=1))
              for b in EMA_BETAS)
    out["ema"] = {"verdict": emac.verdict, "parts": _part_rows(eparts), "held": list(emac.held),
                  "power": f"minimum detectable paired gap "
                           f"{stats.minimum_detectable_effect(max(esd, 1e-12), n, alpha=ALPHA):.4f}"
                           f" (largest sd {esd:.4f}); smallest of interest {SMALLEST_EMA}"}
    if not out["precondition"]:
        for key in ("argmax", "worst", "ema"):
            out[key]["verdict"] = "not reported (the preference model did not learn the cycle)"
    return out


# ----------------------------------------------------------------------------- outputs

def _cell(values, digits: int = 3) -> str:
    return harness.seeds_summary(values, digits=digits)


def _argmax_counts(win_RxJ) -> str:
    top = np.argmax(np.asarray(win_RxJ), axis=1)
    return ", ".join(f"{b:g}: {int(np.sum(top == j))}" for j, b in enumerate(BETAS)
                     if np.sum(top == j))


def condition_lines(label: str, tilt: float, res: dict, cl: dict) -> list[str]:
    cc, jc = res["cycle_check"], res["judge_check"]
    lines = [f"## Condition `{label}` (π_ref style tilt {tilt:g})", "",
             f"**Precondition** (the fitted preference model learned the judge's cycle, "
             f"align.evaluate.cycle, every seed): {sum(cc['learned'])}/{len(cc['learned'])} "
             f"seeds learned; cycle share {_cell(cc['share'], 2)} (lower bound "
             f"{_cell(cc['share_low'], 2)}); seed 0: {cc['describe']}. The judge itself: "
             f"share {_cell(jc['share'], 2)} (c / a = {JUDGE.cycle / JUDGE.strength:g}).", "",
             harness.markdown_table(
                 ["policy", "win rate vs RLHF", "paper", "win rate vs π_ref", "KL to π_ref",
                  "gold", "|grad| at end"],
                 [[f"Nash-MD β = {b:g}", _cell(np.asarray(res["sweep"]["vs_rlhf"])[:, j]),
                   f"{PAPER_WIN[b]:.3f}" if b != 0.875 else "—",
                   _cell(np.asarray(res["sweep"]["vs_ref"])[:, j]),
                   _cell(np.asarray(res["sweep"]["kl"])[:, j], 2),
                   _cell(np.asarray(res["sweep"]["gold"])[:, j]),
                   f"{np.max(np.asarray(res['sweep_grad'])[:, j]):.1e}"]
                  for j, b in enumerate(BETAS)]
                 + [[f"Nash-EMA γ = {EMA}", _cell(res["ema"]["vs_rlhf"]), "—",
                     _cell(res["ema"]["vs_ref"]), _cell(res["ema"]["kl"], 2),
                     _cell(res["ema"]["gold"]), f"{np.max(res['ema_grad']):.1e}"],
                    ["RLHF", "0.5", "0.5", _cell(res["rlhf"]["vs_ref"]),
                     _cell(res["rlhf"]["kl"], 2), _cell(res["rlhf"]["gold"]), "exact"]]),
             "", f"Argmax over β per seed: {_argmax_counts(res['sweep']['vs_rlhf'])}.", ""]
    a = cl["argmax"]
    lines.append(f"- **argmax in (0, 0.5]**: {a['k']}/{a['n']} seeds, share interval "
                 f"[{a['low']:.2f}, {a['high']:.2f}] against chance {chance_share():.3f} "
                 f"(p = {a['p']:.2g}) → **{a['verdict']}**; the same rule with β shuffled "
                 f"within each seed (flat truth): {a['null_k']}/{a['n']}, {a['null_verdict']}. "
                 f"Power: {a['power']}.")
    for key, text in (("worst", "β = 1 worst (every β < 1 minus β = 1, paired t, Holm)"),
                      ("ema", "Nash-EMA below Nash-MD at β ∈ {0.125, …, 0.5} (paired t, Holm)")):
        c = cl[key]
        lines.append(f"- **{text}** → **{c['verdict']}**")
        for p, held in zip(c["parts"], c["held"]):
            lines.append(f"  - β = {p['beta']:g}: {p['estimate']:+.4f} [{p['low']:+.4f}, "
                         f"{p['high']:+.4f}], {p['verdict']}{' (> 0 after Holm)' if held else ''}")
        lines.append(f"  - power: {c['power']}")
    return lines + [""]


def markdown(results: dict, mode: dict, mode_name: str, cl: dict) -> str:
    secs = sum(r["seconds"] for r in results.values())
    lines = [f"# Nash-MD on the pool world, Tier A ({mode_name} mode, {mode['seeds']} seeds)", "",
             "Source: Munos et al., Nash Learning from Human Feedback, arXiv 2312.00886, Table 1 "
             "(paper column: a transcription of its win rates against RLHF).", "",
             f"Judge: P(y ≻ y') = σ({JUDGE.strength:g}·(g − g') + {JUDGE.cycle:g}·C), τ = {TAU}; "
             f"{mode['pairs']} judge-labelled pairs from π_ref per seed; linear policies "
             f"π ∝ π_ref exp(φ·θ), {mode['steps']} Adam steps (lr {LR}) on the exact objective "
             f"over {mode['prompts']} training prompts; exact win rates under the judge on "
             f"{mode['eval_prompts']} held-out prompts. Mean ± 95% t interval over seeds.", ""]
    for label, tilt in mode["tilts"].items():
        lines += condition_lines(label, tilt, results[label], cl[label])
    lines.append(f"Compute time (compilation included): {secs / 60:.1f} min.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = harness.parser(__doc__)
    args = p.parse_args(argv)
    mode_name, mode = harness.mode_settings(p, args, MODES, min_seeds=3,
                                            why="intervals over seeds")
    out = harness.experiment_output(args, mode_name, NAME)
    results = {label: run_condition(mode, tilt, out, label)
               for label, tilt in mode["tilts"].items()}
    cl = {label: claims(res) for label, res in results.items()}
    md = markdown(results, mode, mode_name, cl)
    return harness.finish(out, {"mode": mode_name, "settings": mode, "keys": KEYS,
                                "betas": BETAS, "tau": TAU, "results": results, "claims": cl},
                          md, publish_to=HERE if args.publish else "", results_md=RESULTS_MD)


if __name__ == "__main__":
    sys.exit(main())
