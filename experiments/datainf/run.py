"""DataInf (Kwon et al., arXiv 2310.00902) checked against exact influence and leave-one-out
retraining, and pruning by influence for a trust metric (Li et al., arXiv 2404.18870), on a
Bradley–Terry reward model whose preference data partly reward toxicity.

    python experiments/datainf/run.py --quick    # 16 seeds, 200 pairs (README.md)
    python experiments/datainf/run.py            # full protocol: 64 seeds, 400 pairs
    python experiments/datainf/run.py --publish  # the same, then results.md and datainf.png here

Outputs go to ~/align-runs/experiments/datainf (datainf_quick for --quick; $ALIGN_RUNS replaces
~/align-runs) or --out.

World (seed r draws a new one). Texts have features φ = (helpfulness, toxicity, 6 nuisance
dimensions), each N(0, 1). A training pair of texts (a, b) is labelled a ≻ b with probability
σ(β_h Δhelpfulness) (Bradley–Terry in helpfulness), except on a contaminated share of the
pairs, whose raters also reward toxicity: σ(β_h Δhelpfulness + β_t Δtoxicity). The reward
model r(x) = wᵀφ(x) minimises the mean of ℓ_i = −log σ(wᵀd_i) + (μ/2)‖w‖², d_i = φ(chosen) −
φ(rejected) (align/analysis/datainf.py, Newton to |gradient| ≤ 1e-10).

Trust metric (the target): the mean Bradley–Terry NLL of the model on held-out minimal pairs
judged by the trust vertical, the same answer without and with a toxic phrase: d = (0, −|δ|,
0.3·noise), δ ~ N(0, 1); lower is more trustworthy. Helpfulness: the preference accuracy on
held-out pairs of independent texts whose chosen text is the more helpful.

Per seed: the influence I(k) of each training pair on the trust metric by DataInf and exactly
(float64), and the actual change of the trust metric when pair k is removed and the model refit
(leave-one-out, LOO). By the sign convention (align/analysis/datainf.py), removing pair k
changes the target by ≈ −I(k)/N, so the rank agreement is Spearman ρ(−I, ΔLOO). Pruning: remove
the 5% of pairs with the largest DataInf I (those whose removal lowers the trust loss most) and
refit; against removing a random 5% (the same count) and refitting.

Dimension letters: R seeds, N training pairs, M held-out pairs, D features.
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import harness  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from scipy import stats as sp_stats  # noqa: E402

from align.analysis import datainf  # noqa: E402
from align.evaluate import stats  # noqa: E402
from third_party import published  # noqa: E402

NAME = "datainf"
PLOT = "datainf.png"

# Protocol (README.md): fixed before the full run.
KEYS = {"world": 11, "prune": 12}
HELP, TOX = 0, 1
NUISANCE = 6
DIM = 2 + NUISANCE
BETA_H = 3.0  # helpfulness weight of every rater
BETA_T = 3.0  # toxicity weight of the contaminated raters
CONTAMINATED = 0.15  # share of training pairs whose raters reward toxicity
TARGET_NOISE = 0.3  # sd of the nuisance features' differences in the minimal trust pairs
MU = 0.05  # L2 strength
LAMBDA_SCALE = 0.1  # DataInf's λ_l = 0.1 · mean squared gradient
PRUNE = 0.05  # share of training pairs removed
ARMS = ("datainf", "exact", "random")
# Verdicts.
ALPHA = 0.05
RHO_MIN = 0.3  # pre-registered: the lower bound of the mean Spearman ρ vs LOO must exceed it
RHO_PAPER = 0.9  # stand-in for "approximates the influence well" (no number vs LOO published)
TRUST_SMALLEST, TRUST_PAPER = 0.0, 0.01  # nats; stand-ins (the papers give no pruning number)
BLOCK_SMALLEST, BLOCK_PAPER = 0.0, 0.1  # ρ(D = 8) − ρ(D = 128); stand-ins (no number published)
ACC_MARGIN = 0.01  # TOST margin on the helpfulness accuracy change: 1 point
RESAMPLES = 9999

MODES = {
    # sweep: nuisance dimensions of the block-size sweep (one block of D = 2 + nuisance).
    "full": dict(seeds=64, pairs=400, target=200, heldout=4000, sweep=(6, 30, 126)),
    "quick": dict(seeds=16, pairs=200, target=200, heldout=4000, sweep=(6, 30, 126)),
    "tiny": dict(seeds=16, pairs=40, target=40, heldout=400, sweep=(6, 14)),
}


# ----------------------------------------------------------------------------- world

def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def make_problem(mode: dict, seed: int, nuisance: int = NUISANCE) -> dict:
    """One seed's world: training pair differences d_NxD (chosen − rejected) with their
    contamination flags, the trust pairs and the helpfulness pairs (chosen first);
    `nuisance` feature dimensions besides helpfulness and toxicity."""
    rng = np.random.default_rng([KEYS["world"], seed, nuisance])
    n, dim = mode["pairs"], 2 + nuisance
    d_ab = rng.normal(size=(n, dim)) - rng.normal(size=(n, dim))
    contaminated_N = np.zeros(n, bool)
    contaminated_N[rng.choice(n, int(round(CONTAMINATED * n)), replace=False)] = True
    logit_N = BETA_H * d_ab[:, HELP] + np.where(contaminated_N, BETA_T * d_ab[:, TOX], 0.0)
    a_wins = rng.random(n) < _sigmoid(logit_N)
    train = np.where(a_wins[:, None], d_ab, -d_ab)
    trust = TARGET_NOISE * rng.normal(size=(mode["target"], dim))
    trust[:, HELP] = 0.0
    trust[:, TOX] = -np.abs(rng.normal(size=mode["target"]))
    help_ab = rng.normal(size=(mode["heldout"], dim)) - rng.normal(size=(mode["heldout"], dim))
    helpful = np.where((help_ab[:, HELP] > 0)[:, None], help_ab, -help_ab)
    return {"train": train, "contaminated": contaminated_N, "trust": trust, "helpful": helpful}


def influences(problem: dict, w_D) -> dict:
    """DataInf's and the exact I(k) on the trust metric (float64)."""
    loss = datainf.bradley_terry_loss_fn(MU)
    with jax.enable_x64(True):
        params = {"w": jnp.asarray(w_D, jnp.float64)}
        args = (loss, params, {"d": problem["train"]}, {"d": problem["trust"]})
        return {"datainf": datainf.influence(*args, target_loss_fn=datainf.pair_nll,
                                             lambda_scale=LAMBDA_SCALE),
                "exact": datainf.exact_influence(*args, target_loss_fn=datainf.pair_nll)}


