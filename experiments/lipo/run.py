"""LiPO (Liu et al., arXiv 2402.01878) on the review world: listwise losses, list sizes, ablations.

    python experiments/lipo/run.py --quick    # the seven losses at K = 8, LiPO-λ at K = 2 and 32
    python experiments/lipo/run.py            # full protocol (3 seeds)
    python experiments/lipo/run.py --publish  # the same, then results.md and the plots here

Outputs go to ~/align-runs/experiments/lipo (lipo_quick for --quick; $ALIGN_RUNS replaces
~/align-runs) or --out.

One tiny SFT policy is trained once; every listwise run starts from it (it is also the
reference) and trains `configs/preference.py:objective=NAME` on K-lists of completions that the
world's labeler grades, psi_k = (1/K) sum_i P(y_k > y_i). The metric is the gold win rate of the
trained policy's samples against the SFT policy's on held-out prompts (eval `win_rate`), with the
gold reward and the sequence KL to the SFT policy beside it. The number of prompts (lists) and
of lists per batch are the same for every K, so a larger K means more responses per prompt.
Dimension letters: R seeds (runs), K list sizes (responses per prompt).
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import harness  # noqa: E402

from align.evaluate import stats  # noqa: E402
from third_party import published  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
LOSSES = ("point_mse", "point_sigmoid", "softmax", "pair_hinge", "pair_logistic", "list_mle",
          "lipo_lambda")
LABELS = {"point_mse": "point-mse", "point_sigmoid": "point-sigmoid", "softmax": "softmax",
          "pair_hinge": "pair-hinge", "pair_logistic": "pair-logistic", "list_mle": "list-mle",
          "lipo_lambda": "LiPO-λ"}
POINTWISE = ("point_mse", "point_sigmoid")
STRONG = ("pair_hinge", "pair_logistic", "list_mle", "lipo_lambda")
# lipo_lambda's weighting -> row label. "constant" is the pair-logistic loss term for term,
# so the pair_logistic runs stand in for it (no separate run).
ABLATIONS = {"lambda": "DCG weight (LiPO-λ)", "constant_gain": "constant gain",
             "constant_discount": "constant discount", "constant": "constant (= pair-logistic)"}
MAIN_K = 8
PLOTS = ("win_rate_vs_k.png", "losses_k8.png")
METRICS = ("win_rate", "sample_gold_reward", "kl")

# World, model and training settings of each mode (see README.md for the reasoning).
MODES = {
    "full": dict(seeds=3, losses=LOSSES, list_sizes=(2, 4, 8, 16, 32),
                 sweep=("pair_logistic", "list_mle", "lipo_lambda"),
                 ablations=("constant_gain", "constant_discount"), steps=40, batch=4,
                 num_train=256, eval_prompts=256, sft_steps=300, sft_train=4096),
    "quick": dict(seeds=1, losses=LOSSES, list_sizes=(2, MAIN_K, 32), sweep=("lipo_lambda",),
                  ablations=(), steps=60, batch=4, num_train=256, eval_prompts=128,
                  sft_steps=300, sft_train=4096),
    "tiny": dict(seeds=1, losses=("lipo_lambda",), list_sizes=(2, MAIN_K),
                 sweep=("lipo_lambda",), ablations=(), steps=3, batch=2, num_train=16,
                 eval_prompts=8, sft_steps=5, sft_train=256),
}
BETA = 0.05  # the paper's
TEMPERATURE = 0.5  # labeler noise: P(a > b) = sigmoid((gold_a - gold_b) / 0.5)
LR = 2e-4


# ----------------------------------------------------------------------------- settings

def settings(mode: dict) -> list[tuple[str, int, str]]:
    """(loss, K, weighting) of every run: all losses at K = 8, the sweep, the ablations."""
    # Cheapest first, K = 32 last: a run stopped early still has the main table.
    out = [(loss, MAIN_K, "lambda") for loss in mode["losses"]]
    out += [("lipo_lambda", MAIN_K, w) for w in mode["ablations"]]
    out += [(loss, k, "lambda") for k in sorted(mode["list_sizes"]) for loss in mode["sweep"]
            if k != MAIN_K]
    return out


def setting_name(loss: str, k: int, weighting: str = "lambda") -> str:
    return f"{loss}_K{k}" + ("" if weighting == "lambda" else f"_{weighting}")


def world_overrides(out: str, *, num_train: int, eval_prompts: int) -> list[str]:
    """Data and evaluation keys every run of the experiment shares."""
    return ["--config.data.num_test=256", f"--config.data.num_prompts={max(eval_prompts, 8)}",
            "--config.eval.num_batches=1", f"--config.eval.num_samples={eval_prompts}",
            # 24 + 40 new tokens fit the configs' 64 positions (data and model). Offline runs
            # never sample rollouts; online's length is set too so no config asks for more.
            "--config.data.max_prompt_len=24", "--config.eval.max_new_tokens=40",
            "--config.online.max_new_tokens=40",
            f"--config.data.num_train={num_train}", f"--config.data.data_dir={out}/data",
            f"--config.task.temperature={TEMPERATURE}",
            # Only the final evaluation: intermediate ones would double a run's cost.
            "--config.train.eval_every=0"]


def run_all(mode: dict, out: str, seeds: int) -> dict:
    """{setting name: {metric: [value per seed]}}; runs are cached in out/runs."""
    sft_dir = os.path.join(out, "runs", "sft")
    harness.log("SFT")
    harness.train(f"configs/sft.py:size=tiny,steps={mode['sft_steps']}", sft_dir,
                  world_overrides(out, num_train=mode["sft_train"],
                                  eval_prompts=mode["eval_prompts"]))
    results = {}
    for loss, k, weighting in settings(mode):
        name = setting_name(loss, k, weighting)
        per_seed = {m: [] for m in (*METRICS, "seconds")}
        for seed in range(seeds):
            harness.log(f"{name} seed {seed}")
            overrides = world_overrides(out, num_train=mode["num_train"],
                                        eval_prompts=mode["eval_prompts"]) + [
                f"--config.seed={seed}", f"--config.data.list_size={k}",
                f"--config.data.batch_size={mode['batch']}",
                f"--config.objective.beta={BETA}", f"--config.optim.lr={LR}",
                f"--config.train.checkpoint_every={mode['steps']}",
                f"--config.init.workdir={sft_dir}", "--config.init.config="]
            if loss == "lipo_lambda":
                overrides.append(f"--config.objective.weighting={weighting}")
            result = harness.train(
                f"configs/preference.py:objective={loss},size=tiny,steps={mode['steps']}",
                os.path.join(out, "runs", f"{name}_s{seed}"), overrides)
            for m in METRICS:
                per_seed[m].append(result["eval"][m])
            per_seed["seconds"].append(result["seconds"])
        results[name] = per_seed
    if mode["ablations"] and setting_name("pair_logistic", MAIN_K) in results:
        results[setting_name("lipo_lambda", MAIN_K, "constant")] = \
            results[setting_name("pair_logistic", MAIN_K)]
    return results


# ----------------------------------------------------------------------------- criteria

def paired_ci(a_R, b_R) -> tuple[float, float]:
    """Mean and 95% half-width of the per-seed differences a - b."""
    a_R, b_R = np.asarray(a_R, np.float64), np.asarray(b_R, np.float64)
    if a_R.shape != b_R.shape:
        raise ValueError(f"paired_ci: seeds do not match, shapes {a_R.shape} and {b_R.shape}")
    return stats.mean_ci(a_R - b_R)


def beats(a_R, b_R) -> str:
    """'yes' when a's mean exceeds b's and the paired 95% interval excludes 0; 'mean only' when
    only the mean is higher; 'no' otherwise."""
    mean, half = paired_ci(a_R, b_R)
    if mean > 0 and not math.isnan(half) and mean - half > 0:
        return "yes"
    return "mean only" if mean > 0 else "no"


def verdict(outcomes: list[str]) -> str:
    """'reproduced' if every comparison is 'yes', 'partly' if every mean agrees, else not."""
    if outcomes and all(o == "yes" for o in outcomes):
        return "reproduced"
    if outcomes and all(o in ("yes", "mean only") for o in outcomes):
        return "partly"
    return "not reproduced"


def log2_slopes(list_sizes_K, values_RxK) -> np.ndarray:
    """Per-seed least-squares slope of a metric against log2 K: slopes_R."""
    x_K = np.log2(np.asarray(list_sizes_K, np.float64))
    values_RxK = np.asarray(values_RxK, np.float64)
    if values_RxK.ndim != 2 or values_RxK.shape[1] != x_K.size or x_K.size < 2:
        raise ValueError(f"log2_slopes: values of shape {values_RxK.shape} for list sizes "
                         f"{tuple(list_sizes_K)} (need [seeds, >= 2 sizes])")
    xc_K = x_K - x_K.mean()
    return (values_RxK - values_RxK.mean(axis=1, keepdims=True)) @ xc_K / np.sum(xc_K ** 2)


def improves(slopes_R) -> str:
    """'yes' when the 95% interval of the mean slope lies above 0, 'mean only', or 'no'."""
    mean, half = stats.mean_ci(slopes_R)
    if mean > 0 and not math.isnan(half) and mean - half > 0:
        return "yes"
    return "mean only" if mean > 0 else "no"


def claims(results: dict, list_sizes) -> list[dict]:
    """Each published claim with its comparisons and verdict (criteria fixed in README.md)."""
    wr = {name: r["win_rate"] for name, r in results.items()}
    main = {loss: wr[setting_name(loss, MAIN_K)] for loss in LOSSES
            if setting_name(loss, MAIN_K) in wr}
    out = []
    if all(loss in main for loss in LOSSES):
        # 1: both pointwise losses below softmax, softmax below each pairwise/listwise loss.
        comps = [(f"softmax > {LABELS[p]}", beats(main["softmax"], main[p])) for p in POINTWISE]
        comps += [(f"{LABELS[s]} > softmax", beats(main[s], main["softmax"])) for s in STRONG]
        out.append({"claim": published.LIPO["claims"][0], "comparisons": comps})
    if "lipo_lambda" in main and "pair_logistic" in main:
        out.append({"claim": published.LIPO["claims"][1], "comparisons": [
            ("LiPO-λ > pair-logistic", beats(main["lipo_lambda"], main["pair_logistic"]))]})
    sweep = [loss for loss in LOSSES
             if all(setting_name(loss, k) in wr for k in list_sizes)]
    if len(list_sizes) >= 2 and "lipo_lambda" in sweep:
        comps = []
        for loss in sweep:
            slopes_R = log2_slopes(list_sizes, np.stack([wr[setting_name(loss, k)]
                                                         for k in list_sizes], axis=1))
            outcome = improves(slopes_R)
            if loss == "lipo_lambda":
                comps.append(("LiPO-λ: slope vs log2 K > 0", outcome))
            else:
                # The claim holds for another loss when it does NOT improve steadily.
                comps.append((f"{LABELS[loss]}: slope vs log2 K not > 0",
                              {"yes": "no", "mean only": "mean only", "no": "yes"}[outcome]))
        out.append({"claim": published.LIPO["claims"][2], "comparisons": comps})
    ablated = [w for w in ABLATIONS if w != "lambda"
               and setting_name("lipo_lambda", MAIN_K, w) in wr]
    if ablated and "lipo_lambda" in main:
        out.append({"claim": published.LIPO["claims"][3], "comparisons": [
            (f"DCG weight > {ABLATIONS[w]}",
             beats(main["lipo_lambda"], wr[setting_name("lipo_lambda", MAIN_K, w)]))
            for w in ablated]})
    for c in out:
        c["verdict"] = verdict([o for _, o in c["comparisons"]])
    return out


# ----------------------------------------------------------------------------- outputs

def _cell(values_R, scale=1.0, digits=1):
    return harness.seeds_summary(values_R, digits=digits, scale=scale)


def markdown(results: dict, list_sizes, seeds: int, mode_name: str) -> str:
    paper = published.LIPO["win_rate"]
    lines = [f"# LiPO on the review world ({mode_name} mode, {seeds} seed(s), mean ± 95% CI)", "",
             f"Win rate (%) against the SFT policy by gold reward, K = {MAIN_K}; paper: "
             f"{published.LIPO['citation']} ({published.LIPO['setting']}).", ""]
    rows = []
    for loss in (loss for loss in LOSSES if setting_name(loss, MAIN_K) in results):
        r = results[setting_name(loss, MAIN_K)]
        rows.append([LABELS[loss], _cell(r["win_rate"], 100), _cell(r["sample_gold_reward"], 1, 3),
                     _cell(r["kl"], 1, 1), f"{paper[loss][0]:.2f}", f"{paper[loss][1]:.2f}"])
    lines.append(harness.markdown_table(
        ["loss", "ours: win rate %", "ours: gold reward", "ours: KL (nats)", "paper TL;DR",
         "paper HH"], rows))
    sizes = tuple(list_sizes)
    swept = [loss for loss in LOSSES if all(setting_name(loss, k) in results for k in sizes)]
    if len(sizes) >= 2 and swept:
        lines += ["", "Win rate (%) against the SFT policy by list size K (same prompts, "
                  "more responses per prompt); last column: per-seed slope of the win rate "
                  "(points) per doubling of K.", ""]
        rows = []
        for loss in swept:
            wr_RxK = np.stack([results[setting_name(loss, k)]["win_rate"] for k in sizes], axis=1)
            rows.append([LABELS[loss], *[_cell(wr_RxK[:, j], 100) for j in range(len(sizes))],
                         _cell(log2_slopes(sizes, wr_RxK), 100, 2)])
        lines.append(harness.markdown_table(
            ["loss", *[f"K = {k}" for k in sizes], "slope / doubling"], rows))
    abl = [w for w in ABLATIONS if setting_name("lipo_lambda", MAIN_K, w) in results]
    if len(abl) > 1 and "lambda" in abl:
        lines += ["", f"Lambda-weight ablations of LiPO-λ, K = {MAIN_K}; paired difference = "
                  "DCG weight minus the ablation (per seed).", ""]
        base = results[setting_name("lipo_lambda", MAIN_K)]["win_rate"]
        rows = []
        for w in abl:
            r = results[setting_name("lipo_lambda", MAIN_K, w)]
            diff = "" if w == "lambda" else harness.seeds_summary(
                np.subtract(base, r["win_rate"]), digits=1, scale=100)
            rows.append([ABLATIONS[w], _cell(r["win_rate"], 100),
                         _cell(r["sample_gold_reward"], 1, 3), _cell(r["kl"], 1, 1), diff])
        lines.append(harness.markdown_table(
            ["lambda weight", "win rate %", "gold reward", "KL (nats)", "DCG − this (points)"],
            rows))
    lines += ["", "Claims (criteria fixed in README.md before the full run):", ""]
    for c in claims(results, sizes):
        comps = "; ".join(f"{text}: {outcome}" for text, outcome in c["comparisons"])
        lines.append(f"- **{c['claim']}** → **{c['verdict']}** ({comps})")
    total = sum(sum(r["seconds"]) for name, r in results.items()
                if not name.endswith("_constant"))
    lines += ["", f"Training + evaluation time of the listwise runs: {total / 60:.1f} min."]
    return "\n".join(lines) + "\n"


def plot_sweep(results: dict, list_sizes, path: str) -> None:
    sizes = tuple(list_sizes)
    swept = [loss for loss in LOSSES if all(setting_name(loss, k) in results for k in sizes)]

    def draw(ax):
        for i, loss in enumerate(swept):
            cis = [stats.mean_ci(results[setting_name(loss, k)]["win_rate"]) for k in sizes]
            means = [100 * m for m, _ in cis]
            errs = [0.0 if math.isnan(h) else 100 * h for _, h in cis]
            # Small horizontal offsets keep the error bars of the losses apart.
            xs = [k * 2 ** (0.06 * (i - (len(swept) - 1) / 2)) for k in sizes]
            ax.errorbar(xs, means, yerr=errs, marker="o", capsize=3, label=LABELS[loss])
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(sizes), [str(k) for k in sizes])

    harness.plot(path, draw, title="Gold win rate against SFT vs list size (95% CI)",
                 xlabel="list size K", ylabel="win rate (%)")


def plot_losses(results: dict, path: str) -> None:
    losses = [loss for loss in LOSSES if setting_name(loss, MAIN_K) in results]

    def draw(ax):
        for i, loss in enumerate(losses):
            r = results[setting_name(loss, MAIN_K)]
            m, h = stats.mean_ci(r["win_rate"])
            ax.bar(i, 100 * m, yerr=0.0 if math.isnan(h) else 100 * h, capsize=3,
                   color="C1" if loss == "lipo_lambda" else "C0", label=None)
            ax.plot(i, published.LIPO["win_rate"][loss][0], "k^",
                    label="paper (TL;DR)" if i == 0 else None)
        ax.set_xticks(range(len(losses)), [LABELS[loss] for loss in losses], rotation=30)
        ax.axhline(50, color="gray", lw=0.8)

    harness.plot(path, draw, title=f"Gold win rate against SFT, K = {MAIN_K} (95% CI)",
                 xlabel="", ylabel="win rate (%)")


def _compilation_cache(path: str) -> None:
    """Persistent XLA cache: the seeds of a setting compile the same step and sampler."""
    import jax
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def main(argv=None) -> int:
    p = harness.parser(__doc__)
    p.add_argument("--list-sizes", default="", help="comma-separated list sizes of the K sweep "
                   "(default: the mode's; 8 is always run)")
    args = p.parse_args(argv)
    mode_name = harness.mode(p, args)
    mode = dict(MODES[mode_name])
    if args.list_sizes:
        try:
            sizes = tuple(sorted({int(k) for k in args.list_sizes.split(",")} | {MAIN_K}))
        except ValueError:
            p.error(f"--list-sizes must be comma-separated integers, got {args.list_sizes!r}")
        if sizes[0] < 2:
            p.error(f"--list-sizes: every K must be at least 2, got {args.list_sizes!r}")
        mode["list_sizes"] = sizes
    seeds = args.seeds or mode["seeds"]
    if seeds < 1:
        p.error(f"--seeds must be at least 1, got {seeds}")
    default = "lipo" if mode_name == "full" else f"lipo_{mode_name}"
    out = harness.output_dir(args.out, default)
    os.makedirs(out, exist_ok=True)
    _compilation_cache(os.path.join(out, "jax_cache"))
    results = run_all(mode, out, seeds)
    md = markdown(results, mode["list_sizes"], seeds, mode_name)
    plot_sweep(results, mode["list_sizes"], os.path.join(out, PLOTS[0]))
    plot_losses(results, os.path.join(out, PLOTS[1]))
    harness.write_outputs(out, {"mode": mode_name, "seeds": seeds, "settings": mode,
                                "beta": BETA, "temperature": TEMPERATURE, "lr": LR,
                                "results": results,
                                "claims": claims(results, mode["list_sizes"])}, md)
    if args.publish:
        harness.publish(out, HERE, ["results.md", *PLOTS])
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
