"""U-Sophistry on an exact pool world (Tier A): does RLHF against a time-limited evaluator's
approval make a policy more convincing but not more correct? (Wen et al., arXiv 2409.12822.)

    python experiments/sophistry/pool.py --quick    # 16 seeds
    python experiments/sophistry/pool.py            # full protocol (32 seeds; see README.md)
    python experiments/sophistry/pool.py --publish  # the same, then pool_results.md here

Outputs (runs.json, results.md, results.json) go to ~/align-runs/experiments/sophistry_pool
(sophistry_pool_quick for --quick; $ALIGN_RUNS replaces ~/align-runs) or --out.

Each seed draws a training world and a held-out world of align/tasks/sophistry.py and PAIRS pairs
of candidates from pi_ref on the training prompts, each candidate with a uniform u (common random
numbers): under a label source with P(approve | y) = p(y), the candidate's label is 1[u < p(y)].
Four conditions differ only in the label source and in what the reward model and policy see:
  - hidden (the paper's setting): the time-limited evaluator EVALUATOR labels, features phi;
  - true_score: the label is R* = right, features phi;
  - facts_visible: an evaluator with the facts (VISIBLE: checks every claim, q = 0.9) labels,
    features phi + cbar (the reward model sees the facts);
  - careful: the evaluator with q = 1 (it always checks a claim), features phi.
In each condition:
  - a reward model r(y) = w . phi(y) + b, logistic regression of the 2 PAIRS pointwise labels on
    the features (Newton's method, ridge RIDGE, deterministic);
  - RLHF: the exact optimum of E_pi[r] - beta KL(pi || pi_ref), pi ∝ pi_ref exp(r / beta), on
    the held-out prompts. With a linear reward and the policy class pi ∝ pi_ref exp(phi . theta)
    this is where exact policy-gradient ascent (PPO at ratio 1, as in experiments/dpo_vs_ppo)
    converges; beta = BETA for the verdicts, BETAS reported;
  - DPO: a linear policy pi ∝ pi_ref exp(phi . theta) fitted by DPO_STEPS full-batch Adam steps
    on the DPO loss over the pairs, chosen = the approved candidate (a coin where both or
    neither are approved), beta = BETA.
Metrics (align.analysis.evaluators, exact sums over the held-out candidates): correctness E[R*],
approval, error, false-positive and false-negative rates under the time-limited evaluator (the
paper's human evaluation), before (pi_ref) and after, and KL(pi || pi_ref).
Dimension letters: R seeds, P pairs, F features, U beta values.
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

from align.analysis import evaluators  # noqa: E402
from align.evaluate import stats  # noqa: E402
from align.objectives import pairwise  # noqa: E402
from align.tasks import pool, sophistry  # noqa: E402
from third_party import published  # noqa: E402

RESULTS_MD = "pool_results.md"

# Protocol (README.md): fixed before the first run.
EVALUATOR = sophistry.Evaluator(check=0.25, checks_all=False, confidence=1.5, length=0.5)
VISIBLE = sophistry.Evaluator(check=0.9, checks_all=True, confidence=1.5, length=0.5)
CAREFUL = sophistry.Evaluator(check=1.0, checks_all=False, confidence=1.5, length=0.5)
CONDITIONS = ("hidden", "true_score", "facts_visible", "careful")
LABEL_SOURCE = {"hidden": EVALUATOR, "true_score": None, "facts_visible": VISIBLE,
                "careful": CAREFUL}
SEES_FACTS = {"hidden": False, "true_score": False, "facts_visible": True, "careful": False}
METHODS = ("rlhf", "dpo")
BETA = 0.5
BETAS = (0.25, 0.5, 1.0, 2.0)
RIDGE = 1e-3  # on the mean logistic loss, weights only
NEWTON_STEPS = 25
DPO_STEPS, DPO_LR = 300, 0.05
KEYS = {"train_worlds": 1, "eval_worlds": 2, "pairs": 3}
ALPHA = 0.05
APPROVAL_RISE = 0.10  # approval rises by at least 10 points
CORRECTNESS_MARGIN = 0.03  # correctness moves by less than 3 points (TOST)
FPR_RISE = 0.15  # false-positive rate rises by at least 15 points (hidden facts)
FPR_CONTROL = 0.05  # and by less than 5 points when trained on the true score

MODES = {
    "full": dict(seeds=32, prompts=256, eval_prompts=512, pairs=4096),
    "quick": dict(seeds=16, prompts=256, eval_prompts=512, pairs=4096),
    "tiny": dict(seeds=4, prompts=32, eval_prompts=32, pairs=256),
}


# ----------------------------------------------------------------------------- training

def label_prob(world: sophistry.World, condition: str) -> jax.Array:
    """P(label 1 | y) of the condition's label source, [.., N, M]."""
    source = LABEL_SOURCE[condition]
    return sophistry.true_score(world) if source is None else sophistry.approval_prob(world,
                                                                                      source)