def refit_without(problem: dict, drop, w_D) -> dict:
    """Trust loss and helpfulness accuracy of the model refit without the pairs `drop`."""
    keep = np.ones(problem["train"].shape[0], bool)
    keep[np.asarray(drop)] = False
    w = datainf.fit_bradley_terry(problem["train"][keep], MU, w0_D=w_D)
    return {"trust": datainf.pair_nll_mean(w, problem["trust"]),
            "accuracy": datainf.pair_accuracy(w, problem["helpful"])}


def prune_count(n: int) -> int:
    return max(1, int(round(PRUNE * n)))


def top_pairs(influence_N, count: int) -> np.ndarray:
    """The `count` pairs with the largest influence (removing them lowers the target most)."""
    return np.argsort(-np.asarray(influence_N), kind="stable")[:count]


def spearman(a, b) -> float:
    return float(sp_stats.spearmanr(a, b).statistic)


def seed_result(mode: dict, seed: int) -> dict:
    """Rank agreements with LOO and the pruning arms of one seed."""
    problem = make_problem(mode, seed)
    d = problem["train"]
    n = d.shape[0]
    w = datainf.fit_bradley_terry(d, MU)
    base = {"trust": datainf.pair_nll_mean(w, problem["trust"]),
            "accuracy": datainf.pair_accuracy(w, problem["helpful"])}
    loo_NxD = datainf.leave_one_out(d, MU, w)
    loo_N = np.array([datainf.pair_nll_mean(x, problem["trust"]) for x in loo_NxD]) - base["trust"]
    inf = influences(problem, w)
    k = prune_count(n)
    drops = {"datainf": top_pairs(inf["datainf"], k), "exact": top_pairs(inf["exact"], k),
             "random": np.random.default_rng([KEYS["prune"], seed]).choice(n, k, replace=False)}
    arms = {}
    for arm, drop in drops.items():
        after = refit_without(problem, drop, w)
        arms[arm] = {"trust_change": after["trust"] - base["trust"],
                     "accuracy_change": after["accuracy"] - base["accuracy"],
                     "contaminated_share": float(problem["contaminated"][drop].mean())}
    pred = {key: datainf.predicted_removal_change(v) for key, v in inf.items()}
    return {"sweep": block_sweep(mode, seed, inf),"rho_datainf": spearman(pred["datainf"], loo_N),
            "rho_exact": spearman(pred["exact"], loo_N),
            "rho_datainf_exact": spearman(inf["datainf"], inf["exact"]),
            "relative_error_exact": float(np.max(np.abs(pred["exact"] - loo_N))
                                          / np.max(np.abs(loo_N))),
            "trust": base["trust"], "accuracy": base["accuracy"], "w_toxicity": float(w[TOX]),
            "arms": arms,
            "scatter": {"loo": loo_N.tolist(), "exact": pred["exact"].tolist(),
                        "datainf": pred["datainf"].tolist(),
                        "contaminated": problem["contaminated"].tolist()} if seed == 0 else None}


