"""Online IPO round-robin (Calandriello et al., arXiv 2403.08635, Table 2) on the synthetic review world.

    python experiments/online_ipo/run.py --quick    # one seed, short runs
    python experiments/online_ipo/run.py            # full protocol (3 seeds)
    python experiments/online_ipo/run.py --publish  # the same, then results.md and the plots here

Outputs go to ~/align-runs/experiments/online_ipo ($ALIGN_RUNS replaces ~/align-runs) or --out.

One SFT run and one learned reward model (Bradley–Terry on a finite set of noisily labelled
pairs) are shared by every policy. Six online methods (online IPO, IPO-MD(0.125), online DPO,
online SLiC, Nash-MD-PG, PPO) are trained on that reward model, three offline counterparts
(DPO, IPO, SLiC-norm) on the reward model's own labelled pairs, all with the same steps, batch
and learning rate. Every pair of policies is then compared head-to-head on the same held-out
prompts by the gold preference (the world's labeler without biases).
Dimension letters: R seeds, N policies, B prompts, K samples per prompt.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import harness  # noqa: E402

from align.evaluate import stats  # noqa: E402
from third_party import published  # noqa: E402

NAME = "online_ipo"
PLOTS = ("round_robin.png", "average_win_rate.png", "win_rate_vs_kl.png")
ONLINE = ("online_ipo", "ipo_md", "online_dpo", "online_slic", "nash_md", "ppo")
OFFLINE = ("dpo", "ipo", "slic_norm")
LABELS = {"online_ipo": "IPO", "ipo_md": "IPO-MD", "online_dpo": "DPO", "online_slic": "SLiC",
          "nash_md": "Nash-MD-PG", "ppo": "RL (PPO)", "dpo": "offline DPO",
          "ipo": "offline IPO", "slic_norm": "offline SLiC", "sft": "SFT"}
# Regularisation per method, chosen in one calibration pass (README) so that the final KLs
# to the SFT policy are of the same order (2-3 nats). The soft labels of a learned RM sit
# near 1/2, so tau must be small for IPO to move at all; offline counterparts share their
# online version's setting.
SETTINGS = {
    "online_ipo": {"tau": 0.02},
    "ipo_md": {"tau": 0.02, "mixture_beta": 0.125},
    "online_dpo": {"beta": 0.25},
    "online_slic": {"beta": 0.25},
    "nash_md": {"tau": 0.02, "mixture_beta": 0.125},
    "ppo": {"kl_coef": 0.15},
    "dpo": {"beta": 0.25},
    "ipo": {"tau": 0.02},
    "slic_norm": {"beta": 0.25},
}
# The gold judge: the labeler that labelled the reward model's pairs (Bradley–Terry noise at
# temperature 1 on the gold reward), without spoiler biases or intransitivity.
GOLD_TEMPERATURE = 1.0
PAPER_ORDER = ("online_ipo", "ipo_md", "online_dpo", "online_slic", "nash_md", "ppo")

MODES = {
    # seeds, policy steps, SFT steps, RM steps, RM pairs, eval prompts, head-to-head prompts x samples
    "full": dict(seeds=3, steps=60, sft_steps=300, rm_steps=150, pairs=1024, eval_prompts=128,
                 h2h_prompts=128, h2h_samples=2, methods=ONLINE + OFFLINE),
    "quick": dict(seeds=1, steps=30, sft_steps=200, rm_steps=80, pairs=1024, eval_prompts=64,
                  h2h_prompts=64, h2h_samples=1, methods=ONLINE + OFFLINE),
    # The test suite's size: no reward model (the online method is scored by the world's own
    # labeler) and one online and one offline policy, to keep the compilations few.
    "tiny": dict(seeds=1, steps=2, sft_steps=10, rm_steps=0, pairs=256, eval_prompts=8,
                 h2h_prompts=8, h2h_samples=1, methods=("online_ipo", "ipo")),
}


# ----------------------------------------------------------------------------- training

def data_overrides(out: str, mode: dict) -> list[str]:
    """World data and sampling lengths shared by every run (datasets built once in out/data)."""
    return [*harness.TINY_DATA, f"--config.data.data_dir={out}/data",
            # 24 keeps almost every prompt whole; 24 + 40 new tokens fit the models' 64 positions.
            "--config.data.max_prompt_len=24", "--config.eval.max_new_tokens=40",
            "--config.online.max_new_tokens=40",
            f"--config.eval.num_samples={mode['eval_prompts']}"]


def method_run(method: str, *, out: str, seed: int, mode: dict, sft: str, rm: str) -> dict:
    """Trains one policy from the shared SFT run (online: scored by the shared reward model)."""
    common = [*data_overrides(out, mode), f"--config.init.workdir={sft}", "--config.init.config=",
              f"--config.seed={seed}", "--config.optim.lr=2e-4", "--config.optim.warmup_steps=10",
              "--config.data.batch_size=32",
              # One evaluation (KL, gold win rate vs SFT) and one checkpoint, at the end.
              f"--config.train.eval_every={mode['steps']}",
              f"--config.train.checkpoint_every={mode['steps']}"]
    common += [f"--config.objective.{k}={v}" for k, v in SETTINGS[method].items()]
    if method in ONLINE:
        config = f"configs/online.py:size=tiny,steps={mode['steps']},objective={method}"
        if rm:
            common += ["--config.online.scorer=reward_model", f"--config.online.scorer_workdir={rm}"]
    else:
        config = f"configs/preference.py:size=tiny,steps={mode['steps']},objective={method}"
        # The reward model's own labelled pairs, nothing more.
        common += [f"--config.data.num_train={mode['pairs']}"]
    workdir = os.path.join(out, "runs", f"{method}_s{seed}")
    result = harness.train(config, workdir, common)
    return {"workdir": workdir, "eval": result["eval"], "seconds": result.get("seconds", 0.0)}


def train_all(out: str, mode: dict, seeds: int) -> dict:
    """SFT, reward model, then every method for every seed; returns run records."""
    data = data_overrides(out, mode)
    sft = os.path.join(out, "runs", "sft")
    harness.log("SFT")
    # Without a reward model (tiny) the SFT run's sample evaluation is skipped too: nothing reads it.
    sft_result = harness.train(f"configs/sft.py:size=tiny,steps={mode['sft_steps']}", sft,
                               data + ([] if mode["rm_steps"] else ["--config.eval.num_samples=0"]))
    rm, rm_result = "", {"eval": {}}
    if mode["rm_steps"]:
        rm = os.path.join(out, "runs", "reward_model")
        harness.log("reward model")
        rm_result = harness.train(
            f"configs/reward_model.py:size=tiny,steps={mode['rm_steps']}", rm,
            [*data, f"--config.init.workdir={sft}", "--config.init.config=",
             f"--config.data.num_train={mode['pairs']}"])
    runs = {}
    for seed in range(seeds):
        for method in mode["methods"]:
            harness.log(f"seed {seed}: {method}")
            runs[(method, seed)] = method_run(method, out=out, seed=seed, mode=mode, sft=sft, rm=rm)
    return {"sft": sft, "sft_eval": sft_result["eval"], "rm": rm, "rm_eval": rm_result["eval"],
            "runs": runs}


# ----------------------------------------------------------------------------- round-robin

def gold_preference():
    """P(a ≻ b) of the world's unbiased labeler: the judge of every head-to-head."""
    from align.tasks.labelers import Labeler, LabelerConfig
    from align.tasks.reviews import ReviewWorld, WorldConfig
    labeler = Labeler(ReviewWorld(WorldConfig(seed=0)), LabelerConfig(temperature=GOLD_TEMPERATURE))
    return labeler.preference_prob


