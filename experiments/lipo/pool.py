"""LiPO (Liu et al., arXiv 2402.01878) on the exact pool world (Tier A): Table 1, list sizes,
win rate at matched KL, lambda-weight ablations, with pre-registered verdicts.

    python experiments/lipo/pool.py --quick    # 16 seeds, 300 steps, K in {2, 8, 32}, 3 betas
    python experiments/lipo/pool.py            # full protocol (32 seeds; see README.md)
    python experiments/lipo/pool.py --publish  # the same, then pool_results.md and pool_*.png here
    python experiments/lipo/pool.py --frontier-every 1  # post hoc: the matched-KL frontier of
                                                        # LiPO-λ and pair-logistic, every step

Outputs go to ~/align-runs/experiments/lipo_pool (lipo_pool_quick for --quick; $ALIGN_RUNS
replaces ~/align-runs) or --out.

Each seed draws its own training world (128 prompts) and held-out world (256 prompts) of
align/tasks/pool.py; a policy pi ∝ pi_ref exp(f(phi)), f a width-16 tanh MLP (a linear f as a
secondary policy class), is trained with one of the seven listwise losses of
align/objectives/listwise.py, unchanged, on lists of K candidates drawn from pi_ref and graded by
a Bradley-Terry ranker, psi_k = (1/K) sum_i P(y_k > y_i). Every loss sees the same worlds and
lists on a seed (common random numbers), so comparisons are paired by seed. The metric is the
exact gold win rate against pi_ref on the held-out prompts.
Dimension letters: R seeds, U beta values, T recorded steps, G KL grid points.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import harness  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from align.evaluate import stats  # noqa: E402
from align.objectives import listwise  # noqa: E402
from align.tasks import pool  # noqa: E402
from third_party import published  # noqa: E402


def _review_run():
    """experiments/lipo/run.py (the review-world protocol), for its loss names and slopes."""
    spec = importlib.util.spec_from_file_location("lipo_run", os.path.join(HERE, "run.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


review = _review_run()
LOSSES, LABELS = review.LOSSES, review.LABELS
POINTWISE, STRONG = review.POINTWISE, review.STRONG
WEIGHTINGS = {w: label for w, label in review.ABLATIONS.items() if w != "lambda"}
RESULTS_MD = "pool_results.md"
PLOTS = ("pool_losses_k8.png", "pool_win_rate_vs_k.png", "pool_frontier.png")

# Protocol (README.md, "Tier A"): fixed before the full run.
BETA = 0.05  # the paper's
LR = 0.05  # Adam
LISTS = 16  # lists per step
MAIN_K = 8
WIDTH = 16  # the primary policy class: a tanh MLP of width 16; 0 = linear (secondary)
RANKER = pool.Judge(strength=1.0)  # labels: Bradley-Terry on the gold, no cycle
KEYS = {"train_worlds": 1, "eval_worlds": 2, "data": 3}
# Verdicts: paired t over seeds, 1 - 2 alpha intervals; effects in win-rate points.
ALPHA = 0.05
SMALLEST = 0.5  # smallest effect of interest, points of win rate (slopes: points per doubling)
SLOPE_PAPER, SLOPE_SMALLEST = 1.0, 0.25  # stand-ins: the paper shows list sizes only in a figure
KL_GRID_FROM = 0.5  # nats
RESOLUTION = 3  # decimals of a point to which per-seed effects are rounded

MODES = {
    "full": dict(seeds=32, steps=600, prompts=128, eval_prompts=256, list_sizes=(2, 4, 8, 16, 32),
                 swept=LOSSES, betas=(0.01, 0.02, 0.05, 0.1, 0.2, 0.5), frontier=LOSSES,
                 record_every=10, weightings=tuple(WEIGHTINGS), linear=True, grid=5),
    "quick": dict(seeds=16, steps=300, prompts=128, eval_prompts=256, list_sizes=(2, 8, 32),
                  swept=LOSSES, betas=(0.02, 0.05, 0.2), frontier=LOSSES,
                  record_every=20, weightings=tuple(WEIGHTINGS), linear=True, grid=5),
    "tiny": dict(seeds=3, steps=8, prompts=16, eval_prompts=16, list_sizes=(2, 8),
                 swept=("pair_logistic", "lipo_lambda"), betas=(0.05, 0.2), frontier=LOSSES,
                 record_every=4,
                 weightings=("constant_gain",), linear=False, grid=3),
}


def loss_fns() -> dict:
    """The seven losses by name, and LiPO-lambda's weightings as 'lipo_lambda/<weighting>'."""
    out = {name: listwise.LOSSES[name] for name in LOSSES}
    out.update({f"lipo_lambda/{w}": functools.partial(listwise.lipo_lambda, weighting=w)
                for w in WEIGHTINGS})
    return out