def block_sweep(mode: dict, seed: int, main_influence: dict) -> dict:
    """Spearman ρ(DataInf, exact) with one block of D = 2 + nuisance parameters, per entry of
    the mode's sweep (the main world's influences reused for its own size)."""
    out = {}
    for nuisance in mode["sweep"]:
        if nuisance == NUISANCE:
            inf = main_influence
        else:
            problem = make_problem(mode, seed, nuisance)
            inf = influences(problem, datainf.fit_bradley_terry(problem["train"], MU))
        out[str(2 + nuisance)] = spearman(inf["datainf"], inf["exact"])
    return out


def run_all(mode: dict, out: str) -> dict:
    """Every seed's result, cached in out/runs/seeds.json under the protocol's spec."""
    # JSON has no tuples: the spec holds lists, so that a stored spec compares equal.
    spec = {"mode": {k: list(v) if isinstance(v, tuple) else v for k, v in mode.items()},
            "keys": KEYS, "beta": [BETA_H, BETA_T], "contaminated": CONTAMINATED,
            "target_noise": TARGET_NOISE, "mu": MU, "lambda_scale": LAMBDA_SCALE, "prune": PRUNE}

    def compute():
        seeds = []
        for r in range(mode["seeds"]):
            seeds.append(seed_result(mode, r))
            if r % 8 == 7:
                harness.log(f"seed {r + 1}/{mode['seeds']}")
        return {"seeds": seeds}

    return harness.cached(os.path.join(out, "runs", "seeds.json"), spec, compute)


# ----------------------------------------------------------------------------- verdicts

def rank_claim(rho_R, *, rng=0) -> stats.Judgement:
    """Mean Spearman ρ over seeds above RHO_MIN: BCa on ρ − RHO_MIN (reproduced iff the lower
    bound of the mean ρ exceeds RHO_MIN; contradicted iff its upper bound is below it)."""
    x = np.asarray(rho_R, np.float64) - RHO_MIN
    return stats.directional(x, paper_effect=RHO_PAPER - RHO_MIN, smallest_effect=0.0,
                             alpha=ALPHA, method="bca", resamples=RESAMPLES, rng=rng)


def trust_claim(top_change_R, random_change_R) -> stats.Judgement:
    """Pruning by influence lowers the trust loss more than random pruning: paired t on
    random − top (> 0 in the claim's direction)."""
    return stats.directional(random_change_R, top_change_R, paper_effect=TRUST_PAPER,
                             smallest_effect=TRUST_SMALLEST, alpha=ALPHA)


def accuracy_claim(accuracy_change_R) -> stats.Judgement:
    """The helpfulness accuracy moves by less than ACC_MARGIN: TOST on the per-seed change."""
    return stats.equivalent(accuracy_change_R, margin=ACC_MARGIN, alpha=ALPHA)


def block_claim(rho_small_R, rho_large_R) -> stats.Judgement:
    """DataInf tracks the exact influence better with a smaller block: paired t on
    ρ(DataInf, exact) at the smallest D minus at the largest."""
    return stats.directional(rho_small_R, rho_large_R, paper_effect=BLOCK_PAPER,
                             smallest_effect=BLOCK_SMALLEST, alpha=ALPHA)


def sweep_column(res: dict, dim: int) -> np.ndarray:
    return np.array([s["sweep"][str(dim)] for s in res["seeds"]], np.float64)


def _judgement(j: stats.Judgement, shift: float = 0.0) -> dict:
    return {"verdict": j.verdict, "estimate": j.estimate + shift, "low": j.low + shift,
            "high": j.high + shift, "p_reproduce": j.p_reproduce,
            "p_contradict": j.p_contradict, "n": j.n, "method": j.method}


def column(res: dict, key: str, arm: str | None = None) -> np.ndarray:
    if arm is None:
        return np.array([s[key] for s in res["seeds"]], np.float64)
    return np.array([s["arms"][arm][key] for s in res["seeds"]], np.float64)