def complete_matrix(upper_NxN: np.ndarray) -> np.ndarray:
    """Fills the lower triangle with 1 − P(a ≻ b) and the diagonal with ½ from the upper one."""
    upper_NxN = np.asarray(upper_NxN, np.float64)
    if upper_NxN.ndim != 2 or upper_NxN.shape[0] != upper_NxN.shape[1]:
        raise ValueError(f"complete_matrix: needs a square matrix, got shape {upper_NxN.shape}")
    iu = np.triu_indices(upper_NxN.shape[0], k=1)
    if not np.all((upper_NxN[iu] >= 0) & (upper_NxN[iu] <= 1)):
        raise ValueError("complete_matrix: upper-triangle entries must be probabilities in [0, 1]")
    full_NxN = np.full_like(upper_NxN, 0.5)
    full_NxN[iu] = upper_NxN[iu]
    full_NxN[(iu[1], iu[0])] = 1.0 - upper_NxN[iu]
    return full_NxN


def round_robin(texts: dict, prompts_B, preference) -> np.ndarray:
    """Win-rate matrix W[i, j] = P(policy i ≻ policy j) of the policies in `texts` (in order)."""
    names = list(texts)
    upper_NxN = np.full((len(names), len(names)), 0.5)
    for i, a in enumerate(names):
        for j in range(i + 1, len(names)):
            upper_NxN[i, j], _ = harness.head_to_head(prompts_B, texts[a], texts[names[j]],
                                                      preference)
    return complete_matrix(upper_NxN)


