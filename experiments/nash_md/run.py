"""Nash-MD-PG against RLHF under an intransitive judge (Munos et al., arXiv 2312.00886, Table 1).

    python experiments/nash_md/run.py --quick    # a few minutes
    python experiments/nash_md/run.py            # full protocol
    python experiments/nash_md/run.py --publish  # the same, then results.md and the plots here

Outputs go to ~/align-runs/experiments/nash_md ($ALIGN_RUNS replaces ~/align-runs) or --out.

The gold judge is the review world's labeler with a rock-paper-scissors term over the three
review styles (align/tasks/labelers.py): no scalar reward can represent it. From one SFT policy:
a pairwise preference model and a Bradley-Terry reward model are fitted on the same labelled
pairs; Nash-MD-PG(β) is trained against the preference model for every mixture coefficient β
(β = 0 self-play, β = 1 best response to the reference), and the RLHF baseline is RLOO against
the reward model with the same KL coefficient. Every policy answers the same held-out prompts;
the metric is P(Nash-MD(β) ≻ RLHF) under the gold judge, averaged over all RLHF seeds, with 95%
intervals over the Nash-MD seeds.
Dimension letters: R seeds, U mixture coefficients β, B prompts, K samples per prompt, S styles.
"""

from __future__ import annotations

import collections
import contextlib
import json
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import harness  # noqa: E402

from align.evaluate import cycle, stats  # noqa: E402
from align.tasks import labelers, reviews  # noqa: E402
from third_party import published  # noqa: E402

NAME = "nash_md"
HERE = os.path.dirname(os.path.abspath(__file__))
PLOTS = ("win_rate_vs_beta.png", "kl_vs_beta.png")
BETAS = (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)
STYLES = ("the", "i", "it", "other")
# The gold judge: P(a ≻ b) = σ((gold(a) − gold(b) + W·C[style a, style b]) / T). With W = 0.5
# one style beating another is worth half the range between a neutral and a perfect review.
TEMPERATURE = 0.25
INTRANSITIVE = 0.5
TAU = 0.1  # Nash-MD's KL coefficient, and RLOO's, so both sides pay the same for drifting
# Two samples per prompt on both sides. Nash-MD's advantage P − ½ − τ·log-ratio is about a
# quarter of RLOO's reward difference for the same pair (σ(Δr) − ½ ≈ Δr/4) and it trains one of
# the two samples, so it gets a larger step size to travel a comparable KL (checked in --quick).
RLOO_SAMPLES = 2
NASH_LR = 1e-3
# Prompts of up to 24 tokens (16 truncates about half) plus 48 sampled tokens. Data and model
# share one length, so labelled pairs are scored whole and rollouts fit what the models saw.
PROMPT_LEN = 24
NEW_TOKENS = 48
LENGTHS = harness.lengths(PROMPT_LEN, NEW_TOKENS)

MODES = {
    # steps of each stage, labelled pairs, held-out prompts x samples for the head-to-heads,
    # prompts of each policy run's final evaluation (its KL and gold-reward win rate)
    # require_cycle: stop before any policy run unless the preference model learned the cycle
    # (align/evaluate/cycle.py; --ignore_precondition runs them anyway, and says so).
    "full": dict(sft_steps=400, pm_steps=300, policy_steps=80, num_train=4096, prompts=128,
                 samples=2, seeds=3, betas=BETAS, size="tiny", eval_samples=64,
                 require_cycle=True),
    "quick": dict(sft_steps=300, pm_steps=150, policy_steps=60, num_train=2048, prompts=64,
                  samples=2, seeds=1, betas=(0.0, 0.25, 1.0), size="tiny", eval_samples=64,
                  require_cycle=True),
    "tiny": dict(sft_steps=20, pm_steps=10, policy_steps=2, num_train=512, prompts=8,
                 samples=1, seeds=1, betas=(0.0, 0.5, 1.0), size="tiny", eval_samples=8,
                 require_cycle=False),
}


# ----------------------------------------------------------------------------- criteria

def dips(mean_U, hw_U) -> list[tuple[int, int, int]]:
    """(i, j, k), i < j < k, where β_j's upper CI bound lies below both neighbours' lower bounds."""
    m, h = np.asarray(mean_U, float), np.asarray(hw_U, float)
    out = []
    for j in range(1, len(m) - 1):
        left = [i for i in range(j) if m[j] + h[j] < m[i] - h[i]]
        right = [k for k in range(j + 1, len(m)) if m[j] + h[j] < m[k] - h[k]]
        if left and right:
            out.append((left[0], j, right[0]))
    return out