# ----------------------------------------------------------------------------- runs

def worlds(mode: dict) -> tuple[pool.World, pool.World]:
    """Per-seed training and held-out worlds, [R, ...] each."""
    make = functools.partial(pool.make_worlds, seeds=mode["seeds"])
    return (make(jax.random.key(KEYS["train_worlds"]), prompts=mode["prompts"]),
            make(jax.random.key(KEYS["eval_worlds"]), prompts=mode["eval_prompts"]))


def _repeat(world: pool.World, times: int) -> pool.World:
    return jax.tree.map(lambda x: jnp.concatenate([x] * times), world)


def run_setting(loss_fn, mode: dict, pair, *, list_size=MAIN_K, betas=(BETA,), width=WIDTH,
                record_every=0) -> dict:
    """{metric: [U][R] final values} and, with record_every, {'trajectory': {metric: [U][R][T]}}.

    The betas run as one vmap over (beta, seed): seed r sees the same world and lists for
    every beta and every loss.
    """
    r, u = mode["seeds"], len(betas)
    train_w, eval_w = pair
    out = pool.train(loss_fn, _repeat(train_w, u), jax.random.key(KEYS["data"]),
                     steps=mode["steps"], lists_per_step=LISTS, list_size=list_size, lr=LR,
                     seeds=np.tile(np.arange(r), u), beta=np.repeat(np.asarray(betas), r),
                     judge=RANKER, width=width, eval_world=_repeat(eval_w, u),
                     record_every=record_every)
    traj = {m: np.asarray(v, np.float64).reshape(u, r, -1) for m, v in out.trajectory.items()}
    result = {m: v[:, :, -1].tolist() for m, v in traj.items()}
    if record_every:
        result["trajectory"] = {m: v.tolist() for m, v in traj.items()}
        result["steps"] = list(out.steps)
    return result


def at_beta(setting: dict, u: int) -> dict:
    """The u-th beta of a sweep as a single-beta setting (no run time of its own)."""
    out = {m: [v[u]] for m, v in setting.items() if m not in ("trajectory", "steps", "seconds")}
    if "trajectory" in setting:
        out["trajectory"] = {m: [v[u]] for m, v in setting["trajectory"].items()}
        out["steps"] = setting["steps"]
    return out


def run_all(mode: dict, out: str, fns: dict | None = None, *, frontier_only: bool = False
            ) -> dict:
    """Every block of the protocol: {block: {setting: run_setting result}}; cached in out/runs.
    frontier_only: the beta sweep (and its main-setting column) alone."""
    fns = loss_fns() if fns is None else fns
    pair = worlds(mode)
    spec_base = {k: (list(v) if isinstance(v, tuple) else v) for k, v in mode.items()}

    def run(block, name, **kw):
        spec = dict(spec_base, block=block, name=name,
                    **{k: (list(v) if isinstance(v, tuple) else v) for k, v in kw.items()})
        harness.log(f"{block}: {name}")
        path = os.path.join(out, "runs", f"{block}_{name.replace('/', '_')}.json")
        return harness.cached(path, spec, lambda: run_setting(fns[name], mode, pair, **kw))

    res = {"beta": {n: run("beta", n, betas=mode["betas"], record_every=mode["record_every"])
                    for n in mode["frontier"]}}
    # The main setting is one column of the beta sweep (the same seeds, worlds and lists).
    at = mode["betas"].index(BETA) if BETA in mode["betas"] else None
    res["main"] = {n: (at_beta(res["beta"][n], at) if n in res["beta"] and at is not None
                       else run("main", n, record_every=mode["record_every"]))
                   for n in LOSSES if n in res["beta"] or not frontier_only}
    if frontier_only:
        return res
    if mode["linear"]:
        res["linear"] = {n: run("linear", n, width=0) for n in LOSSES}
    res["ablation"] = {w: run("ablation", f"lipo_lambda/{w}") for w in mode["weightings"]}
    res["list_size"] = {}
    for k in sorted(mode["list_sizes"]):
        res["list_size"][str(k)] = {n: (res["main"][n] if k == MAIN_K else
                                        run(f"K{k}", n, list_size=k)) for n in mode["swept"]}
    return res