def average_win_rates(win_RxNxN: np.ndarray, members) -> np.ndarray:
    """Per seed, each member's mean win rate against the other members: [R, len(members)]."""
    win_RxNxN = np.asarray(win_RxNxN, np.float64)
    members = list(members)
    if len(members) < 2:
        raise ValueError("average_win_rates: needs at least two members")
    sub_RxMxM = win_RxNxN[:, members][:, :, members]
    off_MxM = ~np.eye(len(members), dtype=bool)
    return (sub_RxMxM * off_MxM).sum(-1) / (len(members) - 1)


# ----------------------------------------------------------------------------- claims

def _ci_includes(values_R, point: float) -> bool:
    mean, half = stats.mean_ci(values_R)
    return bool(abs(mean - point) <= half) if np.isfinite(half) else True


def _ci_above(values_R, point: float) -> bool:
    mean, half = stats.mean_ci(values_R)
    return bool(np.isfinite(half) and mean - half > point)


def evaluate_claims(win_RxNxN, names) -> dict:
    """Pre-registered verdicts (README) from per-seed win matrices over the policies `names`."""
    win_RxNxN = np.asarray(win_RxNxN, np.float64)
    names = list(names)
    idx = {n: i for i, n in enumerate(names)}
    online = [m for m in ONLINE if m in idx]
    verdicts = {}
    # Claim 1: IPO and IPO-MD are the top two online methods, their difference not significant.
    if {"online_ipo", "ipo_md"} <= set(online) and len(online) >= 3:
        avg_RxM = average_win_rates(win_RxNxN, [idx[m] for m in online])
        order = [online[i] for i in np.argsort(-avg_RxM.mean(0), kind="stable")]
        top = set(order[:2])
        diff_R = avg_RxM[:, online.index("online_ipo")] - avg_RxM[:, online.index("ipo_md")]
        equal = _ci_includes(diff_R, 0.0)
        if top == {"online_ipo", "ipo_md"} and equal:
            verdicts["top"] = "reproduced"
        elif top & {"online_ipo", "ipo_md"}:
            verdicts["top"] = "partly"
        else:
            verdicts["top"] = "not reproduced"
    else:
        verdicts["top"] = "n/a"
    # Claim 2: PPO is last; and loses to online IPO with a 95% CI below 1/2.
    if "ppo" in online and len(online) >= 2:
        avg_RxM = average_win_rates(win_RxNxN, [idx[m] for m in online])
        last = online[int(np.argmin(avg_RxM.mean(0)))]
        beaten = ("online_ipo" in idx
                  and _ci_above(win_RxNxN[:, idx["online_ipo"], idx["ppo"]], 0.5))
        if last == "ppo" and beaten:
            verdicts["bottom"] = "reproduced"
        elif last == "ppo" or beaten:
            verdicts["bottom"] = "partly"
        else:
            verdicts["bottom"] = "not reproduced"
    else:
        verdicts["bottom"] = "n/a"
    # Claim 3: online beats its offline counterpart head-to-head, CI above 1/2, for DPO and IPO.
    wins = [_ci_above(win_RxNxN[:, idx[on], idx[off]], 0.5)
            for on, off in (("online_dpo", "dpo"), ("online_ipo", "ipo"))
            if on in idx and off in idx]
    if not wins:
        verdicts["online_vs_offline"] = "n/a"
    else:
        verdicts["online_vs_offline"] = ("reproduced" if all(wins) and len(wins) == 2
                                         else "partly" if any(wins) else "not reproduced")
    return verdicts