def criteria(betas_U, mean_U, hw_U) -> dict:
    """The pre-registered checks of the paper's claims on win rates against RLHF (README)."""
    betas, m, h = np.asarray(betas_U, float), np.asarray(mean_U, float), np.asarray(hw_U, float)
    if not (betas.shape == m.shape == h.shape) or betas.ndim != 1 or len(betas) < 3:
        raise ValueError(f"criteria: need >= 3 betas with one mean and half-width each, got shapes "
                         f"{betas.shape}, {m.shape}, {h.shape}")
    if not np.isclose(betas[-1], 1.0) or not np.all(np.diff(betas) > 0):
        raise ValueError(f"criteria: betas must increase and end at 1, got {betas.tolist()}")
    best = int(np.argmax(m))
    top = m[-1] + h[-1]
    return {
        "argmax_beta": float(betas[best]),
        "best_small_positive": bool(0.0 < betas[best] <= 0.5),
        # β = 1's upper bound lies below every other β's mean.
        "beta1_worst": bool(np.all(top < m[:-1])),
        "dips": dips(m, h),
        "unimodal": not dips(m, h),
    }


# ----------------------------------------------------------------------------- runs

def judge() -> labelers.Labeler:
    """The gold preference, intransitive part included."""
    return labelers.Labeler(reviews.ReviewWorld(reviews.WorldConfig(seed=0)),
                            labelers.LabelerConfig(temperature=TEMPERATURE,
                                                   intransitive=INTRANSITIVE, seed=0))


def style_shares(prompts_B, texts_BxK, world) -> np.ndarray:
    """Share of samples opening in each style ("the", "i", "it", other), [S]."""
    counts = collections.Counter(int(world.features(p, y)["style"])
                                 for p, row in zip(prompts_B, texts_BxK) for y in row)
    total = max(sum(counts.values()), 1)
    return np.array([counts[s] / total for s in (0, 1, 2, -1)])


def train_all(out: str, mode: dict, seeds: int, ignore_precondition: bool = False) -> dict:
    """Every run of the protocol; returns their workdirs (and, under "precondition", the
    preference model's learned-cycle check, made before any policy run). Cached runs are read
    back."""
    size, data_dir = mode["size"], os.path.join(out, "data")
    world = [*harness.TINY_DATA, f"--config.data.num_train={mode['num_train']}",
             *LENGTHS,
             f"--config.data.data_dir={data_dir}", f"--config.task.temperature={TEMPERATURE}",
             f"--config.task.intransitive={INTRANSITIVE}"]
    dirs = {"sft": os.path.join(out, "sft"), "pm": os.path.join(out, "pm"),
            "rm": os.path.join(out, "rm")}
    harness.log("SFT")
    # The SFT run's own sampling evaluation is skipped: its samples are drawn below.
    harness.train(f"configs/sft.py:size={size},steps={mode['sft_steps']}", dirs["sft"],
                  [*world, "--config.eval.num_samples=0"])
    start = [f"--config.init.workdir={os.path.abspath(dirs['sft'])}", "--config.init.config="]
    for key, objective in (("pm", "preference_model"), ("rm", "reward_model")):
        harness.log(objective)
        harness.train(f"configs/reward_model.py:objective={objective},size={size},"
                      f"steps={mode['pm_steps']}", dirs[key], [*world, *start])
    check = cycle.preference_model_check(dirs["pm"])
    harness.log(f"precondition, the preference model's cycle: {check.describe()}")
    dirs["precondition"] = {"learned": check.learned, "share": check.share,
                            "share_low": check.share_low, "threshold": check.threshold,
                            "alpha": check.fit.alpha, "gamma": check.fit.gamma,
                            "pairs": check.fit.n, "text": check.describe()}
    if not check.learned and mode["require_cycle"] and not ignore_precondition:
        raise SystemExit(
            "the preference model did not learn the judge's cycle, so no Nash-MD claim can be "
            f"tested on it: {check.describe()}. Train it longer (pm_steps) or on more pairs "
            "(num_train), or pass --ignore_precondition to run the policies anyway.")
    policy = f"size={size},steps={mode['policy_steps']}"
    online = [*world, *start, f"--config.eval.num_samples={mode['eval_samples']}",
              "--config.train.eval_every=1000000"]
    for seed in range(seeds):
        harness.log(f"RLHF (RLOO on the reward model), seed {seed}")
        dirs[("rlhf", seed)] = os.path.join(out, f"rlhf_s{seed}")
        harness.train(f"configs/online.py:objective=rloo,{policy}", dirs[("rlhf", seed)],
                      [*online, f"--config.seed={seed}", "--config.online.scorer=reward_model",
                       f"--config.online.scorer_workdir={os.path.abspath(dirs['rm'])}",
                       f"--config.objective.kl_coef={TAU}",
                       f"--config.objective.samples={RLOO_SAMPLES}"])
        for beta in mode["betas"]:
            harness.log(f"Nash-MD-PG beta={beta}, seed {seed}")
            dirs[(beta, seed)] = os.path.join(out, f"nash_b{beta:g}_s{seed}")
            harness.train(f"configs/online.py:objective=nash_md,{policy}", dirs[(beta, seed)],
                          [*online, f"--config.seed={seed}",
                           "--config.online.scorer=preference_model",
                           f"--config.online.scorer_workdir={os.path.abspath(dirs['pm'])}",
                           f"--config.objective.mixture_beta={beta}",
                           f"--config.objective.tau={TAU}", f"--config.optim.lr={NASH_LR}"])
    return dirs