# ----------------------------------------------------------------------------- analysis

def points(setting: dict, metric: str = "win_rate") -> np.ndarray:
    """Final values of a single-beta setting, per seed: win rates in points (%), else as is."""
    scale = 100.0 if metric == "win_rate" else 1.0
    return scale * np.asarray(setting[metric], np.float64)[0]


def paper_gap(a: str, b: str) -> float:
    """The paper's win-rate difference a - b (points), averaged over TL;DR and HH."""
    pa, pb = published.LIPO["win_rate"][a], published.LIPO["win_rate"][b]
    return float(np.mean(np.subtract(pa, pb)))


def judge(a_R, b_R=None, *, paper_effect: float, smallest: float = SMALLEST) -> dict:
    """Directional verdict (paired t over seeds when b_R is given) with its power statement.

    Effects are rounded to RESOLUTION: float32 sums carry rounding noise of about 1e-5 points,
    which differs between batch shapes, and must not count as an effect. Identical arms (the
    same loss twice) then have no spread; their interval is the point itself.
    """
    a = np.asarray(a_R, np.float64)
    diff = np.round(a if b_R is None else stats.paired_differences(a, b_R), RESOLUTION)
    method = "t" if b_R is None else "paired t"
    if np.ptp(diff) == 0:
        e = float(diff[0])
        v = stats.verdict(e, e, paper_effect=paper_effect, smallest_effect=smallest)
        j = stats.Judgement(v, e, e, e, float(e <= 0), float(e >= smallest), diff.size,
                            f"{method} (no spread)")
        mde = math.nan
    else:
        j = stats.directional(diff, paper_effect=paper_effect, smallest_effect=smallest,
                              alpha=ALPHA)
        j = dataclasses.replace(j, method=method)
        mde = stats.observed_minimum_detectable_effect(diff, alpha=ALPHA)
    return {"estimate": j.estimate, "low": j.low, "high": j.high, "verdict": j.verdict, "n": j.n,
            "p_reproduce": j.p_reproduce, "p_contradict": j.p_contradict, "method": j.method,
            "mde": mde, "paper_effect": paper_effect, "smallest": smallest, "_judgement": j}


def claim(text: str, parts: list[tuple[str, dict]], scope: str) -> dict:
    """A claim whose parts must all hold: the conjunction of their judgements (Holm inside)."""
    conj = stats.conjunction([p["_judgement"] for _, p in parts], alpha=ALPHA)
    rows = [dict({k: v for k, v in p.items() if k != "_judgement"}, comparison=name,
                 held_after_holm=held) for (name, p), held in zip(parts, conj.held)]
    mdes = [p["mde"] for _, p in parts if not math.isnan(p["mde"])]
    return {"claim": text, "scope": scope, "verdict": conj.verdict, "parts": rows,
            "mde": max(mdes) if mdes else math.nan,
            "paper_effect": min(p["paper_effect"] for _, p in parts)}


def pareto_at(kl_M, win_M, grid_G) -> np.ndarray:
    """Upper frontier of (KL, win) points (the origin, pi_ref, included) at KL values grid_G.

    The frontier is the running maximum of the win rate over points sorted by KL; between its
    corners it is linear. grid_G must lie within [0, max KL].
    """
    kl = np.concatenate([[0.0], np.asarray(kl_M, np.float64).ravel()])
    win = np.concatenate([[50.0], np.asarray(win_M, np.float64).ravel()])
    order = np.argsort(kl, kind="stable")
    kl, best = kl[order], np.maximum.accumulate(win[order])
    corner = np.concatenate([[True], best[1:] > best[:-1]])
    return np.interp(grid_G, kl[corner], best[corner])


def frontier_points(setting: dict):
    """(KL, win %) of every recorded step of every beta, per seed: [R, U * T] each."""
    kl = np.asarray(setting["trajectory"]["kl"], np.float64)
    win = 100.0 * np.asarray(setting["trajectory"]["win_rate"], np.float64)
    r = kl.shape[1]
    return (np.moveaxis(kl, 1, 0).reshape(r, -1), np.moveaxis(win, 1, 0).reshape(r, -1))