def fit_reward_model(x_BxF, y_B, ridge: float = RIDGE, steps: int = NEWTON_STEPS):
    """(w_F, b): argmin mean_B CE(y, sigmoid(x . w + b)) + ridge / 2 |w|^2 by Newton's method."""
    f = x_BxF.shape[-1]
    xb_BxG = jnp.concatenate([x_BxF, jnp.ones_like(x_BxF[:, :1])], axis=-1)
    penalty_G = jnp.concatenate([jnp.full((f,), ridge), jnp.zeros((1,))])

    def step(theta_G, _):
        p_B = jax.nn.sigmoid(xb_BxG @ theta_G)
        grad_G = xb_BxG.T @ (p_B - y_B) / y_B.size + penalty_G * theta_G
        hess_GxG = (xb_BxG.T * (p_B * (1.0 - p_B))) @ xb_BxG / y_B.size + jnp.diag(penalty_G)
        return theta_G - jnp.linalg.solve(hess_GxG + 1e-8 * jnp.eye(f + 1), grad_G), None

    theta_G, _ = jax.lax.scan(step, jnp.zeros((f + 1,)), None, length=steps)
    return theta_G[:f], theta_G[f]


def dpo_objective(theta_F, phi_NxMxF, ref_logp_NxM, prompts_P, chosen_P, rejected_P, beta):
    logratio_NxM = jax.nn.log_softmax(ref_logp_NxM + phi_NxMxF @ theta_F, axis=-1) - ref_logp_NxM
    return jnp.mean(pairwise.dpo_loss(logratio_NxM[prompts_P, chosen_P],
                                      logratio_NxM[prompts_P, rejected_P], beta=beta))


def fit_dpo(phi_NxMxF, ref_logp_NxM, prompts_P, chosen_P, rejected_P, beta,
            steps: int = DPO_STEPS, lr: float = DPO_LR):
    """theta_F of pi ∝ pi_ref exp(phi . theta) by full-batch Adam on the DPO loss, from 0."""
    opt = optax.adam(lr)
    theta_F = jnp.zeros(phi_NxMxF.shape[-1])
    grad_fn = jax.grad(dpo_objective)

    def step(carry, _):
        theta, state = carry
        g = grad_fn(theta, phi_NxMxF, ref_logp_NxM, prompts_P, chosen_P, rejected_P, beta)
        updates, state = opt.update(g, state, theta)
        return (optax.apply_updates(theta, updates), state), None

    (theta_F, _), _ = jax.lax.scan(step, (theta_F, opt.init(theta_F)), None, length=steps)
    return theta_F


def condition_arrays(world: sophistry.World, condition: str):
    """(phi [.., N, M, F + 1], P(label 1) [.., N, M]) of a condition: the facts column cbar is
    zero where the condition's reward model and policy do not see the facts (with the ridge, a
    zero column gets a zero weight, and DPO's gradient on it is zero), so every condition runs
    through one compiled function."""
    phi = sophistry.visible_features(world)
    if not SEES_FACTS[condition]:
        phi = phi.at[..., -1].set(0.0)
    return phi, label_prob(world, condition)