def evaluate(dirs: dict, mode: dict, seeds: int) -> dict:
    """Gold head-to-heads on shared held-out prompts, KL and style shares of every policy."""
    lab = judge()
    texts = {}
    for key, workdir in dirs.items():
        if key in ("pm", "rm", "precondition"):
            continue
        prompts, texts[key] = harness.sample_texts(workdir, num_prompts=mode["prompts"],
                                                   samples=mode["samples"], seed=1234)
    pref = lab.preference_prob
    rlhf = [("rlhf", s) for s in range(seeds)]

    def versus(key, others):
        return float(np.mean([harness.head_to_head(prompts, texts[key], texts[o], pref)[0]
                              for o in others]))

    def final(workdir, name):
        with open(os.path.join(workdir, harness.RESULT)) as f:
            return float(json.load(f)["eval"][name])

    res = {"betas": list(mode["betas"]), "seeds": seeds,
           "sft_styles": style_shares(prompts, texts["sft"], lab.world).tolist(),
           "rlhf": {"vs_sft": [versus(k, ["sft"]) for k in rlhf],
                    "kl": [final(dirs[k], "kl") for k in rlhf],
                    "gold_win_vs_sft": [final(dirs[k], "win_rate") for k in rlhf],
                    "styles": [style_shares(prompts, texts[k], lab.world).tolist() for k in rlhf]},
           "nash": {}}
    for beta in mode["betas"]:
        keys = [(beta, s) for s in range(seeds)]
        res["nash"][str(beta)] = {
            "vs_rlhf": [versus(k, rlhf) for k in keys],
            "vs_sft": [versus(k, ["sft"]) for k in keys],
            "kl": [final(dirs[k], "kl") for k in keys],
            "gold_win_vs_sft": [final(dirs[k], "win_rate") for k in keys],
            "styles": [style_shares(prompts, texts[k], lab.world).tolist() for k in keys],
        }
    return res


# ----------------------------------------------------------------------------- outputs

def summary(res: dict) -> dict:
    """Mean and 95% half-width over seeds of the win rate against RLHF, per β."""
    stats_U = [stats.mean_ci(res["nash"][str(b)]["vs_rlhf"]) for b in res["betas"]]
    mean_U = [m for m, _ in stats_U]
    # One seed has no interval; a zero width keeps the criteria defined (and says so in the table).
    hw_U = [h if math.isfinite(h) else 0.0 for _, h in stats_U]
    return {"mean": mean_U, "hw": hw_U, "criteria": criteria(res["betas"], mean_U, hw_U)}


def _fmt(values) -> str:
    return harness.seeds_summary(values) if len(values) > 1 else f"{values[0]:.3f}"


def markdown(res: dict, summ: dict) -> str:
    paper = published.NASH_MD["win_rate_vs_rlhf"]
    rows = []
    for beta in res["betas"]:
        r = res["nash"][str(beta)]
        name = {0.0: "self-play (β=0)", 1.0: "best response (β=1)"}.get(beta, f"Nash-MD β={beta:g}")
        shares = np.mean(r["styles"], axis=0)
        rows.append([name, _fmt(r["vs_rlhf"]),
                     f"{paper[beta]:.3f}" if beta in paper else "—",
                     _fmt(r["vs_sft"]), _fmt(r["gold_win_vs_sft"]), _fmt(r["kl"]),
                     " / ".join(f"{s:.2f}" for s in shares[:3])])
    rl = res["rlhf"]
    rows.append(["RLHF (RLOO on the BT reward model)", "0.500 (by symmetry)", "0.500",
                 _fmt(rl["vs_sft"]), _fmt(rl["gold_win_vs_sft"]), _fmt(rl["kl"]),
                 " / ".join(f"{s:.2f}" for s in np.mean(rl["styles"], axis=0)[:3])])
    rows.append(["SFT (reference)", "", "", "0.500", "0.500", "0", " / ".join(
        f"{s:.2f}" for s in res["sft_styles"][:3])])
    c = summ["criteria"]
    pre = res.get("precondition")
    lines = [
        "Precondition (checked before any policy run): the preference model's "
        + (pre["text"] if pre else "cycle was not checked"),
        "",
        f"Win rate against RLHF under the gold (intransitive) judge, mean ± 95% CI over "
        f"{res['seeds']} seed(s); paper: {published.NASH_MD['citation']} "
        f"({published.NASH_MD['source']}; the paper has no β = 0.875 row).",
        "",
        harness.markdown_table(
            ["policy", "win vs RLHF (ours)", "win vs RLHF (paper)", "judge win vs SFT",
             "gold-reward win vs SFT", "KL to SFT (nats)", "style shares the/i/it"], rows),
        "",
        f"- argmax of the mean over β: {c['argmax_beta']:g} (in (0, 0.5]: {c['best_small_positive']})",
        f"- β = 1 lowest, its upper CI bound below every other mean: {c['beta1_worst']}",
        f"- unimodal up to CI overlap: {c['unimodal']} (dips (i, j, k) by β index: {c['dips']})",
    ]
    return "\n".join(lines)