def reach(setting: dict) -> float:
    """The largest KL that every seed's frontier reaches."""
    return float(frontier_points(setting)[0].max(axis=1).min())


def kl_grid(settings: list[dict], points_G: int) -> np.ndarray:
    """points_G KL values from KL_GRID_FROM to the smallest, over seeds and settings, of the
    largest KL a seed reached (empty when that is below KL_GRID_FROM)."""
    top = min(reach(s) for s in settings)
    return np.linspace(KL_GRID_FROM, top, points_G) if top > KL_GRID_FROM else np.zeros(0)


def matched(setting: dict, grid_G) -> np.ndarray:
    """Frontier win rate at grid_G, per seed: [R, G]."""
    kl_RxM, win_RxM = frontier_points(setting)
    return np.stack([pareto_at(k, w, grid_G) for k, w in zip(kl_RxM, win_RxM)])


def slopes(res: dict, loss: str) -> np.ndarray:
    """Per-seed slope of the win rate (points) against log2 K."""
    sizes = sorted(int(k) for k in res["list_size"])
    wr_RxK = np.stack([points(res["list_size"][str(k)][loss]) for k in sizes], axis=1)
    return review.log2_slopes(sizes, wr_RxK)


def claims(res: dict, mode: dict) -> list[dict]:
    """The pre-registered claims (README.md, Tier A) with their verdicts."""
    texts = published.LIPO["claims"]
    out = []
    for block, scope in (("main", "MLP policy"), ("linear", "linear policy (secondary)")):
        if block not in res:
            continue
        wr = {n: points(res[block][n]) for n in LOSSES}
        first = [(f"softmax > {LABELS[p]}", judge(wr["softmax"], wr[p],
                                                   paper_effect=paper_gap("softmax", p)))
                 for p in POINTWISE]
        first += [(f"{LABELS[s]} > softmax", judge(wr[s], wr["softmax"],
                                                   paper_effect=paper_gap(s, "softmax")))
                  for s in STRONG]
        out.append(claim(texts[0], first, scope))
        out.append(claim(texts[1], [("LiPO-λ > pair-logistic", judge(
            wr["lipo_lambda"], wr["pair_logistic"],
            paper_effect=paper_gap("lipo_lambda", "pair_logistic")))], scope))
    swept = [n for n in LOSSES if n in mode["swept"]]
    if len(res["list_size"]) >= 2 and "lipo_lambda" in swept:
        lipo = slopes(res, "lipo_lambda")
        parts = [("LiPO-λ: slope per doubling of K > 0",
                  judge(lipo, paper_effect=SLOPE_PAPER, smallest=SLOPE_SMALLEST))]
        parts += [(f"LiPO-λ's slope > {LABELS[n]}'s",
                   judge(lipo, slopes(res, n), paper_effect=SLOPE_PAPER, smallest=SLOPE_SMALLEST))
                  for n in swept if n != "lipo_lambda"]
        out.append(claim(texts[2], parts, "MLP policy, K sweep"))
    lipo_main = points(res["main"]["lipo_lambda"])
    gap = paper_gap("lipo_lambda", "pair_logistic")
    if mode["weightings"]:
        out.append(claim(texts[3], [
            (f"DCG weight > {WEIGHTINGS[w]}", judge(lipo_main, points(res["ablation"][w]),
                                                     paper_effect=gap))
            for w in mode["weightings"]], "MLP policy"))
    return out + matched_kl_claim(res, mode)


def matched_kl_claim(res: dict, mode: dict) -> list[dict]:
    """Claim 5 (not the paper's): LiPO-λ beats pair-logistic on their frontiers' common KL grid."""
    pair = [res["beta"][n] for n in ("lipo_lambda", "pair_logistic")]
    grid = kl_grid(pair, mode["grid"])
    if not grid.size:
        return []
    lipo_m, pl_m = (matched(s, grid) for s in pair)
    gap = paper_gap("lipo_lambda", "pair_logistic")
    return [claim("LiPO-lambda beats pair-logistic at matched KL (frontier over beta and "
                  "training steps)", [
                      (f"LiPO-λ > pair-logistic at KL {k:.2f}",
                       judge(lipo_m[:, g], pl_m[:, g], paper_effect=gap))
                      for g, k in enumerate(grid)], "MLP policy, frontier")]


