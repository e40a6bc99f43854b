"""Reward-model over-optimisation (Gao et al., arXiv 2210.10760; Stiennon et al., arXiv 2009.01325).

    python experiments/overoptimization/run.py --quick      # a few minutes
    python experiments/overoptimization/run.py              # full protocol
    python experiments/overoptimization/run.py --publish    # the same, then results.md, plots here

Outputs go to ~/align-runs/experiments/overoptimization ($ALIGN_RUNS replaces ~/align-runs) or
--out.

One tiny SFT policy on the review world. Proxy reward models (tiny, Bradley–Terry) are trained on
pairs labelled deterministically by the world's gold reward (task.temperature = 0), with several
amounts of pairs. Against each proxy: best-of-n (K samples per held-out prompt, the unbiased
estimator for n = 1, 2, 4, ..., K; KL = log n − (n−1)/n) and PPO with no KL penalty; against the
middle proxy also PPO with a sweep of KL coefficients. Gold and proxy rewards are measured
relative to the initial policy, against d = sqrt(KL(π || π_init)); Gao's functional forms are
fitted with `stats.fit` / `stats.extrapolation_error`.
Dimension letters: R seeds, B prompts, K samples per prompt, N best-of-n values, S logged
training steps, W smoothing windows, M points of a curve.
"""

from __future__ import annotations

import json
import math
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import harness  # noqa: E402

from align.evaluate import best_of_n  # noqa: E402
from align.evaluate import stats  # noqa: E402
from align.objectives.online_math import best_of_n_kl  # noqa: E402
from third_party import published  # noqa: E402

NAME = "overoptimization"
PLOTS = ("bon.png", "ppo_proxies.png", "ppo_kl.png", "fits.png")
# Per mode: SFT/RM/PPO steps, amounts of labelled pairs per proxy, best-of-n samples K and
# prompts B, KL coefficients of the PPO sweep, seeds, smoothing window (PPO steps).
MODES = {
    "full": dict(sft_steps=300, rm_steps=150, pairs=(128, 512, 2048), bon_samples=128,
                 bon_prompts=32, ppo_steps=120, kl_coefs=(0.0, 0.03, 0.1), seeds=3, window=10,
                 sft_data=4096, eval_samples=64),
    "quick": dict(sft_steps=150, rm_steps=80, pairs=(128, 2048), bon_samples=32, bon_prompts=16,
                  ppo_steps=40, kl_coefs=(0.0, 0.1), seeds=1, window=5, sft_data=4096, eval_samples=64),
    "tiny": dict(sft_steps=10, rm_steps=10, pairs=(64,), bon_samples=4, bon_prompts=4,
                 ppo_steps=6, kl_coefs=(0.0,), seeds=1, window=2, sft_data=2048, eval_samples=0),
}
PPO_LR = 1.5e-4
# Pre-registered thresholds (README): gold units, the gold reward lies in [-1, 1].
MIN_R2 = 0.9
MAX_EXTRAPOLATION_RMSE = 0.1
FRONTIER_TOLERANCE = 0.1
# Prompts of up to 24 tokens (16 truncates about half) plus 48 sampled tokens. Data and model
# share one length, so the proxies train on sequences as long as the rollouts they score.
PROMPT_LEN = 24
NEW_TOKENS = 48


# ----------------------------------------------------------------------------- runs

def common_overrides(out: str, tiny: bool) -> list[str]:
    base = [f"--config.data.data_dir={os.path.join(out, 'data')}",
            *harness.lengths(PROMPT_LEN, NEW_TOKENS)]
    return (list(harness.TINY_DATA) if tiny else []) + base


def train_sft(out: str, mode: dict, tiny: bool) -> str:
    workdir = os.path.join(out, "sft")
    harness.train(f"configs/sft.py:size=tiny,steps={mode['sft_steps']}", workdir,
                  [*common_overrides(out, tiny), f"--config.data.num_train={mode['sft_data']}",
                   "--config.eval.num_batches=1", f"--config.eval.num_samples={mode['eval_samples']}"])
    return workdir


