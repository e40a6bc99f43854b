"""SEAL (Revel et al., arXiv 2408.10270) in the review world: feature imprint, alignment
resistance and robustness of reward models, against the exact features and gold reward.

    python experiments/seal/run.py --quick    # 4 seeds, short runs (about 4 minutes; no verdict)
    python experiments/seal/run.py            # full protocol (16 seeds; see README.md)
    python experiments/seal/run.py --publish  # the same, then results.md and the plot here

Outputs go to ~/align-runs/experiments/seal (seal_quick for --quick; $ALIGN_RUNS replaces
~/align-runs) or --out.

Protocol (README.md): one SFT run; a population of R reward models trained from it on pairs
labelled by a spoiler-biased labeler (pre); each member then fine-tuned on the same pairs
labelled without the biases (post: member p from pre member p). The world's gold reward ignores
the spoilers (task.filler_penalty = 0; task.min_sentences = 4, so a sentence without sentiment
leaves gold unchanged). Every analysis runs on the post run's training pairs D.
Dimension letters: R seeds, M pairs, N = 2M texts.
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import harness  # noqa: E402

from align.evaluate import stats  # noqa: E402
from third_party import published  # noqa: E402

MODES = {
    "full": dict(seeds=16, sft_steps=300, pre_steps=100, post_steps=50, pairs=1024,
                 num_train=8192),
    "quick": dict(seeds=4, sft_steps=60, pre_steps=60, post_steps=30, pairs=192,
                  num_train=4096),
    "tiny": dict(seeds=2, sft_steps=2, pre_steps=3, post_steps=2, pairs=48, num_train=256),
}
ANALYSIS_VERSION = 1  # part of the analysis cache's key: a new version recomputes it
# The world: gold ignores filler and sentence count (spoilers). Sequences of 112 tokens hold
# every review whole (the longest is about 90 tokens after a 16-token prompt), and the model's
# 128 positions the rewritten texts, a few tokens longer.
WORLD = ["--config.task.min_sentences=4", "--config.task.filler_penalty=0",
         "--config.task.temperature=0.25", "--config.data.max_len=112",
         "--config.model.max_len=128", "--config.data.max_prompt_len=16"]
BIASES = {"length_bias": 0.15, "filler_bias": 0.3}
# (The world's reviews always name their own product only, so off_topic is constant on D.)
TARGETS = ("sentiment_sum", "mentions_product", "mentions_aspect")
SPOILERS = ("n_sentences", "n_fillers")
FEATURES = TARGETS + SPOILERS
KINDS = ("add_filler", "add_fact", "swap_opener")
RATIO = 1.5  # resistance where the label contradicts gold, over the rate elsewhere
MIN_FLIPS = 0.02
PLOT = "imprints.png"


def _stages(settings: dict, out: str, tiny: bool) -> dict:
    """Trains SFT, the pre population and the post population; returns their workdirs."""
    data = [f"--config.data.num_train={settings['num_train']}", "--config.data.num_test=256",
            "--config.data.num_prompts=256", "--config.eval.num_batches=1"]
    if tiny:
        data = [f"--config.data.num_train={settings['num_train']}",
                                        "--config.data.num_test=32", "--config.data.num_prompts=32",
                                        "--config.eval.num_batches=1",
                                        "--config.data.batch_size=16",
                                        "--config.data.eval_batch_size=16",
                                        "--config.eval.num_samples=4",
                                        "--config.eval.max_new_tokens=8"]
    common = WORLD + data
    dirs = {k: os.path.join(out, "runs", k) for k in ("sft", "pre", "post")}
    harness.log("SFT")
    harness.train(f"configs/sft.py:size=tiny,steps={settings['sft_steps']}", dirs["sft"], common)
    pop = [f"--config.population.size={settings['seeds']}", "--config.population.data=split",
           "--config.init.config="]
    harness.log(f"pre: {settings['seeds']} reward models on spoiler-biased labels")
    harness.train(f"configs/reward_model.py:size=tiny,steps={settings['pre_steps']}", dirs["pre"],
                  common + pop + [f"--config.init.workdir={dirs['sft']}"]
                  + [f"--config.task.{k}={v}" for k, v in BIASES.items()])
    harness.log("post: each fine-tuned on the same pairs, labelled without the biases")
    harness.train(f"configs/reward_model.py:size=tiny,steps={settings['post_steps']}",
                  dirs["post"], common + pop + [f"--config.init.workdir={dirs['pre']}",
                                               "--config.optim.warmup_steps=10"])
    return dirs


def analyse(dirs: dict, settings: dict) -> dict:
    """Every reward model's imprint, regimes, resistance and flip rates on D."""
    from align.analysis import reward_models, rewrites, seal, seal_report

    # D: the first pairs of the post run's training data (its labels), with the world's features.
    d = seal_report.pairs_from_run(dirs["post"], limit=settings["pairs"], features=FEATURES)
    world, features, gold_N = d.world, d.features, d.gold
    prompts, chosen, rejected, m = d.prompts, d.chosen, d.rejected, d.m
    pair_N = np.concatenate([np.arange(m)] * 2)
    gold_fit = seal.ols_clustered(gold_N, features, pair_N, standardize=True)
    checks = rewrites.world_rewrites(world, KINDS)
    models = {stage: reward_models.members(dirs[stage]) for stage in ("pre", "post")}
    per = {stage: [] for stage in models}
    margins = {}
    for stage, members in models.items():
        for p, rm in enumerate(members):
            harness.log(f"analysing {stage} member {p}")
            r_N = rm.rewards(prompts + prompts, chosen + rejected)
            margins[(stage, p)] = r_N[:m] - r_N[m:]
            fit = seal.ols_clustered(r_N, features, pair_N, standardize=True)
            flips = seal.flip_rates(rm.rewards, prompts, chosen, rejected, checks)
            per[stage].append({
                "coef": {k: fit[k] for k in FEATURES},
                "se": dict(zip(fit.names[1:], map(float, fit.se[1:]))),
                "r2": fit.r2, "flips": flips.rates, "flip_counts": flips.counts,
                "flip_overall": flips.overall,
            })
    gold_margin = gold_N[:m] - gold_N[m:]
    for p in range(len(models["post"])):
        res = seal.resistance(margins[("post", p)], margins[("pre", p)], gold_margin_M=gold_margin)
        per["post"][p]["resistance"] = {
            "regimes": res.regimes, "agreement_pre": res.agreement_pre,
            "agreement_post": res.agreement_post, "resistance": res.resistance,
            "gold_agrees": res.resistance_gold_agrees,
            "gold_disagrees": res.resistance_gold_disagrees,
            "n_gold_agrees": res.n_gold_agrees, "n_gold_disagrees": res.n_gold_disagrees}
    return {"pairs": m, "gold": {"coef": {k: gold_fit[k] for k in FEATURES}, "r2": gold_fit.r2},
            "label_gold_agreement": float(np.mean(gold_margin > 0)),
            "members": per}