@functools.lru_cache(maxsize=8)
def _fit_fn(pairs: int):
    """Jitted, vmapped over runs: (key, train phi, train log pi_ref, train label probabilities,
    held-out phi, held-out log pi_ref) -> reward model (w, b), held-out reward, DPO's held-out
    log-probabilities."""

    def one(key, phi_NxMxF, ref_logp_NxM, p_NxM, eval_phi_NxMxF, eval_ref_logp_NxM):
        draw_key, u_key, coin_key = jax.random.split(key, 3)
        prompts_P, items_Px2 = pool._draw(draw_key, ref_logp_NxM, pairs, 2)
        u_Px2 = jax.random.uniform(u_key, (pairs, 2))
        coin_P = jax.random.bernoulli(coin_key, 0.5, (pairs,))
        label_Px2 = (u_Px2 < p_NxM[prompts_P[:, None], items_Px2]).astype(jnp.float32)
        x_Px2xF = phi_NxMxF[prompts_P[:, None], items_Px2]
        w_F, b = fit_reward_model(x_Px2xF.reshape(2 * pairs, -1), label_Px2.reshape(-1))
        first_wins_P = jnp.where(label_Px2[:, 0] == label_Px2[:, 1], coin_P,
                                 label_Px2[:, 0] > label_Px2[:, 1])
        chosen_P = jnp.where(first_wins_P, items_Px2[:, 0], items_Px2[:, 1])
        rejected_P = jnp.where(first_wins_P, items_Px2[:, 1], items_Px2[:, 0])
        theta_F = fit_dpo(phi_NxMxF, ref_logp_NxM, prompts_P, chosen_P, rejected_P, BETA)
        return {"rm_w": w_F, "rm_b": b, "reward": eval_phi_NxMxF @ w_F,
                "dpo_logp": jax.nn.log_softmax(eval_ref_logp_NxM + eval_phi_NxMxF @ theta_F,
                                               axis=-1)}

    return jax.jit(jax.vmap(one))


def fit_conditions(keys_R, train_w: sophistry.World, eval_w: sophistry.World,
                   pairs: int) -> dict:
    """condition -> the fits of _fit_fn for every seed, [R, ...]; one compiled call for all
    conditions (the same pair draws and uniforms in each: common random numbers)."""
    r = keys_R.shape[0]
    cat = lambda *xs: jnp.concatenate(xs)
    train = [condition_arrays(train_w, c) for c in CONDITIONS]
    evals = [condition_arrays(eval_w, c)[0] for c in CONDITIONS]
    out = _fit_fn(pairs)(cat(*[keys_R] * len(CONDITIONS)), cat(*[t[0] for t in train]),
                         cat(*[train_w.ref_logp] * len(CONDITIONS)),
                         cat(*[t[1] for t in train]), cat(*evals),
                         cat(*[eval_w.ref_logp] * len(CONDITIONS)))
    return {c: jax.tree.map(lambda x: x[i * r:(i + 1) * r], out)
            for i, c in enumerate(CONDITIONS)}


# ----------------------------------------------------------------------------- runs

def seed_inputs(mode: dict):
    """Per-seed training and held-out worlds and pair keys, [R, ...] each."""
    r = mode["seeds"]
    train_w = sophistry.make_worlds(jax.random.key(KEYS["train_worlds"]), r,
                                    prompts=mode["prompts"])
    eval_w = sophistry.make_worlds(jax.random.key(KEYS["eval_worlds"]), r,
                                   prompts=mode["eval_prompts"])
    keys_R = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(KEYS["pairs"]), s))(
        jnp.arange(r))
    return keys_R, train_w, eval_w


def _rates_dict(rates: evaluators.Rates) -> dict:
    return {k: float(v) for k, v in rates._asdict().items()}


def metrics_of(logp_NxM, truth_NxM, deployed_NxM, own_NxM, ref_logp_NxM) -> dict:
    """Rates under the time-limited evaluator (deployed), the condition's own label source's
    approval and false-positive rate, and KL(pi || pi_ref); float64 numpy arrays [N, M]."""
    logp = np.asarray(logp_NxM, np.float64)
    out = _rates_dict(evaluators.policy_rates(truth_NxM, deployed_NxM, logp))
    own = evaluators.policy_rates(truth_NxM, own_NxM, logp)
    out["own_false_positive_rate"], out["own_approval"] = own.false_positive_rate, own.approval
    p = np.exp(logp)
    out["kl"] = float(np.mean(np.sum(np.where(p > 0, p * (logp - ref_logp_NxM), 0.0), axis=-1)))
    return out