def train_proxy(out: str, sft: str, pairs: int, seed: int, mode: dict, tiny: bool):
    """A tiny reward model on `pairs` pairs labelled by the gold reward without noise."""
    workdir = os.path.join(out, f"rm_p{pairs}_s{seed}")
    steps = mode["rm_steps"]
    result = harness.train(f"configs/reward_model.py:size=tiny,steps={steps}", workdir,
                  [*common_overrides(out, tiny), f"--config.data.num_train={pairs}",
                   "--config.task.temperature=0", f"--config.seed={seed}",
                   f"--config.init.workdir={sft}", "--config.init.config=",
                   "--config.eval.num_batches=2", f"--config.train.eval_every={steps}",
                   f"--config.train.checkpoint_every={steps}"])
    return workdir, result["eval"]


def train_ppo(out: str, sft: str, rm: str, pairs: int, kl_coef: float, seed: int, mode: dict,
              tiny: bool) -> str:
    """PPO against a proxy with a fixed KL coefficient, logging every step."""
    workdir = os.path.join(out, f"ppo_p{pairs}_kl{kl_coef:g}_s{seed}")
    steps = mode["ppo_steps"]
    harness.train(f"configs/online.py:objective=ppo,size=tiny,steps={steps}", workdir,
                  [*common_overrides(out, tiny), f"--config.seed={seed}",
                   f"--config.init.workdir={sft}", "--config.init.config=",
                   "--config.online.scorer=reward_model", f"--config.online.scorer_workdir={rm}",
                   f"--config.objective.kl_coef={kl_coef}", "--config.objective.kl_target=0",
                   f"--config.optim.lr={PPO_LR}", "--config.train.log_every=1",
                   f"--config.train.eval_every={steps}", f"--config.train.checkpoint_every={steps}",
                   f"--config.eval.num_samples={mode['eval_samples']}", "--config.eval.num_batches=1"])
    return workdir


def bon_scores(out: str, sft: str, rm: str, pairs: int, seed: int, mode: dict):
    """(proxy_BxK, gold_BxK) of the SFT policy's samples under a proxy, cached as .npz."""
    path = os.path.join(out, f"bon_p{pairs}_s{seed}.npz")
    if not os.path.exists(path):
        proxy_BxK, gold_BxK, _, _ = best_of_n.sample_and_score(
            sft, samples=mode["bon_samples"], num_prompts=mode["bon_prompts"],
            scorer="reward_model", scorer_workdir=rm, seed=seed)
        np.savez(path + ".tmp.npz", proxy=proxy_BxK, gold=gold_BxK)
        os.replace(path + ".tmp.npz", path)
    arrays = np.load(path)
    return arrays["proxy"], arrays["gold"]


# ----------------------------------------------------------------------------- curves

def bon_curve(proxy_BxK, gold_BxK) -> dict:
    """Best-of-n for n = 1, 2, 4, ..., K: d, and gold / proxy relative to n = 1."""
    k = proxy_BxK.shape[1]
    ns = [2 ** i for i in range(int(math.log2(k)) + 1)]
    gold_N = np.array([best_of_n.best_of_n_values(proxy_BxK, gold_BxK, n).mean() for n in ns])
    proxy_N = np.array([best_of_n.best_of_n_values(proxy_BxK, proxy_BxK, n).mean() for n in ns])
    return {"n": ns, "d": [math.sqrt(best_of_n_kl(n)) for n in ns],
            "gold": list(gold_N - gold_N[0]), "proxy": list(proxy_N - proxy_N[0])}


def window_means(values_S, window: int) -> np.ndarray:
    """Means over consecutive non-overlapping windows (the last one may be shorter), [W]."""
    values_S = np.asarray(values_S, np.float64)
    if values_S.size == 0:
        raise ValueError("window_means: no values")
    if window < 1:
        raise ValueError(f"window_means: window must be >= 1, got {window}")
    return np.array([c.mean() for c in np.array_split(values_S, math.ceil(values_S.size / window))])


def rl_curve(workdir: str, window: int, gold0: float, proxy0: float) -> dict:
    """Windowed training curve of an online run: d = sqrt(mean rollout KL), gold and proxy
    relative to the initial policy's (gold0, proxy0)."""
    series = {}
    for key in ("train/rollout_kl", "train/gold_reward", "train/reward"):
        rows = harness.metrics(workdir, key)
        if not rows:
            raise ValueError(f"{workdir}/metrics.jsonl has no {key!r} records")
        series[key] = [v for _, v in rows]
    # A window's KL is averaged before the square root: d of the windowed policy mixture.
    kl_W = np.maximum(window_means(series["train/rollout_kl"], window), 0.0)
    return {"d": list(np.sqrt(kl_W)),
            "gold": list(window_means(series["train/gold_reward"], window) - gold0),
            "proxy": list(window_means(series["train/reward"], window) - proxy0)}