# ----------------------------------------------------------------------------- criteria

def spoiler(member: dict) -> float:
    """A model's spoiler imprint: its standardised coefficients of the spoilers, summed."""
    return float(sum(member["coef"][k] for k in SPOILERS))


def log_ratio(res: dict) -> float:
    """log(resistance where the label contradicts gold / where it agrees); a zero rate where
    it agrees is floored at one pair's share, so the ratio stays finite."""
    floor = 1.0 / max(res["n_gold_agrees"], 1)
    return math.log(max(res["gold_disagrees"], floor) / max(res["gold_agrees"], floor))


def criteria(result: dict) -> dict:
    """The pre-registered claims (README.md), each a verdict of align.evaluate.stats."""
    from align.analysis import seal

    pre, post = result["members"]["pre"], result["members"]["post"]
    col = lambda ms, f: np.asarray([f(x) for x in ms], np.float64)
    target_post = col(post, lambda x: x["coef"]["sentiment_sum"])
    sp_pre, sp_post = col(pre, spoiler), col(post, spoiler)
    claims = {
        "target": stats.directional(target_post, paper_effect=0.5, smallest_effect=0.1),
        "spoiler_pre": stats.directional(sp_pre, paper_effect=0.1, smallest_effect=0.02),
        "spoiler_shrinks": stats.directional(0.5 * sp_pre - sp_post, paper_effect=0.05,
                                             smallest_effect=0.0),
        "spoiler_stays": stats.directional(sp_post, paper_effect=0.05, smallest_effect=0.01),
        "resistance_ratio": stats.directional(
            col(post, lambda x: log_ratio(x["resistance"]) - math.log(RATIO)),
            paper_effect=math.log(2.0 / RATIO), smallest_effect=0.0),
        "flips": stats.directional(col(post, lambda x: x["flip_overall"] - MIN_FLIPS),
                                   paper_effect=0.03, smallest_effect=0.0),
        "flips_rise": seal.relation(
            np.concatenate([col(pre, lambda x: x["flip_overall"]),
                            col(post, lambda x: x["flip_overall"])]),
            np.concatenate([sp_pre, sp_post]), np.concatenate([np.arange(len(pre))] * 2),
            paper_slope=0.1, smallest_slope=0.0),
    }
    spoiler_claim = stats.conjunction([claims[k] for k in
                                       ("spoiler_pre", "spoiler_shrinks", "spoiler_stays")])
    robust_claim = stats.conjunction([claims["flips"], claims["flips_rise"]])
    return {"parts": claims, "claims": {
        "target imprint": claims["target"].verdict,
        "spoiler imprint > 0, halved by fine-tuning, still > 0": spoiler_claim.verdict,
        f"resistance where the label contradicts gold >= {RATIO}x elsewhere":
            claims["resistance_ratio"].verdict,
        f"rewrites flip >= {MIN_FLIPS:.0%} of preferences, more with the spoiler imprint":
            robust_claim.verdict}}