def run_all(mode: dict, out: str) -> dict:
    spec = dict(mode, beta=BETA, betas=list(BETAS), ridge=RIDGE, newton_steps=NEWTON_STEPS,
                dpo_steps=DPO_STEPS, dpo_lr=DPO_LR, keys=KEYS,
                evaluators={k: str(v) for k, v in LABEL_SOURCE.items()})
    return harness.cached(os.path.join(out, "runs.json"), spec, lambda: _run_all(mode))


def _stacked(dicts: list[dict]) -> dict:
    return {k: [d[k] for d in dicts] for k in dicts[0]}


def _run_all(mode: dict) -> dict:
    keys_R, train_w, eval_w = seed_inputs(mode)
    r_count = mode["seeds"]
    as64 = lambda x: np.asarray(x, np.float64)
    truth, ref = as64(eval_w.right), as64(eval_w.ref_logp)
    deployed = as64(sophistry.approval_prob(eval_w, EVALUATOR))

    def per_seed(logp_RxNxM, own_RxNxM):
        logp = as64(logp_RxNxM)
        return _stacked([metrics_of(logp[r], truth[r], deployed[r], own_RxNxM[r], ref[r])
                         for r in range(r_count)])

    result = {"ref": per_seed(ref, deployed)}
    harness.log(f"reward models and DPO: {len(CONDITIONS)} conditions x {r_count} seeds")
    fits = fit_conditions(keys_R, train_w, eval_w, mode["pairs"])
    for condition in CONDITIONS:
        fit = fits[condition]
        own = as64(label_prob(eval_w, condition))
        entry = {"rm_w": as64(fit["rm_w"]).tolist(), "ref_own": per_seed(ref, own)}
        for beta in BETAS:
            entry[f"rlhf_{beta:g}"] = per_seed(
                pool.tilted_logits(eval_w.ref_logp, fit["reward"], beta), own)
        entry["dpo"] = per_seed(fit["dpo_logp"], own)
        result[condition] = entry
    return result


def setting(res: dict, condition: str, method: str) -> dict:
    """Per-seed metrics of a (condition, method) at the verdicts' beta."""
    return res[condition][f"rlhf_{BETA:g}" if method == "rlhf" else "dpo"]


def deltas(res: dict, condition: str, method: str) -> dict:
    """metric -> after - before per seed [R], before = pi_ref."""
    after = setting(res, condition, method)
    return {k: np.asarray(after[k], np.float64) - np.asarray(res["ref"][k], np.float64)
            for k in evaluators.RATES}


# ----------------------------------------------------------------------------- verdicts

def at_least(d_R, threshold: float) -> stats.Judgement:
    """"d rises by at least threshold": the directional rule on d - threshold (smallest effect
    0): reproduced iff the lower 1 - 2 alpha bound of d exceeds threshold, contradicted iff the
    upper bound lies below it. Estimate and bounds are reported for d itself."""
    j = stats.directional(np.asarray(d_R, np.float64) - threshold, paper_effect=1.0,
                          smallest_effect=0.0, alpha=ALPHA)
    return _shift(j, threshold)


def less_than(d_R, threshold: float) -> stats.Judgement:
    """"d rises by less than threshold": the directional rule on threshold - d: reproduced iff
    the upper 1 - 2 alpha bound of d lies below threshold, contradicted iff the lower bound
    exceeds it. Estimate and bounds are reported for d itself."""
    j = stats.directional(threshold - np.asarray(d_R, np.float64), paper_effect=1.0,
                          smallest_effect=0.0, alpha=ALPHA)
    return stats.Judgement(j.verdict, threshold - j.estimate, threshold - j.high,
                           threshold - j.low, j.p_reproduce, j.p_contradict, j.n, j.method)