# ----------------------------------------------------------------------------- outputs

def _unique_settings(res: dict):
    """Every run once (the K sweep's K = 8 column is the main block's run)."""
    blocks = [v for k, v in res.items() if k != "list_size"] + list(res["list_size"].values())
    return list({id(s): s for settings in blocks for s in settings.values()}.values())


def _without_trajectories(tree):
    if isinstance(tree, dict):
        return {k: _without_trajectories(v) for k, v in tree.items() if k != "trajectory"}
    return tree


def _cell(values_R, digits=1):
    return harness.seeds_summary(values_R, digits=digits)


def _interval(p: dict, digits: int = 2) -> str:
    return f"{p['estimate']:+.{digits}f} [{p['low']:+.{digits}f}, {p['high']:+.{digits}f}]"


def power_statement(c: dict) -> str:
    """What the claim could have detected: the largest minimum detectable effect of its parts."""
    if math.isnan(c["mde"]):
        return "no seed-to-seed spread in any part (identical arms): nothing to detect"
    can = "can" if c["mde"] <= c["paper_effect"] else "cannot"
    return (f"minimum detectable effect (one-sided α = {ALPHA}, power 0.8, t over "
            f"{c['parts'][0]['n']} seeds) at most {c['mde']:.2f} across the parts, against a "
            f"smallest paper effect of {c['paper_effect']:.2f}: this experiment {can} detect "
            "effects of the paper's size")


def main_table(res: dict) -> list[str]:
    paper = published.LIPO["win_rate"]
    rows = []
    for n in LOSSES:
        m = res["main"][n]
        lin = _cell(points(res["linear"][n])) if "linear" in res else "—"
        rows.append([LABELS[n], _cell(points(m)), _cell(points(m, "gold"), 3),
                     _cell(points(m, "kl"), 2), lin, f"{paper[n][0]:.2f}", f"{paper[n][1]:.2f}"])
    return [harness.markdown_table(
        ["loss", "win rate % (MLP)", "gold (MLP)", "KL nats (MLP)", "win rate % (linear)",
         "paper TL;DR", "paper HH"], rows)]