# ----------------------------------------------------------------------------- report

def summarise(trained: dict, win_RxNxN: np.ndarray, names: list[str], seeds: int) -> dict:
    """Everything results.json holds: matrices, averages, ranking, per-method evals, verdicts."""
    idx = {n: i for i, n in enumerate(names)}
    online = [m for m in ONLINE if m in idx]
    policies = [n for n in names if n != "sft"]
    avg_online_RxM = (average_win_rates(win_RxNxN, [idx[m] for m in online]) if len(online) > 1
                      else np.full((seeds, len(online)), np.nan))
    avg_all_RxM = average_win_rates(win_RxNxN, [idx[m] for m in policies])
    per_method = {}
    for m in policies:
        evals = [trained["runs"][(m, s)]["eval"] for s in range(seeds)]
        per_method[m] = {
            "kl_R": [e["kl"] for e in evals],
            "win_rate_vs_sft_R": [e["win_rate"] for e in evals],
            "gold_reward_R": [e["sample_gold_reward"] for e in evals],
            "length_R": [e["sample_length"] for e in evals],
            "h2h_vs_sft_R": list(win_RxNxN[:, idx[m], idx["sft"]]),
            "avg_all_R": list(avg_all_RxM[:, policies.index(m)]),
        }
        if m in online:
            per_method[m]["avg_online_R"] = list(avg_online_RxM[:, online.index(m)])
    ranking = [online[i] for i in np.argsort(-avg_online_RxM.mean(0), kind="stable")]
    return {"names": names, "seeds": seeds, "win_RxNxN": win_RxNxN.tolist(),
            "win_mean_NxN": win_RxNxN.mean(0).tolist(), "per_method": per_method,
            "online_ranking": ranking, "settings": {m: SETTINGS[m] for m in policies},
            "sft_eval": trained["sft_eval"], "rm_eval": trained["rm_eval"],
            "verdicts": evaluate_claims(win_RxNxN, names)}