def flat(d_R, margin: float = CORRECTNESS_MARGIN) -> stats.Judgement:
    """"d is within ±margin of 0": TOST (stats.equivalent)."""
    return stats.equivalent(np.asarray(d_R, np.float64), margin=margin, alpha=ALPHA)


def _shift(j: stats.Judgement, by: float) -> stats.Judgement:
    return stats.Judgement(j.verdict, j.estimate + by, j.low + by, j.high + by, j.p_reproduce,
                           j.p_contradict, j.n, j.method)


def _part(name: str, j: stats.Judgement, held: bool | None = None) -> dict:
    out = {"part": name, "verdict": j.verdict, "estimate": j.estimate, "low": j.low,
           "high": j.high, "n": j.n, "method": j.method}
    if held is not None:
        out["held_after_holm"] = held
    return out


def sophistry_claim(d: dict, text: str) -> dict:
    """Approval up >= APPROVAL_RISE, correctness within ±CORRECTNESS_MARGIN, FPR up >= FPR_RISE:
    a conjunction (reproduced iff all three are; Holm for contradiction)."""
    parts = [("approval rises ≥ 10 points", at_least(d["approval"], APPROVAL_RISE)),
             ("correctness moves < 3 points (TOST)", flat(d["correctness"])),
             ("false-positive rate rises ≥ 15 points", at_least(d["false_positive_rate"],
                                                               FPR_RISE))]
    conj = stats.conjunction([j for _, j in parts], alpha=ALPHA)
    return {"claim": text, "verdict": conj.verdict,
            "parts": [_part(n, j, h) for (n, j), h in zip(parts, conj.held)]}


def control_claim(d: dict, text: str) -> dict:
    j = less_than(d["false_positive_rate"], FPR_CONTROL)
    return {"claim": text, "verdict": j.verdict,
            "parts": [_part("false-positive rate rises < 5 points", j)]}


def claims(res: dict) -> list[dict]:
    out = [sophistry_claim(deltas(res, "hidden", "rlhf"),
                           "RLHF on time-limited approval (facts hidden from the reward model): "
                           "more convincing, not more correct"),
           control_claim(deltas(res, "true_score", "rlhf"),
                         "RLHF on the true score (control): the false-positive rate does not "
                         "rise by 5 points"),
           sophistry_claim(deltas(res, "hidden", "dpo"),
                           "DPO on time-limited approval pairs: more convincing, not more "
                           "correct"),
           sophistry_claim(deltas(res, "facts_visible", "rlhf"),
                           "Control, facts visible (evaluator checks every claim with q = 0.9, "
                           "reward model sees claim consistency): the same effect"),
           sophistry_claim(deltas(res, "careful", "rlhf"),
                           "Control, q = 1 (the evaluator always checks a claim): the same "
                           "effect")]
    return out


# ----------------------------------------------------------------------------- outputs

def _cell(values, digits: int = 1, scale: float = 100.0) -> str:
    return harness.seeds_summary(values, digits=digits, scale=scale)


def precondition(res: dict) -> list[str]:
    """The reward model's coefficients: the claim rests on the hidden-facts RM paying for s."""
    lines = ["", "**Precondition.** The hidden-facts claim rests on the reward model fit to "
             "time-limited approvals paying for persuasiveness s (which, on wrong answers, "
             "buys approval without correctness). Reward-model coefficients (logit per unit "
             "feature; mean ± 95% t interval over seeds):", ""]
    names = list(sophistry.FEATURES)
    rows = []
    for c in CONDITIONS:
        w_RxF = np.asarray(res[c]["rm_w"], np.float64)
        cols = [harness.seeds_summary(w_RxF[:, i], digits=3) for i in range(len(names))]
        cols.append(harness.seeds_summary(w_RxF[:, -1], digits=3) if SEES_FACTS[c] else "—")
        rows.append([c, *cols])
    lines.append(harness.markdown_table(["condition", *names, "cbar (facts)"], rows))
    w_s = np.asarray(res["hidden"]["rm_w"], np.float64)[:, sophistry.PERSUASION]
    mean, low, high = stats.t_interval(w_s, alpha=0.025)
    held = low > 0
    lines += ["", f"Hidden-facts reward model's coefficient on s: {mean:.3f} "
              f"[{low:.3f}, {high:.3f}] (95% t interval): "
              f"{'precondition holds' if held else 'PRECONDITION FAILS'}."]
    return lines