def convergence_table(res: dict) -> list[str]:
    """Mean win rate at a few recorded steps: whether the runs have settled."""
    steps = res["main"]["lipo_lambda"].get("steps")
    if not steps:
        return []
    t = len(steps)
    picks = sorted({0, t // 4 - 1, t // 2 - 1, t - 1} - {-1})
    rows = []
    for n in LOSSES:
        win_RxT = 100.0 * np.asarray(res["main"][n]["trajectory"]["win_rate"])[0]
        rows.append([LABELS[n], *[f"{np.mean(win_RxT[:, i]):.1f}" for i in picks]])
    return ["", f"Convergence: mean win rate (%) at recorded steps (MLP, K = {MAIN_K}).", "",
            harness.markdown_table(["loss", *[f"step {steps[i]}" for i in picks]], rows)]


def size_table(res: dict, mode: dict) -> list[str]:
    sizes = sorted(int(k) for k in res["list_size"])
    if len(sizes) < 2:
        return []
    rows = [[LABELS[n], *[_cell(points(res["list_size"][str(k)][n])) for k in sizes],
             _cell(slopes(res, n), 2)] for n in LOSSES if n in mode["swept"]]
    return ["", f"Win rate (%) by list size K ({LISTS} lists per step at every K); last column: "
            "per-seed slope (points per doubling of K).", "",
            harness.markdown_table(["loss", *[f"K = {k}" for k in sizes], "slope / doubling"],
                                   rows)]


def ablation_table(res: dict, mode: dict) -> list[str]:
    lipo = res["main"]["lipo_lambda"]
    rows = [["DCG weight (LiPO-λ)", _cell(points(lipo)), _cell(points(lipo, "kl"), 2), ""]]
    for w in mode["weightings"]:
        a = res["ablation"][w]
        rows.append([WEIGHTINGS[w], _cell(points(a)), _cell(points(a, "kl"), 2),
                     _cell(points(lipo) - points(a), 2)])
    return ["", f"Lambda-weight ablations of LiPO-λ (K = {MAIN_K}); difference = DCG weight "
            "minus the ablation, paired by seed.", "",
            harness.markdown_table(["lambda weight", "win rate %", "KL nats",
                                    "DCG − this (points)"], rows)]


def claim_lines(cl: list[dict], source: str = "criteria pre-registered in README.md"
                ) -> list[str]:
    lines = ["", f"Claims ({source}): each part's effect in points "
             f"with its {100 * (1 - 2 * ALPHA):.0f}% paired-t interval, its verdict, and whether "
             "it holds after Holm within the claim.", ""]
    for c in cl:
        lines.append(f"- **{c['claim']}** ({c['scope']}) → **{c['verdict']}**")
        for p in c["parts"]:
            lines.append(f"  - {p['comparison']}: {_interval(p)}, {p['verdict']}"
                         f"{', holds after Holm' if p['held_after_holm'] else ''}"
                         f" (paper {p['paper_effect']:+.2f})")
        lines.append(f"  - power: {power_statement(c)}")
    return lines


def markdown(res: dict, mode: dict, mode_name: str, cl: list[dict]) -> str:
    total = sum(s.get("seconds", 0.0) for s in _unique_settings(res))
    lines = [f"# LiPO on the pool world, Tier A ({mode_name} mode, {mode['seeds']} seeds)", "",
             "Mean ± 95% t interval over seeds. Win rate (%): exact gold win rate against "
             f"pi_ref on held-out prompts. K = {MAIN_K}, beta = {BETA}, {mode['steps']} steps × "
             f"{LISTS} lists. Paper: {published.LIPO['citation']} ({published.LIPO['setting']}).",
             ""]
    lines += main_table(res) + convergence_table(res) + size_table(res, mode)
    lines += ablation_table(res, mode) + frontier_table(res, mode) + claim_lines(cl)
    lines += ["", f"Training time of all runs (compilation included): {total / 60:.1f} min."]
    return "\n".join(lines) + "\n"


def frontier_table(res: dict, mode: dict) -> list[str]:
    """Win rate at matched KL for every loss whose frontier reaches the grid, and the fixed-
    setting vs matched-KL difference of LiPO-λ and pair-logistic."""
    pair = [res["beta"][n] for n in ("lipo_lambda", "pair_logistic")]
    grid = kl_grid(pair, mode["grid"])
    if not grid.size:
        return ["", "Matched KL: the frontiers of LiPO-λ and pair-logistic do not reach "
                f"{KL_GRID_FROM} nats on every seed; no comparison."]
    betas = ", ".join(f"{b:g}" for b in mode["betas"])
    lines = ["", f"Win rate (%) at matched KL (nats): the upper frontier over beta ∈ "
             f"{{{betas}}} and the metrics recorded every {mode['record_every']} training "
             "steps, per seed, interpolated at common KL values (— where some seed's frontier "
             "does not reach it).", ""]
    rows = []
    for n in LOSSES:
        if n not in res["beta"]:
            continue
        top = reach(res["beta"][n])
        vals = matched(res["beta"][n], grid)
        rows.append([LABELS[n], *[_cell(vals[:, g]) if k <= top else "—"
                                  for g, k in enumerate(grid)]])
    lines.append(harness.markdown_table(["loss", *[f"KL {k:.2f}" for k in grid]], rows))
    fixed = points(res["main"]["lipo_lambda"]) - points(res["main"]["pair_logistic"])
    at = matched(pair[0], grid) - matched(pair[1], grid)
    lines += ["", "LiPO-λ minus pair-logistic (points, paired by seed): at the fixed setting "
              f"(beta = {BETA}, {mode['steps']} steps) and at matched KL.", ""]
    lines.append(harness.markdown_table(
        ["fixed setting", *[f"KL {k:.2f}" for k in grid]],
        [[_cell(fixed, 2), *[_cell(at[:, g], 2) for g in range(grid.size)]]]))
    return lines


def plot_losses(res: dict, path: str) -> None:
    def draw(ax):
        for i, n in enumerate(LOSSES):
            m, h = stats.mean_ci(points(res["main"][n]))
            ax.bar(i, m, yerr=0.0 if math.isnan(h) else h, capsize=3,
                   color="C1" if n == "lipo_lambda" else "C0")
            ax.plot(i, published.LIPO["win_rate"][n][0], "k^",
                    label="paper (TL;DR)" if i == 0 else None)
        ax.set_xticks(range(len(LOSSES)), [LABELS[n] for n in LOSSES], rotation=30)
        ax.axhline(50, color="gray", lw=0.8)

    harness.plot(path, draw, title=f"Tier A: gold win rate against pi_ref, K = {MAIN_K} (95% CI)",
                 ylabel="win rate (%)")


def plot_sizes(res: dict, mode: dict, path: str) -> None:
    sizes = sorted(int(k) for k in res["list_size"])

    def draw(ax):
        for n in (n for n in LOSSES if n in mode["swept"]):
            cis = [stats.mean_ci(points(res["list_size"][str(k)][n])) for k in sizes]
            ax.errorbar(sizes, [m for m, _ in cis], yerr=[0 if math.isnan(h) else h
                                                          for _, h in cis],
                        marker="o", capsize=3, label=LABELS[n])
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(k) for k in sizes])

    harness.plot(path, draw, title="Tier A: win rate against list size (95% CI)",
                 xlabel="list size K", ylabel="win rate (%)")