def draw_plots(out: str, res: dict, summ: dict) -> None:
    paper = published.NASH_MD["win_rate_vs_rlhf"]
    betas = res["betas"]

    def win(ax):
        ax.errorbar(betas, summ["mean"], yerr=summ["hw"], marker="o", capsize=3,
                    label=f"ours (mean ± 95% CI, {res['seeds']} seeds)")
        for beta in betas:
            ax.scatter([beta] * res["seeds"], res["nash"][str(beta)]["vs_rlhf"], s=8, c="gray",
                       alpha=0.6)
        ax.plot(sorted(paper), [paper[b] for b in sorted(paper)], "s--",
                label="paper, Table 1 (transcribed)")
        ax.axhline(0.5, color="k", lw=0.8, ls=":")

    harness.plot(os.path.join(out, PLOTS[0]), win, title="Nash-MD-PG(β) vs RLHF, gold judge",
                 xlabel="mixture coefficient β", ylabel="P(Nash-MD ≻ RLHF)")

    def kl(ax):
        kl_U = [stats.mean_ci(res["nash"][str(b)]["kl"]) for b in betas]
        ax.errorbar(betas, [m for m, _ in kl_U],
                    yerr=[h if math.isfinite(h) else 0.0 for _, h in kl_U], marker="o",
                    capsize=3, label="Nash-MD-PG(β)")
        ax.axhline(float(np.mean(res["rlhf"]["kl"])), color="r", ls="--", label="RLHF (RLOO)")

    harness.plot(os.path.join(out, PLOTS[1]), kl, title="KL to the SFT policy",
                 xlabel="mixture coefficient β", ylabel="sequence KL (nats)")


@contextlib.contextmanager
def compilation_cache(path: str):
    """JAX's persistent compilation cache in `path` for the duration, then the previous settings.

    Every run builds fresh jitted closures, so the in-memory cache never hits; the programs
    themselves (samplers, steps; β is an argument, not a constant) are identical across seeds
    and β, and compiling them dominates a short run on CPU.
    """
    import jax
    keys = {"jax_compilation_cache_dir": path, "jax_persistent_cache_min_compile_time_secs": 0.0,
            "jax_persistent_cache_min_entry_size_bytes": 0}
    before = {k: getattr(jax.config, k) for k in keys}
    for k, v in keys.items():
        jax.config.update(k, v)
    try:
        yield
    finally:
        for k, v in before.items():
            jax.config.update(k, v)


def main(argv=None) -> int:
    p = harness.parser(__doc__)
    p.add_argument("--ignore_precondition", action="store_true",
                   help="run the policies even if the preference model did not learn the cycle")
    args = p.parse_args(argv)
    name = harness.mode(p, args)
    mode = MODES[name]
    seeds = args.seeds or mode["seeds"]
    out = harness.output_dir(args.out, NAME)
    with compilation_cache(os.path.join(out, "jax_cache")):
        return _run(name, mode, seeds, out, args.publish, args.ignore_precondition)


def _run(name: str, mode: dict, seeds: int, out: str, publish: bool,
         ignore_precondition: bool = False) -> int:
    start = time.time()
    dirs = train_all(out, mode, seeds, ignore_precondition)
    harness.log("head-to-heads")
    res = evaluate(dirs, mode, seeds)
    summ = summary(res)
    res.update(summary=summ, mode=name, precondition=dirs["precondition"],
               temperature=TEMPERATURE, intransitive=INTRANSITIVE,
               tau=TAU, seconds=time.time() - start)
    md = markdown(res, summ)
    harness.write_outputs(out, res, md)
    draw_plots(out, res, summ)
    if publish:
        harness.publish(out, HERE, ["results.md", *PLOTS])
    print(md)
    harness.log(f"done in {time.time() - start:.0f} s; outputs in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