def sweep_dims(res: dict) -> list:
    """The block sizes D of the sweep, ascending."""
    return sorted(int(k) for k in res["seeds"][0]["sweep"])


def claims(res: dict) -> dict:
    rho = {m: rank_claim(column(res, f"rho_{m}")) for m in ("datainf", "exact")}
    trust = trust_claim(column(res, "trust_change", "datainf"),
                        column(res, "trust_change", "random"))
    acc = accuracy_claim(column(res, "accuracy_change", "datainf"))
    conj = stats.conjunction([trust, acc], alpha=ALPHA)
    diff = column(res, "trust_change", "random") - column(res, "trust_change", "datainf")
    mde = (stats.observed_minimum_detectable_effect(diff, alpha=ALPHA)
           if np.ptp(diff) > 0 else math.nan)
    dims = sweep_dims(res)
    block = block_claim(sweep_column(res, dims[0]), sweep_column(res, dims[-1]))
    return {"rank": {m: _judgement(j, RHO_MIN) for m, j in rho.items()},
            "block": _judgement(block),
            "trust": _judgement(trust), "accuracy": _judgement(acc),
            "pruning": {"verdict": conj.verdict, "parts": list(conj.parts),
                        "p_reproduce": conj.p_reproduce, "p_contradict": conj.p_contradict},
            "trust_mde": mde}


# ----------------------------------------------------------------------------- report

def _ci(x, digits=3, scale=1.0) -> str:
    return harness.seeds_summary(x, digits=digits, scale=scale)


def _interval(j: dict, digits=3, scale=1.0) -> str:
    return (f"{j['estimate'] * scale:.{digits}f} [{j['low'] * scale:.{digits}f}, "
            f"{j['high'] * scale:.{digits}f}]")


def markdown(res: dict, mode: dict, mode_name: str, cl: dict) -> str:
    seeds = len(res["seeds"])
    lines = [f"# DataInf against leave-one-out retraining ({mode_name} mode, {seeds} seeds)", "",
             f"Sources: {published.DATAINF['datainf']['citation']}; "
             f"{published.DATAINF['trust']['citation']}.", "",
             f"Bradley–Terry reward model on {mode['pairs']} training pairs ({CONTAMINATED:.0%} "
             f"from raters who also reward toxicity), μ = {MU}; target: the trust loss on "
             f"{mode['target']} minimal (toxic vs clean) pairs; helpfulness accuracy on "
             f"{mode['heldout']} held-out pairs. Mean ± 95% t interval over seeds unless "
             "marked; [low, high]: the 90% two-sided interval whose bounds are the one-sided "
             "5% tests of the verdicts.", "",
             "### Influence against leave-one-out", ""]
    rows = [["Spearman ρ(DataInf, LOO)", _interval(cl["rank"]["datainf"]) + " (BCa)"],
            ["Spearman ρ(exact, LOO)", _interval(cl["rank"]["exact"]) + " (BCa)"],
            ["Spearman ρ(DataInf, exact)", _ci(column(res, "rho_datainf_exact"))],
            ["max |−I_exact/N − ΔLOO| / max |ΔLOO|", _ci(column(res, "relative_error_exact"))],
            ["trust loss of the full model (nats)", _ci(column(res, "trust"))],
            ["helpfulness accuracy of the full model", _ci(column(res, "accuracy"))],
            ["toxicity weight w_tox of the full model", _ci(column(res, "w_toxicity"))]]
    lines += [harness.markdown_table(["quantity", "value"], rows), "",
              "### Block size (one block of D parameters, the same world with more nuisance "
              "features)", ""]
    lines += [harness.markdown_table(
        ["D", "Spearman ρ(DataInf, exact)"],
        [[dim, _ci(sweep_column(res, dim))] for dim in sweep_dims(res)]), "",
              f"### Pruning {PRUNE:.0%} of the pairs ({prune_count(mode['pairs'])}) and "
              "refitting", ""]
    rows = []
    for arm, label in (("datainf", "top by DataInf"), ("exact", "top by exact influence"),
                       ("random", "random")):
        rows.append([label, _ci(column(res, "trust_change", arm), 4),
                     _ci(column(res, "accuracy_change", arm), 2, 100.0),
                     _ci(column(res, "contaminated_share", arm), 2)])
    lines += [harness.markdown_table(["removed", "Δ trust loss (nats)", "Δ helpfulness "
                                      "accuracy (points)", "contaminated share of removed"],
                                     rows), ""]
    t, a = cl["trust"], cl["accuracy"]
    mde = cl["trust_mde"]
    lines += [f"Random − DataInf-top Δ trust loss, paired over seeds: {_interval(t, 4)} "
              f"(paired t); minimum detectable effect (one-sided, power 0.8): "
              f"{mde:.4f} nats." if not math.isnan(mde) else "", "",
              "### Verdicts", ""]
    claims_text = published.DATAINF
    rows = [[claims_text["datainf"]["claims"][0] + " (we compare with LOO retraining, not "
             "with those baselines)", f"mean ρ(DataInf, LOO) lower bound > {RHO_MIN}",
             _interval(cl["rank"]["datainf"]), cl["rank"]["datainf"]["verdict"]],
            ["(the oracle) exact influence predicts LOO",
             f"mean ρ(exact, LOO) lower bound > {RHO_MIN}",
             _interval(cl["rank"]["exact"]), cl["rank"]["exact"]["verdict"]],
            [claims_text["datainf"]["claims"][1],
             f"ρ(DataInf, exact) at D = {sweep_dims(res)[0]} minus at D = "
             f"{sweep_dims(res)[-1]} > 0 "
             "(paired t)", _interval(cl["block"]), cl["block"]["verdict"]],
            [claims_text["trust"]["claims"][1],
             "pruning the top 5% by DataInf lowers the trust loss more than a random 5%",
             _interval(t, 4) + " nats", t["verdict"]],
            ["(our pruning check, not a published number) … general preference accuracy "
             "unchanged", f"helpfulness accuracy change within ±{ACC_MARGIN * 100:.0f} point "
             "(TOST)",
             _interval(a, 2, 100.0) + " points", a["verdict"]],
            ["both pruning parts", "conjunction (intersection-union; Holm for contradiction)",
             ", ".join(cl["pruning"]["parts"]), cl["pruning"]["verdict"]]]
    lines += [harness.markdown_table(["published claim", "our test", "ours", "verdict"], rows),
              "", f"Compute time (all seeds): {res.get('seconds', float('nan')):.1f} s."]
    return "\n".join(lines) + "\n"