def plot_frontier(res: dict, path: str) -> None:
    def draw(ax):
        for n in (n for n in LOSSES if n in res["beta"]):
            grid = np.linspace(0.0, reach(res["beta"][n]), 40)
            ax.plot(grid, matched(res["beta"][n], grid).mean(axis=0), label=LABELS[n])

    harness.plot(path, draw, title="Tier A: win rate against KL (frontier over beta and steps)",
                 xlabel="KL(pi || pi_ref), nats", ylabel="win rate (%)")


def main(argv=None) -> int:
    p = harness.parser(__doc__)
    p.add_argument("--frontier-every", type=int, default=0, metavar="N",
                   help="post hoc, outside the pre-registered protocol: only the beta sweep of "
                        "LiPO-λ and pair-logistic, with exact metrics every N steps, and the "
                        "matched-KL comparison on it")
    args = p.parse_args(argv)
    mode_name, mode = harness.mode_settings(p, args, MODES, min_seeds=2, why="paired intervals")
    name = "lipo_pool" if mode_name == "full" else f"lipo_pool_{mode_name}"
    if args.frontier_every:
        if args.publish or mode["steps"] % args.frontier_every:
            p.error("--frontier-every: a post-hoc check (no --publish) whose N divides the "
                    f"{mode['steps']} steps")
        return frontier_check(mode, harness.output_dir(
            args.out, f"{name}_frontier_every{args.frontier_every}"), args.frontier_every)
    out = harness.experiment_output(args, mode_name, "lipo_pool")
    res = run_all(mode, out)
    cl = claims(res, mode)
    md = markdown(res, mode, mode_name, cl)
    plot_losses(res, os.path.join(out, PLOTS[0]))
    plot_sizes(res, mode, os.path.join(out, PLOTS[1]))
    plot_frontier(res, os.path.join(out, PLOTS[2]))
    return harness.finish(out, {"mode": mode_name, "settings": mode, "beta": BETA, "lr": LR,
                                "lists_per_step": LISTS, "width": WIDTH, "alpha": ALPHA,
                                "results": _without_trajectories(res), "claims": cl}, md,
                          publish_to=HERE if args.publish else "", results_md=RESULTS_MD,
                          plots=PLOTS)


def frontier_check(mode: dict, out: str, every: int) -> int:
    """The matched-KL comparison with the frontier recorded every `every` steps (post hoc)."""
    mode = dict(mode, record_every=every, frontier=("pair_logistic", "lipo_lambda"))
    res = run_all(mode, out, frontier_only=True)
    cl = matched_kl_claim(res, mode)
    md = "\n".join([f"# Tier A, post hoc: LiPO-λ and pair-logistic at matched KL, metrics every "
                    f"{every} steps ({mode['seeds']} seeds)", *frontier_table(res, mode),
                    *claim_lines(cl, "claim 5's pre-registered rule, applied post hoc to "
                                     "this finer frontier")]) + "\n"
    plot_frontier(res, os.path.join(out, PLOTS[2]))
    harness.write_outputs(out, {"settings": mode, "results": _without_trajectories(res),
                                "claims": cl}, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