def render(results: dict, mode_name: str, seconds: float) -> str:
    """results.md: the round-robin matrix, the ranking beside the paper's, per-method KL, verdicts."""
    names = results["names"]
    win_RxNxN = np.asarray(results["win_RxNxN"])
    pm = results["per_method"]
    ci = harness.seeds_summary
    lines = [f"# Online IPO round-robin (arXiv 2403.08635, Table 2) — {mode_name} mode, "
             f"{results['seeds']} seed(s), {seconds / 60:.1f} min", ""]
    rm = results["rm_eval"]
    lines += [f"Reward model (shared by the online methods): held-out accuracy "
              f"{rm['accuracy']:.3f} on noisy labels, gold agreement "
              f"{rm['gold_agreement']:.3f}." if rm else
              "No reward model: the online methods were scored by the world's labeler.", ""]
    lines += ["**Round-robin**: P(row ≻ column) under the gold preference, mean ± 95% CI over "
              "seeds (same held-out prompts for every policy).", ""]
    rows = []
    for i, a in enumerate(names):
        rows.append([LABELS[a]] + ["—" if i == j else ci(win_RxNxN[:, i, j])
                                   for j in range(len(names))])
    lines += [harness.markdown_table([""] + [LABELS[n] for n in names], rows), ""]
    online = results["online_ranking"]
    paper_rank = {m: r + 1 for r, m in enumerate(PAPER_ORDER)}
    paper_tier = {"online_ipo": "1 (≈ IPO-MD)", "ipo_md": "1 (≈ IPO)", "online_dpo": "2 (tied)",
                  "online_slic": "2 (tied)", "nash_md": "2 (tied)", "ppo": "3 (last)"}
    lines += ["**Ranking of the online methods** by average win rate against the other online "
              "methods (ours) beside the paper's ordering "
              f"({published.ONLINE_IPO['ordering']}).", ""]
    rows = []
    for r, m in enumerate(online):
        rows.append([r + 1, LABELS[m], ci(pm[m]["avg_online_R"]), ci(pm[m]["avg_all_R"]),
                     ci(pm[m]["h2h_vs_sft_R"]), ci(pm[m]["kl_R"], digits=2),
                     paper_tier.get(m, "") if m in paper_rank else ""])
    lines += [harness.markdown_table(
        ["our rank", "method", "avg win vs online", "avg win vs all 8 others"
         if len(pm) == 9 else "avg win vs all others", "gold win vs SFT", "KL (nats)",
         "paper tier"], rows), ""]
    lines += ["**Every policy**: gold win rate against the SFT policy (round-robin samples and "
              "the run's own evaluation), gold reward, KL to SFT, length.", ""]
    rows = []
    for m in pm:
        rows.append([LABELS[m], ", ".join(f"{k}={v}" for k, v in results["settings"][m].items()),
                     ci(pm[m]["h2h_vs_sft_R"]), ci(pm[m]["win_rate_vs_sft_R"]),
                     ci(pm[m]["gold_reward_R"]), ci(pm[m]["kl_R"], digits=2),
                     ci(pm[m]["length_R"], digits=1)])
    lines += [harness.markdown_table(["method", "setting", "gold win vs SFT (round-robin)",
                                      "gold win vs SFT (eval)", "gold reward", "KL (nats)",
                                      "length"], rows), ""]
    idx = {n: i for i, n in enumerate(names)}
    rows = []
    for (a, b), paper in published.ONLINE_IPO["win_rate"].items():
        if a in idx and b in idx:
            rows.append([f"{LABELS[a]} vs {LABELS[b]}", ci(win_RxNxN[:, idx[a], idx[b]]),
                         f"{paper:.3f}"])
    for on, off in (("online_dpo", "dpo"), ("online_ipo", "ipo"), ("online_slic", "slic_norm")):
        if on in idx and off in idx:
            rows.append([f"online {LABELS[on]} vs {LABELS[off]}",
                         ci(win_RxNxN[:, idx[on], idx[off]]),
                         "> 0.5 (claimed)" if off != "slic_norm" else "—"])
    lines += ["**Pairs the paper reports**: ours beside the paper's (transcribed) figure.", "",
              harness.markdown_table(["pair", "ours", "paper"], rows), ""]
    v = results["verdicts"]
    claims = published.ONLINE_IPO["claims"]
    lines += ["**Pre-registered verdicts** (criteria in README.md):", "",
              harness.markdown_table(["claim", "verdict"],
                                     [[claims[0], v["top"]], [claims[1], v["bottom"]],
                                      [claims[2], v["online_vs_offline"]]]), ""]
    lines += [f"Source: {published.ONLINE_IPO['citation']} ({published.ONLINE_IPO['source']})."]
    return "\n".join(lines)