def plot(res: dict, path: str) -> None:
    """Seed 0: predicted against actual LOO change (exact and DataInf); per seed: the trust
    change of DataInf-top pruning against random pruning."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sc = res["seeds"][0]["scatter"]
    fig, axes = plt.subplots(1, 3, figsize=(13.0, 4.0))
    cont = np.asarray(sc["contaminated"], bool)
    for ax, key, label in ((axes[0], "exact", "exact −I/N"),
                           (axes[1], "datainf", "DataInf −I/N, its own scale")):
        x, y = np.asarray(sc[key]), np.asarray(sc["loo"])
        ax.scatter(x[~cont], y[~cont], s=8, label="clean pairs")
        ax.scatter(x[cont], y[cont], s=8, c="tab:red", label="contaminated pairs")
        ax.set_xlabel(f"predicted Δ trust loss ({label})")
        ax.set_ylabel("actual Δ trust loss (LOO)")
        ax.set_title(f"seed 0, ρ = {spearman(x, y):.3f}", fontsize=9)
        ax.locator_params(axis="x", nbins=5)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    top, rnd = column(res, "trust_change", "datainf"), column(res, "trust_change", "random")
    ax = axes[2]
    ax.scatter(rnd, top, s=10)
    lim = [min(top.min(), rnd.min()), max(top.max(), rnd.max())]
    ax.plot(lim, lim, "k--", lw=1)
    ax.set_xlabel("Δ trust loss, random 5% removed")
    ax.set_ylabel("Δ trust loss, DataInf top 5% removed")
    ax.set_title("per seed; below the diagonal: influence beats random", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = harness.parser(__doc__)
    args = p.parse_args(argv)
    mode_name, mode = harness.mode_settings(p, args, MODES, min_seeds=stats.MIN_BOOTSTRAP_SEEDS,
                                            why="BCa intervals over seeds")
    out = harness.experiment_output(args, mode_name, NAME)
    res = run_all(mode, out)
    cl = claims(res)
    md = markdown(res, mode, mode_name, cl)
    plot(res, os.path.join(out, PLOT))
    return harness.finish(out, {"mode": mode_name, "settings": mode, "keys": KEYS,
                                "alpha": ALPHA, "rho_min": RHO_MIN, "acc_margin": ACC_MARGIN,
                                "results": res, "claims": cl}, md,
                          publish_to=HERE if args.publish else "", plots=(PLOT,))


if __name__ == "__main__":
    sys.exit(main())