def mean_curve(curves_R: list[dict]) -> dict:
    """Pointwise mean over seeds of curves sampled at the same n or the same windows."""
    size = min(len(c["d"]) for c in curves_R)
    return {key: list(np.mean([c[key][:size] for c in curves_R], axis=0))
            for key in ("d", "gold", "proxy")}


# ----------------------------------------------------------------------------- criteria

def lower(values_R) -> float:
    """Lower end of the 95% interval over seeds (the mean itself with one seed)."""
    mean, half = stats.mean_ci(values_R)
    return mean if math.isnan(half) else mean - half


def upper(values_R) -> float:
    mean, half = stats.mean_ci(values_R)
    return mean if math.isnan(half) else mean + half


def hump(curves_R: list[dict]) -> dict:
    """Claim 1 on one setting: the seed-mean gold curve peaks after its first point and before
    its last, gold falls after that peak and the proxy keeps rising (95% intervals over seeds)."""
    mean = mean_curve(curves_R)
    peak = int(np.argmax(mean["gold"]))
    last = len(mean["d"]) - 1
    drop_R = [c["gold"][peak] - c["gold"][last] for c in curves_R]
    rise_R = [c["proxy"][last] - c["proxy"][peak] for c in curves_R]
    holds = 0 < peak < last and lower(drop_R) > 0 and lower(rise_R) > 0
    return {"peak_index": peak, "peak_d": mean["d"][peak], "peak_gold": mean["gold"][peak],
            "end_d": mean["d"][last], "drop": list(drop_R), "proxy_rise": list(rise_R),
            "censored": peak == last, "holds": bool(holds)}


def peak_d(curve: dict) -> float:
    """d at the highest gold of one seed's curve."""
    return float(curve["d"][int(np.argmax(curve["gold"]))])


def later_with_more_data(curves_by_pairs: dict) -> dict:
    """Claim 2: the argmax d of gold grows with the proxy's data (seed-paired, largest vs smallest)."""
    amounts = sorted(curves_by_pairs)
    peaks = {p: [peak_d(c) for c in curves_by_pairs[p]] for p in amounts}
    means = [float(np.mean(peaks[p])) for p in amounts]
    if len(amounts) < 2:
        return {"peaks": peaks, "difference": [], "holds": False}
    diff_R = [b - a for a, b in zip(peaks[amounts[0]], peaks[amounts[-1]])]
    holds = bool(np.all(np.diff(means) > 0) and lower(diff_R) > 0)
    return {"peaks": peaks, "difference": diff_R, "holds": holds}


def frontier_gap(penalised: dict, unpenalised: dict) -> float:
    """Mean over the penalised run's windows of its gold minus the unpenalised run's gold at
    the same d (linear interpolation, inside the unpenalised run's range of d)."""
    d0 = np.asarray(unpenalised["d"])
    order = np.argsort(d0, kind="stable")
    d0, g0 = d0[order], np.asarray(unpenalised["gold"])[order]
    d, g = np.asarray(penalised["d"]), np.asarray(penalised["gold"])
    inside = (d >= d0[0]) & (d <= d0[-1])
    if not np.any(inside):
        return math.nan
    return float(np.mean(g[inside] - np.interp(d[inside], d0, g0)))


def fit_curve(form: str, curve: dict) -> dict:
    """Gao's form fitted to a seed-mean curve: α, β, R², and the extrapolation RMSE."""
    d, gold = np.asarray(curve["d"]), np.asarray(curve["gold"])
    f = stats.fit(form, d, gold)
    head, err = stats.extrapolation_error(form, d, gold)
    return {"form": form, "alpha": f.alpha, "beta": f.beta, "r2": f.r2, "rmse": f.rmse,
            "extrapolation_rmse": err, "head_alpha": head.alpha, "head_beta": head.beta}


# ----------------------------------------------------------------------------- protocol

