"""DPO against PPO on the gold reward-KL frontier (Rafailov et al., arXiv 2305.18290, Fig. 2 left).

    python experiments/dpo_vs_ppo/run.py --quick    # seed 0, the extreme settings of each family
    python experiments/dpo_vs_ppo/run.py            # full protocol: 3 seeds, 4 settings per family
    python experiments/dpo_vs_ppo/run.py --publish  # the same, then results.md, frontier.png here

Outputs go to ~/align-runs/experiments/dpo_vs_ppo ($ALIGN_RUNS replaces ~/align-runs) or --out.

One SFT run and one Bradley-Terry reward model (on the same labelled pairs DPO trains on) are
shared. From the SFT policy: DPO at several beta, PPO at several fixed KL coefficients scored by
the learned reward model (PPO-RM) or by the world's gold reward (PPO-gold). Every evaluation of
every run is a point (KL(pi || pi_ref) in nats per sequence, gold reward of samples); a family's
frontier is the best gold reward any of its checkpoints reaches within a KL budget.
Dimension letters: M checkpoints (points), R seeds, G KL grid values, F families.
"""

from __future__ import annotations

import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import harness  # noqa: E402

from align.evaluate import stats  # noqa: E402
from third_party import published  # noqa: E402

NAME = "dpo_vs_ppo"
FAMILIES = ("dpo", "ppo_rm", "ppo_gold")
LABELS = {"dpo": "DPO", "ppo_rm": "PPO-RM", "ppo_gold": "PPO-gold"}
COLOURS = {"dpo": "tab:blue", "ppo_rm": "tab:orange", "ppo_gold": "tab:green"}
PARAMETER = {"dpo": "beta", "ppo_rm": "kl_coef", "ppo_gold": "kl_coef"}
SETTINGS = {"dpo": (0.03, 0.1, 0.3, 1.0), "ppo_rm": (0.01, 0.03, 0.1, 0.3),
            "ppo_gold": (0.01, 0.03, 0.1, 0.3)}
# Pre-registered criterion (README): DPO's frontier minus a PPO family's frontier, averaged over
# seeds, must be >= -TOLERANCE (gold reward units, range [-1, 1]) at each of GRID_POINTS KL
# values spread evenly over the KL range every family covers.
TOLERANCE = 0.05
GRID_POINTS = 5
PLOT = "frontier.png"
# 16 tokens truncate about half of the prompts. Every sequence (demonstrations, labelled pairs,
# rollouts, samples) must fit both the data and the model, so both lengths come from here.
PROMPT_LEN = 24
NEW_TOKENS = 48
LENGTHS = harness.lengths(PROMPT_LEN, NEW_TOKENS)

# Steps per run and evaluations per run for each mode; the quick mode's runs are the full
# protocol's seed-0 runs at the extreme settings (so a full run reuses them).
MODES = {
    "full": dict(seeds=3, sft_steps=300, rm_steps=200, dpo_steps=100, dpo_eval=25,
                 ppo_steps=40, ppo_eval=10, eval_samples=128, subset=None, dpo_extra=[],
                 ppo_extra=[],
                 data=["--config.data.num_train=4096", "--config.data.num_test=256",
                       "--config.data.num_prompts=256", "--config.eval.num_batches=1"]),
    "tiny": dict(seeds=1, sft_steps=40, rm_steps=10, dpo_steps=10, dpo_eval=5,
                 ppo_steps=4, ppo_eval=2, eval_samples=16, subset=1,
                 # A few steps must move both families' KL into a shared range for the
                 # frontier code to run.
                 dpo_extra=["--config.optim.lr=1e-3", "--config.optim.warmup_steps=0"],
                 ppo_extra=["--config.optim.lr=1e-3", "--config.optim.warmup_steps=0"],
                 data=["--config.data.num_train=256", "--config.data.num_test=64",
                       "--config.data.num_prompts=64", "--config.eval.num_batches=1",
                       "--config.data.batch_size=16", "--config.data.eval_batch_size=16",
                       "--config.model.n_layers=1"]),
}
MODES["quick"] = dict(MODES["full"], seeds=1, subset=2)


# ----------------------------------------------------------------------------- frontier maths