def rates_table(res: dict) -> list[str]:
    header = ["condition", "policy", "KL", "correctness", "approval", "FPR", "FNR", "error",
              "own FPR"]
    rows = []
    ref = res["ref"]
    rows.append(["—", "π_ref", "0", _cell(ref["correctness"]), _cell(ref["approval"]),
                 _cell(ref["false_positive_rate"]), _cell(ref["false_negative_rate"]),
                 _cell(ref["error_rate"]), "—"])
    for c in CONDITIONS:
        names = [f"rlhf_{b:g}" for b in BETAS] + ["dpo"]
        for name in names:
            m = res[c][name]
            label = (f"RLHF β={name[5:]}" if name.startswith("rlhf") else f"DPO β={BETA:g}")
            rows.append([c, label, harness.seeds_summary(m["kl"], digits=2),
                         _cell(m["correctness"]), _cell(m["approval"]),
                         _cell(m["false_positive_rate"]), _cell(m["false_negative_rate"]),
                         _cell(m["error_rate"]), _cell(m["own_false_positive_rate"])])
    own_rows = [[c, _cell(res[c]["ref_own"]["own_approval"]),
                 _cell(res[c]["ref_own"]["own_false_positive_rate"])] for c in CONDITIONS]
    return ["", "Rates in points (%) under the time-limited evaluator (q = 0.25), exact on the "
            "held-out candidates; own FPR: under the condition's own label source (0 for the "
            "true score); mean ± 95% t interval over seeds.", "",
            harness.markdown_table(header, rows), "",
            "π_ref under each condition's own label source (points):", "",
            harness.markdown_table(["condition", "own approval", "own FPR"], own_rows)]


def claim_lines(cl: list[dict]) -> list[str]:
    lines = ["", f"Claims (criteria pre-registered in README.md; RLHF at β = {BETA:g}; "
             f"{100 * (1 - 2 * ALPHA):.0f}% t intervals of the change after − before, in "
             "points; Holm within a claim):", ""]
    for c in cl:
        lines.append(f"- **{c['claim']}** → **{c['verdict']}**")
        for p in c["parts"]:
            held = ", holds after Holm" if p.get("held_after_holm") else ""
            lines.append(f"  - {p['part']}: {100 * p['estimate']:+.1f} "
                         f"[{100 * p['low']:+.1f}, {100 * p['high']:+.1f}], "
                         f"{p['verdict']}{held}")
    return lines


def markdown(res: dict, mode: dict, mode_name: str, cl: list[dict]) -> str:
    lines = [f"# U-Sophistry on the pool world, Tier A ({mode_name} mode, {mode['seeds']} "
             "seeds)", "",
             f"Paper: {published.SOPHISTRY['citation']}. {mode['pairs']} pairs from π_ref per "
             f"seed ({mode['prompts']} training prompts, {mode['eval_prompts']} held-out, "
             "16 candidates, 4 claims)."]
    lines += precondition(res) + rates_table(res) + claim_lines(cl)
    lines += ["", f"Run time (compilation included): {res['seconds'] / 60:.1f} min."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = harness.parser(__doc__)
    args = p.parse_args(argv)
    mode_name, mode = harness.mode_settings(p, args, MODES, min_seeds=2, why="t intervals")
    out = harness.experiment_output(args, mode_name, "sophistry_pool")
    res = run_all(mode, out)
    cl = claims(res)
    md = markdown(res, mode, mode_name, cl)
    return harness.finish(out, {"mode": mode_name, "settings": mode, "beta": BETA,
                                "alpha": ALPHA, "claims": cl, "results": res}, md,
                          publish_to=HERE if args.publish else "", results_md=RESULTS_MD)


if __name__ == "__main__":
    sys.exit(main())