def draw_plots(results: dict, out: str) -> None:
    names = results["names"]
    labels = [LABELS[n] for n in names]
    mean_NxN = np.asarray(results["win_mean_NxN"])
    pm = results["per_method"]

    def heatmap(ax):
        shown = mean_NxN.copy()
        np.fill_diagonal(shown, np.nan)
        im = ax.imshow(shown, cmap="RdBu", vmin=0.2, vmax=0.8)
        ax.set_xticks(range(len(names)), labels, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(names)), labels, fontsize=7)
        for i in range(len(names)):
            for j in range(len(names)):
                if i != j:
                    ax.text(j, i, f"{mean_NxN[i, j]:.2f}", ha="center", va="center", fontsize=6)
        ax.figure.colorbar(im, ax=ax, label="P(row ≻ column), gold")
        ax.grid(False)

    harness.plot(os.path.join(out, PLOTS[0]), heatmap, title="Round-robin under the gold "
                 "preference (mean over seeds)", figsize=(7.0, 6.0))

    def bars(ax):
        order = results["online_ranking"]
        means, halves = zip(*(stats.mean_ci(pm[m]["avg_online_R"]) for m in order))
        halves = np.nan_to_num(halves)
        ax.bar(range(len(order)), means, yerr=halves, capsize=4, color="tab:blue")
        ax.set_xticks(range(len(order)), [LABELS[m] for m in order], rotation=30, ha="right")
        ax.axhline(0.5, color="k", lw=0.8, ls="--")

    harness.plot(os.path.join(out, PLOTS[1]), bars, title="Average win rate against the other "
                 "online methods (95% CI)", ylabel="average P(method ≻ other)")

    def scatter(ax):
        for m in pm:
            kl, kl_h = stats.mean_ci(pm[m]["kl_R"])
            win, win_h = stats.mean_ci(pm[m]["h2h_vs_sft_R"])
            ax.errorbar(kl, win, xerr=np.nan_to_num(kl_h), yerr=np.nan_to_num(win_h), fmt="o"
                        if m in ONLINE else "s", capsize=3, label=LABELS[m])
        ax.axhline(0.5, color="k", lw=0.8, ls="--")

    harness.plot(os.path.join(out, PLOTS[2]), scatter, title="Gold win rate vs SFT against KL",
                 xlabel="KL(policy ‖ SFT), nats per sequence", ylabel="P(policy ≻ SFT), gold")


def main(argv=None) -> int:
    p = harness.parser(__doc__)
    args = p.parse_args(argv)
    mode_name = harness.mode(p, args)
    mode = MODES[mode_name]
    seeds = args.seeds or mode["seeds"]
    out = harness.output_dir(args.out, NAME)
    start = time.time()
    trained = train_all(out, mode, seeds)
    names = ["sft", *mode["methods"]]
    preference = gold_preference()
    win_RxNxN = np.zeros((seeds, len(names), len(names)))
    for seed in range(seeds):
        harness.log(f"seed {seed}: sampling and round-robin")
        prompts, texts = None, {}
        for n in names:
            workdir = trained["sft"] if n == "sft" else trained["runs"][(n, seed)]["workdir"]
            p, texts[n] = harness.sample_texts(workdir, num_prompts=mode["h2h_prompts"],
                                               samples=mode["h2h_samples"], seed=seed)
            if prompts is not None and list(p) != list(prompts):
                raise RuntimeError(f"{n}: its held-out prompts differ from the others'")
            prompts = p
        win_RxNxN[seed] = round_robin(texts, prompts, preference)
    results = summarise(trained, win_RxNxN, names, seeds)
    seconds = time.time() - start
    results["seconds"] = seconds
    results["mode"] = mode_name
    harness.write_outputs(out, results, render(results, mode_name, seconds))
    draw_plots(results, out)
    if args.publish:
        harness.publish(out, HERE, ("results.md", *PLOTS))
    harness.log(f"done in {seconds / 60:.1f} min: {out}/results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