def budget_frontier(kl_M, reward_M, grid_G):
    """Best reward among the points whose KL is within each budget: frontier_G (NaN if none)."""
    kl_M, reward_M = np.asarray(kl_M, np.float64), np.asarray(reward_M, np.float64)
    if kl_M.shape != reward_M.shape or kl_M.ndim != 1:
        raise ValueError(f"budget_frontier: kl {kl_M.shape} and reward {reward_M.shape} "
                         "must be 1-D of the same length")
    grid_G = np.asarray(grid_G, np.float64)
    within_GxM = kl_M[None, :] <= grid_G[:, None]
    best_G = np.where(within_GxM, reward_M[None, :], -np.inf).max(axis=1, initial=-np.inf)
    return np.where(np.isfinite(best_G), best_G, np.nan)


def shared_range(points):
    """(lo, hi) KL range every family covers; points: {family: [(seed, kl_M, reward_M)]}.

    lo is the largest over families of their smallest positive checkpoint KL (any seed), hi the
    smallest over families and seeds of the largest checkpoint KL, so every seed's frontier of
    every family has a point at or below hi. Returns None when the ranges do not overlap.
    """
    lows, highs = [], []
    for family, runs in points.items():
        positive = [k for _, kl_M, _ in runs for k in np.asarray(kl_M) if k > 1e-6]
        if not positive:
            return None
        lows.append(min(positive))
        highs.extend(float(np.max(kl_M)) for _, kl_M, _ in runs)
    lo, hi = max(lows), min(highs)
    return (lo, hi) if lo < hi else None


def compare(frontier_a_RxG, frontier_b_RxG, tolerance=TOLERANCE):
    """Seed-wise a - b on the grid: mean, 95% half-width, whether mean >= -tolerance everywhere."""
    diff_RxG = np.asarray(frontier_a_RxG, np.float64) - np.asarray(frontier_b_RxG, np.float64)
    if diff_RxG.ndim != 2:
        raise ValueError(f"compare: frontiers must be seeds x grid, got shape {diff_RxG.shape}")
    if np.isnan(diff_RxG).any():
        raise ValueError("compare: a frontier is undefined (NaN) on the grid")
    summary_Gx2 = np.array([stats.mean_ci(diff_RxG[:, g]) for g in range(diff_RxG.shape[1])])
    mean_G, half_G = summary_Gx2[:, 0], summary_Gx2[:, 1]
    return {"diff_mean": mean_G.tolist(), "diff_half": half_G.tolist(),
            "holds_at": (mean_G >= -tolerance).tolist(),
            "holds": bool(np.all(mean_G >= -tolerance))}


def verdict(comparisons):
    """'reproduced' if DPO holds against both PPO families, 'partly' against one, else 'not'."""
    if comparisons is None:
        return "not reproduced (no KL range shared by all three families)"
    held = [name for name in ("ppo_rm", "ppo_gold") if comparisons[name]["holds"]]
    if len(held) == 2:
        return "reproduced"
    if held:
        return f"partly (holds against {LABELS[held[0]]} only)"
    return "not reproduced"


# ----------------------------------------------------------------------------- runs

def run_all(out, mode, seeds):
    """Trains everything; returns {family: [(setting, seed, steps_M, kl_M, reward_M)]}."""
    m = MODES[mode]
    common = [f"--config.data.data_dir={os.path.join(out, 'data')}", *LENGTHS, *m["data"]]
    size = "tiny"
    sft = os.path.join(out, f"sft_n{m['sft_steps']}")
    harness.log(f"SFT -> {sft}")
    harness.train(f"configs/sft.py:size={size},steps={m['sft_steps']}", sft,
                  common + [f"--config.eval.num_samples={m['eval_samples']}"])
    init = [f"--config.init.workdir={sft}", "--config.init.config="]
    rm = os.path.join(out, f"rm_n{m['rm_steps']}")
    harness.log(f"reward model -> {rm}")
    harness.train(f"configs/reward_model.py:size={size},steps={m['rm_steps']}", rm, common + init)
    policy = common + init + [f"--config.eval.num_samples={m['eval_samples']}"]
    points = {f: [] for f in FAMILIES}
    for seed in range(seeds):
        for family in FAMILIES:
            settings = SETTINGS[family]
            if m["subset"]:
                settings = (settings[0], settings[-1])[:m["subset"]]
            for value in settings:
                workdir = os.path.join(out, f"{family}_{value:g}_s{seed}_n"
                                       f"{m['dpo_steps'] if family == 'dpo' else m['ppo_steps']}")
                if family == "dpo":
                    config = f"configs/preference.py:size={size},steps={m['dpo_steps']}"
                    extra = [f"--config.objective.beta={value}",
                             f"--config.train.eval_every={m['dpo_eval']}", *m["dpo_extra"]]
                else:
                    config = f"configs/online.py:objective=ppo,size={size},steps={m['ppo_steps']}"
                    extra = [f"--config.objective.kl_coef={value}",
                             f"--config.train.eval_every={m['ppo_eval']}", *m["ppo_extra"]]
                    extra += (["--config.online.scorer=reward_model",
                               f"--config.online.scorer_workdir={rm}"]
                              if family == "ppo_rm" else ["--config.online.scorer=gold"])
                harness.log(f"{LABELS[family]} {PARAMETER[family]}={value:g} seed {seed}")
                harness.train(config, workdir, policy + extra + [f"--config.seed={seed}"])
                points[family].append((value, seed, *read_points(workdir)))
    return points