# ----------------------------------------------------------------------------- report

def _ci(values, digits=3, scale=1.0):
    return harness.seeds_summary(values, digits=digits, scale=scale)


def markdown(result: dict, verdicts: dict, settings: dict, mode_name: str) -> str:
    pre, post = result["members"]["pre"], result["members"]["post"]
    col = lambda ms, f: [f(x) for x in ms]
    paper = published.SEAL
    lines = [f"# SEAL in the review world ({mode_name}: {settings['seeds']} seeds, "
             f"{result['pairs']} pairs of D)", "",
             f"Labels of D agree with gold on {result['label_gold_agreement']:.1%} of pairs "
             "(noise temperature 0.25).", "",
             "## Verdicts (pre-registered criteria, README.md)", ""]
    lines += harness.markdown_table(("claim", "verdict"), list(verdicts["claims"].items())).split("\n")
    lines += ["", harness.markdown_table(
        ("test", "estimate", "interval (90%, each side a 5% test)", "verdict"),
        [(k, f"{j.estimate:+.4f}", f"[{j.low:+.4f}, {j.high:+.4f}]", j.verdict)
         for k, j in verdicts["parts"].items()]), ""]
    lines += ["## Imprint (standardised OLS coefficients, pair-clustered; mean ± 95% over seeds)",
              ""]
    rows = [(k, _ci(col(pre, lambda x: x["coef"][k])), _ci(col(post, lambda x: x["coef"][k])),
             f"{result['gold']['coef'][k]:+.3f}") for k in FEATURES]
    rows.append(("centred R²", _ci(col(pre, lambda x: x["r2"])),
                 _ci(col(post, lambda x: x["r2"])), f"{result['gold']['r2']:.3f}"))
    lines += harness.markdown_table(("feature", "pre (biased labels)", "post (fine-tuned)", "gold"),
                                    rows).split("\n")
    res = [x["resistance"] for x in post]
    lines += ["", "## Regimes and resistance on D (share of pairs; mean ± 95% over seeds)", ""]
    rows = [(k, _ci([r["regimes"][k] for r in res], scale=100, digits=1),
             f"{100 * paper['regimes'][k]:.1f}") for k in ("stayed", "got", "resisted", "reversed")]
    rows += [("agreement before", _ci([r["agreement_pre"] for r in res], scale=100, digits=1),
              f"{100 * paper['agreement_pre']:.0f}"),
             ("agreement after", _ci([r["agreement_post"] for r in res], scale=100, digits=1),
              f"{100 * paper['agreement_post']:.0f}"),
             ("resistance, label agrees with gold",
              _ci([r["gold_agrees"] for r in res], scale=100, digits=1), "—"),
             ("resistance, label contradicts gold",
              _ci([r["gold_disagrees"] for r in res], scale=100, digits=1),
              f"{100 * paper['resistance_where_labelers_disagree']:.0f} (labellers disagree)")]
    lines += harness.markdown_table(("regime", "ours (%)", "SEAL, hh-rlhf (%)"), rows).split("\n")
    lines += ["", "## Robustness: flip rates under gold-invariant rewrites (%)", ""]
    rows = [(k, _ci(col(pre, lambda x: x["flips"][k]), scale=100, digits=2),
             _ci(col(post, lambda x: x["flips"][k]), scale=100, digits=2),
             int(np.mean(col(post, lambda x: x["flip_counts"][k])))) for k in KINDS]
    rows.append(("all", _ci(col(pre, lambda x: x["flip_overall"]), scale=100, digits=2),
                 _ci(col(post, lambda x: x["flip_overall"]), scale=100, digits=2), "—"))
    lines += harness.markdown_table(("rewrite", "pre", "post", "cases"), rows).split("\n")
    lines += ["", f"SEAL: {paper['citation']}; {paper['source']}."]
    return "\n".join(lines)