def run_all(out: str, mode: dict, seeds: int, tiny: bool) -> dict:
    sft = train_sft(out, mode, tiny)
    sweep_pairs = mode["pairs"][len(mode["pairs"]) // 2]
    bon, rms, base, rm_eval = {}, {}, {}, {}
    for seed in range(seeds):
        for pairs in mode["pairs"]:
            harness.log(f"proxy: {pairs} pairs, seed {seed}")
            rm, rm_eval[(pairs, seed)] = train_proxy(out, sft, pairs, seed, mode, tiny)
            rms[(pairs, seed)] = rm
            proxy_BxK, gold_BxK = bon_scores(out, sft, rm, pairs, seed, mode)
            bon[(pairs, seed)] = bon_curve(proxy_BxK, gold_BxK)
            # The initial policy's mean gold / proxy: R(0) = 0 for the RL curves too.
            base[(pairs, seed)] = (float(gold_BxK.mean()), float(proxy_BxK.mean()))
    rl = {}
    jobs = [(p, 0.0) for p in mode["pairs"]] + [(sweep_pairs, c) for c in mode["kl_coefs"] if c]
    for pairs, coef in jobs:
        for seed in range(seeds):
            harness.log(f"ppo: proxy {pairs} pairs, kl_coef {coef:g}, seed {seed}")
            wd = train_ppo(out, sft, rms[(pairs, seed)], pairs, coef, seed, mode, tiny)
            rl[(pairs, coef, seed)] = rl_curve(wd, mode["window"], *base[(pairs, seed)])
    return {"bon": bon, "rl": rl, "rm_eval": rm_eval, "sweep_pairs": sweep_pairs}


def analyse(raw: dict, mode: dict, seeds: int) -> dict:
    pairs_list, coefs, sweep = mode["pairs"], mode["kl_coefs"], raw["sweep_pairs"]
    seed_ids = range(seeds)
    bon = {p: [raw["bon"][(p, s)] for s in seed_ids] for p in pairs_list}
    rl = {(p, c): [raw["rl"][(p, c, s)] for s in seed_ids]
          for p, c, s in raw["rl"] if s == 0}
    res = {"proxies": {}, "ppo": {}, "claims": {}}
    for p in pairs_list:
        acc = [raw["rm_eval"][(p, s)]["gold_agreement"] for s in seed_ids]
        res["proxies"][str(p)] = {
            "gold_agreement": acc, "bon_curve": mean_curve(bon[p]), "bon_curves": bon[p],
            "bon_hump": hump(bon[p]), "bon_fit": fit_curve("bon", mean_curve(bon[p])),
        }
    for (p, c), curves in sorted(rl.items()):
        res["ppo"][f"p{p}_kl{c:g}"] = {
            "pairs": p, "kl_coef": c, "curve": mean_curve(curves), "curves": curves,
            "hump": hump(curves), "fit": fit_curve("rl", mean_curve(curves)),
        }
    kl0 = {p: rl[(p, 0.0)] for p in pairs_list}
    c1 = [res["ppo"][f"p{p}_kl0"]["hump"]["holds"] for p in pairs_list]
    c1_bon = [res["proxies"][str(p)]["bon_hump"]["holds"] for p in pairs_list]
    res["claims"]["hump"] = {"ppo": c1, "bon": c1_bon,
                             "verdict": ("reproduced" if all(c1) and any(c1_bon) else
                                         "partly" if any(c1) or any(c1_bon) else "not reproduced")}
    later = later_with_more_data(kl0)
    later_bon = {p: [peak_d(c) for c in bon[p]] for p in pairs_list}
    res["claims"]["later"] = {**later, "bon_peaks": later_bon,
                              "verdict": "reproduced" if later["holds"] else "not reproduced"}
    gaps = {}
    for c in coefs:
        if c:
            gaps[f"{c:g}"] = [frontier_gap(pen, free) for pen, free in
                              zip(rl[(sweep, c)], rl[(sweep, 0.0)])]
    not_above = [upper(g) < FRONTIER_TOLERANCE for g in gaps.values() if np.all(np.isfinite(g))]
    on_it = [lower(g) > -FRONTIER_TOLERANCE for g in gaps.values() if np.all(np.isfinite(g))]
    c3 = ("reproduced" if not_above and all(not_above) and all(on_it) else
          "partly" if not_above and all(not_above) else "not reproduced")
    res["claims"]["frontier"] = {"gaps": gaps, "verdict": c3}
    fits = ([res["proxies"][str(p)]["bon_fit"] for p in pairs_list]
            + [v["fit"] for v in res["ppo"].values()])
    r2_ok = [f["r2"] >= MIN_R2 for f in fits]
    extra = float(np.median([f["extrapolation_rmse"] for f in fits]))
    c4 = ("reproduced" if all(r2_ok) and extra <= MAX_EXTRAPOLATION_RMSE else
          "partly" if np.mean(r2_ok) >= 0.5 else "not reproduced")
    res["claims"]["forms"] = {"r2_ok": r2_ok, "median_extrapolation_rmse": extra, "verdict": c4}
    return res


# ----------------------------------------------------------------------------- outputs

def ci(values) -> str:
    return harness.seeds_summary(values, digits=2)


def markdown(res: dict, mode: dict, seeds: int) -> str:
    claims = published.OVEROPTIMIZATION["claims"]
    pub = published.OVEROPTIMIZATION
    lines = [f"# Over-optimisation on the review world ({seeds} seed(s); 95% intervals over seeds)",
             "", f"Source: {pub['citation']}.", ""]
    rows = []
    for p, v in res["proxies"].items():
        h = v["bon_hump"]
        f = v["bon_fit"]
        rows.append([p, ci(v["gold_agreement"]), f"{h['peak_d']:.2f}" + (" (end)" if h["censored"] else ""),
                     f"{h['peak_gold']:+.3f}", ci(h["drop"]), ci(h["proxy_rise"]),
                     f"{f['alpha']:.3f}", f"{f['beta']:.3f}", f"{f['r2']:.3f}",
                     f"{f['extrapolation_rmse']:.3f}"])
    lines += ["## Best-of-n against each proxy (gold relative to n = 1)", "",
              harness.markdown_table(
                  ["pairs", "proxy gold agreement", "peak d", "peak gold", "gold drop after peak",
                   "proxy rise after peak", "α_bon", "β_bon", "R²", "extrapolation RMSE"], rows), ""]
    rows = []
    for v in res["ppo"].values():
        h, f = v["hump"], v["fit"]
        rows.append([v["pairs"], f"{v['kl_coef']:g}", f"{h['end_d']:.2f}",
                     f"{h['peak_d']:.2f}" + (" (end)" if h["censored"] else ""),
                     f"{h['peak_gold']:+.3f}", ci(h["drop"]), ci(h["proxy_rise"]),
                     f"{f['alpha']:.3f}", f"{f['beta']:.3f}", f"{f['r2']:.3f}",
                     f"{f['extrapolation_rmse']:.3f}"])
    lines += [f"## PPO against a proxy ({mode['ppo_steps']} steps, windows of {mode['window']} "
              "steps, gold relative to the initial policy)", "",
              harness.markdown_table(
                  ["pairs", "kl_coef", "final d", "peak d", "peak gold", "gold drop after peak",
                   "proxy rise after peak", "α_RL", "β_RL", "R²", "extrapolation RMSE"], rows), ""]
    c = res["claims"]
    later = c["later"]
    peaks = "; ".join(f"{p} pairs: {ci(v)}" for p, v in later["peaks"].items())
    bon_peaks = "; ".join(f"{p} pairs: {ci(v)}" for p, v in later["bon_peaks"].items())
    gaps = "; ".join(f"kl_coef {k}: {ci(v)}" for k, v in c["frontier"]["gaps"].items()) or "none"
    stiennon = pub["stiennon"]
    rows = [
        [claims[0], "yes (both methods)",
         f"PPO: {sum(c['hump']['ppo'])}/{len(c['hump']['ppo'])} proxies; best-of-n: "
         f"{sum(c['hump']['bon'])}/{len(c['hump']['bon'])}", c["hump"]["verdict"]],
        [claims[1], "yes (argmax d grows with RM size / data)",
         f"PPO argmax d: {peaks}; largest − smallest: "
         f"{ci(later['difference']) if later['difference'] else 'n/a'} (best-of-n: {bon_peaks})",
         c["later"]["verdict"]],
        [claims[2], f"yes (Stiennon: kl_coef {stiennon['kl_coef']}, final KL "
                    f"{stiennon['final_kl_nats']} nats)",
         f"gold gap to the kl_coef = 0 curve at equal d: {gaps}", c["frontier"]["verdict"]],
        [claims[3], "yes (Gao: R² high, forms extrapolate)",
         f"R² ≥ {MIN_R2} on {sum(c['forms']['r2_ok'])}/{len(c['forms']['r2_ok'])} curves; median "
         f"extrapolation RMSE {c['forms']['median_extrapolation_rmse']:.3f}", c["forms"]["verdict"]],
    ]
    lines += ["## Claims", "", harness.markdown_table(["claim", "published", "ours", "verdict"], rows)]
    return "\n".join(lines)


def plots(res: dict, out: str) -> None:
    def proxy_axis(ax, curves, label_fn):
        twin = ax.twinx()
        for i, (key, curve) in enumerate(curves):
            color = f"C{i}"
            ax.plot(curve["d"], curve["gold"], "o-", color=color, label=f"gold, {label_fn(key)}")
            twin.plot(curve["d"], curve["proxy"], "--", color=color, alpha=0.6)
        twin.set_ylabel("proxy reward (dashed)")
        ax.axhline(0, color="gray", lw=0.5)

    bon = [(p, v["bon_curve"]) for p, v in res["proxies"].items()]
    harness.plot(os.path.join(out, "bon.png"),
                 lambda ax: proxy_axis(ax, bon, lambda p: f"{p} pairs"),
                 title="Best-of-n against proxies", xlabel="d = sqrt(KL) (nats^½)",
                 ylabel="gold reward (solid)")
    kl0 = [(v["pairs"], v["curve"]) for v in res["ppo"].values() if v["kl_coef"] == 0]
    harness.plot(os.path.join(out, "ppo_proxies.png"),
                 lambda ax: proxy_axis(ax, kl0, lambda p: f"{p} pairs"),
                 title="PPO, no KL penalty", xlabel="d = sqrt(KL) (nats^½)",
                 ylabel="gold reward (solid)")
    sweep = [(v["kl_coef"], v["curve"]) for v in res["ppo"].values()
             if v["pairs"] == res["ppo_sweep_pairs"]]
    harness.plot(os.path.join(out, "ppo_kl.png"),
                 lambda ax: proxy_axis(ax, sweep, lambda c: f"kl_coef {c:g}"),
                 title=f"PPO against the {res['ppo_sweep_pairs']}-pair proxy",
                 xlabel="d = sqrt(KL) (nats^½)", ylabel="gold reward (solid)")

    def draw_fits(ax):
        for i, (p, v) in enumerate(res["proxies"].items()):
            f, curve = v["bon_fit"], v["bon_curve"]
            grid = np.linspace(0, max(curve["d"]), 50)
            ax.plot(curve["d"], curve["gold"], "o", color=f"C{i}", label=f"best-of-n, {p} pairs")
            ax.plot(grid, stats.predict("bon", grid, f["alpha"], f["beta"]), "-", color=f"C{i}")
        for j, v in enumerate(x for x in res["ppo"].values() if x["kl_coef"] == 0):
            f, curve = v["fit"], v["curve"]
            grid = np.linspace(1e-3, max(curve["d"]), 50)
            color = f"C{j + len(res['proxies'])}"
            ax.plot(curve["d"], curve["gold"], "s", color=color, label=f"PPO, {v['pairs']} pairs")
            ax.plot(grid, stats.predict("rl", grid, f["alpha"], f["beta"]), "--", color=color)
        ax.axhline(0, color="gray", lw=0.5)

    harness.plot(os.path.join(out, "fits.png"), draw_fits,
                 title="Gao's forms: d(α−βd) (best-of-n), d(α−β log d) (PPO)",
                 xlabel="d = sqrt(KL) (nats^½)", ylabel="gold reward (relative)", figsize=(7, 4.5))


def main(argv=None) -> int:
    p = harness.parser(__doc__)
    args = p.parse_args(argv)
    name = harness.mode(p, args)
    mode = MODES[name]
    seeds = args.seeds or mode["seeds"]
    if seeds < 1:
        raise SystemExit(f"--seeds must be >= 1, got {seeds}")
    out = harness.output_dir(args.out, NAME)
    os.makedirs(out, exist_ok=True)
    raw = run_all(out, mode, seeds, args.tiny)
    res = analyse(raw, mode, seeds)
    res.update(mode=name, seeds=seeds, settings=mode, ppo_sweep_pairs=raw["sweep_pairs"],
               ppo_lr=PPO_LR)
    text = markdown(res, mode, seeds)
    harness.write_outputs(out, res, text)
    plots(res, out)
    print(text)
    if args.publish:
        harness.publish(out, HERE, ("results.md", *PLOTS))
    harness.log(f"wrote results.md, results.json and {', '.join(PLOTS)} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