def read_points(workdir):
    """(steps_M, kl_M, reward_M) of every evaluation of a finished run."""
    kl = dict(harness.metrics(workdir, "eval/kl"))
    reward = dict(harness.metrics(workdir, "eval/sample_gold_reward"))
    steps = sorted(set(kl) & set(reward))
    if not steps:
        raise ValueError(f"{workdir}/metrics.jsonl: no step with both eval/kl and "
                         "eval/sample_gold_reward")
    return (np.array(steps), np.array([kl[s] for s in steps]),
            np.array([reward[s] for s in steps]))


def per_seed(points, family):
    """[(seed, kl_M, reward_M)] pooling every setting of a family within each seed."""
    seeds = sorted({seed for _, seed, *_ in points[family]})
    pooled = []
    for seed in seeds:
        runs = [(kl, r) for _, s, _, kl, r in points[family] if s == seed]
        pooled.append((seed, np.concatenate([k for k, _ in runs]),
                       np.concatenate([r for _, r in runs])))
    return pooled


def analyse(points):
    """Grid, per-family frontiers on it and the two comparisons (None without a shared range)."""
    pooled = {f: per_seed(points, f) for f in FAMILIES}
    span = shared_range(pooled)
    if span is None:
        return {"shared_range": None, "grid_kl": [], "frontier": {}, "comparisons": None}
    grid_G = np.linspace(span[0], span[1], GRID_POINTS)
    frontier = {}
    for family in FAMILIES:
        f_RxG = np.array([budget_frontier(kl, r, grid_G) for _, kl, r in pooled[family]])
        summary = [stats.mean_ci(f_RxG[:, g]) for g in range(GRID_POINTS)]
        frontier[family] = {"per_seed": f_RxG.tolist(), "mean": [s[0] for s in summary],
                            "half": [s[1] for s in summary]}
    dpo_RxG = frontier["dpo"]["per_seed"]
    comparisons = {f: compare(dpo_RxG, frontier[f]["per_seed"]) for f in ("ppo_rm", "ppo_gold")}
    return {"shared_range": list(span), "grid_kl": grid_G.tolist(), "frontier": frontier,
            "comparisons": comparisons}


# ----------------------------------------------------------------------------- outputs

def final_rows(points):
    """Per setting: last checkpoint's KL and gold reward over seeds."""
    rows = []
    for family in FAMILIES:
        for value in sorted({v for v, *_ in points[family]}):
            runs = [(kl[-1], r[-1]) for v, _, _, kl, r in points[family] if v == value]
            rows.append([LABELS[family], f"{PARAMETER[family]}={value:g}", len(runs),
                         harness.seeds_summary([k for k, _ in runs], digits=2),
                         harness.seeds_summary([r for _, r in runs])])
    return rows