def plot(out: str, result: dict) -> None:
    pre, post = result["members"]["pre"], result["members"]["post"]

    def draw(ax):
        x = np.arange(len(FEATURES))
        for shift, ms, label in ((-0.25, pre, "pre (biased labels)"),
                                 (0.0, post, "post (fine-tuned)")):
            vals = np.asarray([[m["coef"][k] for k in FEATURES] for m in ms])
            mean = vals.mean(0)
            half = np.asarray([stats.mean_ci(vals[:, j])[1] for j in range(len(FEATURES))])
            ax.bar(x + shift, mean, 0.25, yerr=half, capsize=3, label=label)
        ax.bar(x + 0.25, [result["gold"]["coef"][k] for k in FEATURES], 0.25, label="gold")
        ax.set_xticks(x, FEATURES, rotation=20)
        ax.axhline(0, color="k", lw=0.5)
        ax.legend()

    harness.plot(os.path.join(out, PLOT), draw, title="Feature imprints (95% over seeds)",
                 xlabel="feature", ylabel="standardised coefficient (SD of reward per unit)")


def main(argv=None) -> int:
    p = harness.parser(__doc__)
    args = p.parse_args(argv)
    mode_name, settings = harness.mode_settings(p, args, MODES, min_seeds=2,
                                                why="intervals over seeds")
    out = harness.experiment_output(args, mode_name, "seal")
    dirs = _stages(settings, out, mode_name == "tiny")
    result = harness.cached(os.path.join(out, "analysis.json"),
                            dict(settings, version=ANALYSIS_VERSION),
                            lambda: analyse(dirs, settings))
    verdicts = criteria(result)
    plot(out, result)
    md = markdown(result, verdicts, settings, mode_name)
    results = {"settings": settings, "analysis": result, "claims": verdicts["claims"],
               "parts": {k: vars(j) for k, j in verdicts["parts"].items()}}
    return harness.finish(out, results, md, publish_to=HERE if args.publish else "",
                          plots=(PLOT,))


if __name__ == "__main__":
    sys.exit(main())