def markdown(points, analysis, seeds, seconds):
    """results.md: frontier table, DPO-minus-PPO differences, final checkpoints, the paper."""
    parts = [f"# DPO vs PPO: gold reward-KL frontier ({seeds} seed(s), 95% intervals over seeds)",
             ""]
    if analysis["comparisons"] is None:
        parts += ["No KL range is shared by all three families: the criterion cannot be "
                  "evaluated.", ""]
    else:
        grid = analysis["grid_kl"]
        headers = ["family"] + [f"KL ≤ {k:.2f}" for k in grid]
        rows = [[LABELS[f]] + [stats.fmt_ci(m, h) for m, h in
                               zip(*(analysis["frontier"][f][k] for k in ("mean", "half")))]
                for f in FAMILIES]
        for name, c in analysis["comparisons"].items():
            rows.append([f"DPO − {LABELS[name]}"] + [
                stats.fmt_ci(m, h) + ("" if ok else " ✗")
                for m, h, ok in zip(c["diff_mean"], c["diff_half"], c["holds_at"])])
        parts += ["Frontier: best gold reward of any checkpoint with KL(π‖π_ref) (nats per "
                  "sequence) within the budget. Criterion: DPO − PPO ≥ "
                  f"−{TOLERANCE} at every grid value (✗ marks a failure).", "",
                  harness.markdown_table(headers, rows), ""]
        for name, c in analysis["comparisons"].items():
            parts.append(f"- DPO vs {LABELS[name]}: {'holds' if c['holds'] else 'fails'} "
                         f"({sum(c['holds_at'])}/{len(c['holds_at'])} grid values)")
        parts.append("")
    parts += [f"**Verdict: {verdict(analysis['comparisons'])}**", "",
              "Last checkpoint of each setting:", "",
              harness.markdown_table(["family", "setting", "seeds", "KL (nats)", "gold reward"],
                                     final_rows(points)), "",
              f"Published ({published.DPO['citation']}; {published.DPO['setting']}): the paper "
              "gives a figure, no table. Claim: " + published.DPO["claims"][0] + ".", "",
              f"Wall-clock time: {seconds / 60:.1f} min."]
    return "\n".join(parts)


def plot(points, analysis, path):
    """Every checkpoint (3 colours) and each family's seed-mean frontier with its interval."""
    def draw(ax):
        for family in FAMILIES:
            kl = np.concatenate([p[3] for p in points[family]])
            reward = np.concatenate([p[4] for p in points[family]])
            ax.scatter(kl, reward, s=12, alpha=0.45, color=COLOURS[family], label=LABELS[family])
            pooled = per_seed(points, family)
            top = min(float(np.max(k)) for _, k, _ in pooled)
            grid = np.linspace(0.0, top, 200)
            f_RxG = np.array([budget_frontier(k, r, grid) for _, k, r in pooled])
            mean = f_RxG.mean(axis=0)
            ax.plot(grid, mean, color=COLOURS[family], lw=2, label=f"{LABELS[family]} frontier")
            if f_RxG.shape[0] > 1:
                half = np.array([stats.mean_ci(f_RxG[:, g])[1] for g in range(grid.size)])
                ax.fill_between(grid, mean - half, mean + half, color=COLOURS[family], alpha=0.15)
        if analysis["shared_range"]:
            for k in analysis["shared_range"]:
                ax.axvline(k, color="grey", ls="--", lw=0.8)
    harness.plot(path, draw, title="Gold reward vs KL (dashed: shared KL range)",
                 xlabel="KL(π ‖ π_ref), nats per sequence", ylabel="gold reward of samples")


def main(argv=None) -> int:
    import time
    p = harness.parser(__doc__)
    args = p.parse_args(argv)
    mode = harness.mode(p, args)
    seeds = args.seeds or MODES[mode]["seeds"]
    out = harness.output_dir(args.out, NAME)
    os.makedirs(out, exist_ok=True)
    # Runs differ mostly in constants and seeds: a persistent compilation cache skips most of
    # the recompilation every new trainer would do (compiling is most of a small run's time).
    import jax
    jax.config.update("jax_compilation_cache_dir", os.path.join(out, "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    start = time.time()
    points = run_all(out, mode, seeds)
    analysis = analyse(points)
    seconds = time.time() - start
    results = {
        "mode": mode, "seeds": seeds, "tolerance": TOLERANCE, "seconds": seconds,
        "settings": {f: sorted({v for v, *_ in points[f]}) for f in FAMILIES},
        "points": {f: [{"setting": v, "seed": s, "step": st.tolist(), "kl": kl.tolist(),
                        "gold_reward": r.tolist()} for v, s, st, kl, r in points[f]]
                   for f in FAMILIES},
        **analysis, "verdict": verdict(analysis["comparisons"]),
    }
    text = markdown(points, analysis, seeds, seconds)
    harness.write_outputs(out, results, text)
    plot(points, analysis, os.path.join(out, PLOT))
    if args.publish:
        harness.publish(out, HERE, ["results.md", PLOT])
    print(text)
    harness.log(f"wrote results.md, results.json and {PLOT} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
