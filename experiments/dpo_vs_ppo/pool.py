"""DPO against PPO-style RLHF on the exact pool world (Tier A): the gold reward-KL frontier of
Rafailov et al. (arXiv 2305.18290, Fig. 2 left), with a pre-registered matched-KL verdict.

    python experiments/dpo_vs_ppo/pool.py --quick    # 16 seeds, 200 steps, 4 betas
    python experiments/dpo_vs_ppo/pool.py            # full protocol (32 seeds; see README.md)
    python experiments/dpo_vs_ppo/pool.py --publish  # the same, then pool_results.md here

Outputs (runs.json, results.md, results.json, pool_frontier.png) go to
~/align-runs/experiments/dpo_vs_ppo_pool (dpo_vs_ppo_pool_quick for --quick; $ALIGN_RUNS
replaces ~/align-runs) or --out.

Each seed draws a training world (128 prompts) and a held-out world (256 prompts) of
align/tasks/pool.py and one set of preference pairs from pi_ref, labelled by a Bradley-Terry
judge on the gold. The same pairs feed DPO (align.objectives.pairwise.dpo_loss, unchanged) and a
Bradley-Terry reward model r_hat of the policy's own class. Three families train the same policy
class pi ∝ pi_ref exp(f(phi)) (f a width-16 tanh MLP, the same initialisation on a seed) for the
same number of full-batch Adam updates at the same learning rate:
  - DPO: mean DPO loss over the pairs;
  - PPO-RM: ascent on the exact objective mean_x (E_pi[r_hat] - beta KL(pi || pi_ref)) over the
    training prompts. Its gradient is the exact policy gradient E_pi[grad log pi (A)] with the
    exact advantage A = r_hat - beta log(pi / pi_ref) - its mean under pi, which is the gradient
    of PPO's surrogate at ratio 1; every update is computed under the current policy, so the
    ratio is always 1 and PPO's clipping never acts;
  - PPO-gold: the same with the gold reward (an upper reference, the paper's PPO-GT).
Metrics (expected gold, KL to pi_ref) are exact, on the held-out prompts, every few steps; a
family's frontier on a seed is the upper envelope of all its (KL, gold) points over beta and
steps, pi_ref included.
Dimension letters: R seeds, U beta values, T recorded steps, G KL grid values, P pairs.
"""

from __future__ import annotations

import functools
import math
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import harness  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from align.evaluate import stats  # noqa: E402
from align.objectives import pairwise  # noqa: E402
from align.tasks import pool  # noqa: E402
from third_party import published  # noqa: E402

FAMILIES = ("dpo", "ppo_rm", "ppo_gold")
LABELS = {"dpo": "DPO", "ppo_rm": "PPO-RM", "ppo_gold": "PPO-gold"}
RESULTS_MD = "pool_results.md"
PLOT = "pool_frontier.png"

# Protocol (README.md, "Tier A"): fixed before the full run.
WIDTH = 16  # policy and reward model: tanh MLPs of width 16
LR = 0.02  # Adam, every family
RM_STEPS, RM_LR = 400, 0.05  # full-batch Adam on the Bradley-Terry likelihood of the pairs
JUDGE = pool.Judge(strength=1.0)  # labels: Bradley-Terry on the gold, no cycle
KEYS = {"train_worlds": 1, "eval_worlds": 2, "pairs": 3, "init": 4, "reward_model": 104}
ALPHA = 0.05
MARGIN = 0.05  # non-inferiority margin, gold units (per-candidate gold has sd about 1.4)
GRID = 5  # matched-KL values: hi * g / GRID, g = 1..GRID

MODES = {
    "full": dict(seeds=32, steps=400, record_every=10, prompts=128, eval_prompts=256,
                 pairs=1024, betas=(0.05, 0.1, 0.2, 0.5, 1.0, 2.0)),
    "quick": dict(seeds=16, steps=200, record_every=10, prompts=128, eval_prompts=256,
                  pairs=1024, betas=(0.1, 0.3, 1.0, 3.0)),
    "tiny": dict(seeds=3, steps=8, record_every=4, prompts=16, eval_prompts=16, pairs=64,
                 betas=(0.3, 1.0)),
}


# ----------------------------------------------------------------------------- objectives

def dpo_objective(params, world: pool.World, pairs: pool.Pairs, beta):
    """Mean DPO loss over the pairs, chosen = the judge's winner."""
    logratio_NxM = pool.policy_logits(params, world) - world.ref_logp
    won_P = pairs.label > 0.5
    chosen_P = jnp.where(won_P, pairs.first, pairs.second)
    rejected_P = jnp.where(won_P, pairs.second, pairs.first)
    return jnp.mean(pairwise.dpo_loss(logratio_NxM[pairs.prompts, chosen_P],
                                      logratio_NxM[pairs.prompts, rejected_P], beta=beta))


def rlhf_objective(params, world: pool.World, reward_NxM, beta):
    """-(mean_x E_pi[r] - beta KL(pi || pi_ref)), exact over the world's prompts (to minimise)."""
    logp_NxM = pool.policy_logits(params, world)
    return -jnp.mean(pool.expected_N(logp_NxM, reward_NxM)
                     - beta * pool.kl_N(logp_NxM, world.ref_logp))


def exact_advantage(logp_NxM, ref_logp_NxM, reward_NxM, beta):
    """A = r - beta log(pi / pi_ref) minus its mean under pi (the exact KL-shaped advantage)."""
    shaped_NxM = reward_NxM - beta * (logp_NxM - ref_logp_NxM)
    return shaped_NxM - pool.expected_N(logp_NxM, shaped_NxM)[:, None]


def fit_reward_model(key, world: pool.World, pairs: pool.Pairs) -> dict:
    """r_hat of width WIDTH by full-batch Adam on the pairs' Bradley-Terry likelihood."""
    params = pool.init_params(key, world.features.shape[-1], width=WIDTH,
                              dtype=world.features.dtype)
    # A zero output layer gives the hidden units no gradient at the first step.
    params["w2"] = jax.random.normal(jax.random.fold_in(key, 1), (WIDTH,),
                                     params["w2"].dtype) / math.sqrt(WIDTH)
    opt = optax.adam(RM_LR)

    def step(carry, _):
        params, state = carry
        grads = jax.grad(pool.bt_nll)(params, world, pairs)
        updates, state = opt.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=RM_STEPS)
    return params


# ----------------------------------------------------------------------------- runs

def seed_inputs(mode: dict):
    """Per-seed training and held-out worlds and pairs from pi_ref, [R, ...] each."""
    seeds_R = jnp.arange(mode["seeds"])
    train_w = pool.make_worlds(jax.random.key(KEYS["train_worlds"]), mode["seeds"],
                               prompts=mode["prompts"])
    eval_w = pool.make_worlds(jax.random.key(KEYS["eval_worlds"]), mode["seeds"],
                              prompts=mode["eval_prompts"])
    pairs = jax.vmap(lambda r, w: pool.sample_pairs(
        jax.random.fold_in(jax.random.key(KEYS["pairs"]), r), w, w.ref_logp, JUDGE,
        mode["pairs"]))(seeds_R, train_w)
    return train_w, eval_w, pairs


@functools.lru_cache(maxsize=16)
def _runner(family: str, steps: int, every: int):
    """Jitted (seed_R, beta_R, train_w, eval_w, pairs, rm) -> trajectory {metric: [R, T]}."""
    opt = optax.adam(LR)

    def one(seed, beta, train_w, eval_w, pairs, rm):
        params = pool.init_params(jax.random.fold_in(jax.random.key(KEYS["init"]), seed),
                                  train_w.features.shape[-1], width=WIDTH,
                                  dtype=train_w.features.dtype)
        if family == "dpo":
            loss_fn = functools.partial(dpo_objective, world=train_w, pairs=pairs, beta=beta)
        else:
            reward_NxM = (pool.score(rm, train_w.features) if family == "ppo_rm"
                          else train_w.gold)
            loss_fn = functools.partial(rlhf_objective, world=train_w, reward_NxM=reward_NxM,
                                        beta=beta)

        def step(carry, _):
            params, state = carry
            grads = jax.grad(loss_fn)(params)
            updates, state = opt.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), None

        def chunk(carry, _):
            carry, _ = jax.lax.scan(step, carry, None, length=every)
            logp_NxM = pool.policy_logits(carry[0], eval_w)
            return carry, {"gold": jnp.mean(pool.expected_N(logp_NxM, eval_w.gold)),
                           "kl": jnp.mean(pool.kl_N(logp_NxM, eval_w.ref_logp))}

        _, traj = jax.lax.scan(chunk, (params, opt.init(params)), None, length=steps // every)
        return traj

    return jax.jit(jax.vmap(one))


def _tile(tree, times: int):
    return jax.tree.map(lambda x: jnp.concatenate([x] * times), tree)


def run_family(family: str, mode: dict, inputs, rm) -> dict:
    """{'gold', 'kl': [U][R][T]} for every beta of the mode, one vmap over (beta, seed)."""
    r, u = mode["seeds"], len(mode["betas"])
    train_w, eval_w, pairs = inputs
    fn = _runner(family, mode["steps"], mode["record_every"])
    traj = fn(jnp.tile(jnp.arange(r), u), jnp.repeat(jnp.asarray(mode["betas"], jnp.float32), r),
              _tile(train_w, u), _tile(eval_w, u), _tile(pairs, u), _tile(rm, u))
    return {m: np.asarray(v, np.float64).reshape(u, r, -1).tolist() for m, v in traj.items()}


def run_all(mode: dict, out: str) -> dict:
    """Reference metrics, reward-model accuracy and the three families; cached in out/runs.json."""
    spec = {k: (list(v) if isinstance(v, tuple) else v) for k, v in mode.items()}
    spec.update(width=WIDTH, lr=LR, rm_steps=RM_STEPS, rm_lr=RM_LR, keys=KEYS)
    return harness.cached(os.path.join(out, "runs.json"), spec, lambda: _run_all(mode))


def _run_all(mode: dict) -> dict:
    inputs = seed_inputs(mode)
    train_w, eval_w, pairs = inputs
    keys_R = jax.vmap(lambda r: jax.random.fold_in(jax.random.key(KEYS["reward_model"]), r))(
        jnp.arange(mode["seeds"]))
    rm = jax.jit(jax.vmap(fit_reward_model))(keys_R, train_w, pairs)
    gold_pref = jax.vmap(lambda w: pool.preference_matrix(w, pool.GOLD))(eval_w)
    rm_NxM = jax.vmap(lambda p, w: pool.score(p, w.features))(rm, eval_w)
    # Reward-model agreement with the gold on held-out pairs drawn from pi_ref (exact).
    agree = jax.vmap(lambda s, w, g: jnp.mean(jnp.einsum(
        "ni,nj,nij->n", jnp.exp(w.ref_logp), jnp.exp(w.ref_logp),
        jnp.where(s[:, :, None] > s[:, None, :], g, 1.0 - g))))(rm_NxM, eval_w, gold_pref)
    result = {"ref_gold": np.asarray(jax.vmap(lambda w: jnp.mean(
                  pool.expected_N(w.ref_logp, w.gold)))(eval_w), np.float64).tolist(),
              "rm_agreement": np.asarray(agree, np.float64).tolist(),
              "steps": list(range(mode["record_every"], mode["steps"] + 1,
                                  mode["record_every"]))}
    for family in FAMILIES:
        harness.log(f"{family}: {len(mode['betas'])} betas x {mode['seeds']} seeds")
        result[family] = run_family(family, mode, inputs, rm)
    return result


# ----------------------------------------------------------------------------- frontiers

def frontier_at(kl_M, gold_M, ref_gold: float, grid_G) -> np.ndarray:
    """Upper frontier of (KL, gold) points, pi_ref's (0, ref_gold) included, at KL values grid_G:
    the running maximum of gold over points sorted by KL, linear between its corners."""
    kl = np.concatenate([[0.0], np.asarray(kl_M, np.float64).ravel()])
    gold = np.concatenate([[ref_gold], np.asarray(gold_M, np.float64).ravel()])
    order = np.argsort(kl, kind="stable")
    kl, best = kl[order], np.maximum.accumulate(gold[order])
    corner = np.concatenate([[True], best[1:] > best[:-1]])
    return np.interp(grid_G, kl[corner], best[corner])


def _per_seed(setting: dict, metric: str) -> np.ndarray:
    """[R, U * T]: every recorded point of every beta, per seed."""
    x_UxRxT = np.asarray(setting[metric], np.float64)
    return np.transpose(x_UxRxT, (1, 0, 2)).reshape(x_UxRxT.shape[1], -1)


def reach(setting: dict) -> float:
    """The smallest, over seeds, of the largest KL a family's points reach."""
    return float(np.min(_per_seed(setting, "kl").max(axis=1)))


def kl_grid(res: dict) -> np.ndarray:
    """The pre-registered grid: hi * g / GRID, g = 1..GRID, hi the smallest reach of a family."""
    hi = min(reach(res[f]) for f in FAMILIES)
    return hi * np.arange(1, GRID + 1) / GRID


def matched(res: dict, family: str, grid_G) -> np.ndarray:
    """[R, G]: each seed's frontier of `family` at the grid."""
    kl_RxM, gold_RxM = _per_seed(res[family], "kl"), _per_seed(res[family], "gold")
    return np.stack([frontier_at(k, g, r, grid_G)
                     for k, g, r in zip(kl_RxM, gold_RxM, res["ref_gold"])])


# ----------------------------------------------------------------------------- verdicts

def noninferior(a_R, b_R, margin: float = MARGIN) -> stats.Judgement:
    """"a is at least as good as b": the directional rule on a - b + margin, paired by seed.

    paper_effect = margin (the claim says a - b >= 0) and smallest_effect = 0: reproduced iff
    the lower 1 - 2 alpha bound of a - b exceeds -margin (non-inferiority at level alpha);
    contradicted iff its upper bound lies below -margin (a worse by more than the margin).
    """
    d_R = stats.paired_differences(a_R, b_R)
    return stats.directional(d_R + margin, paper_effect=margin, smallest_effect=0.0,
                             alpha=ALPHA)


def frontier_claim(a_RxG, b_RxG, grid_G, text: str, margin: float = MARGIN) -> dict:
    """a's frontier at least as good as b's at every grid KL: conjunction, Holm inside."""
    parts = [noninferior(a_RxG[:, g], b_RxG[:, g], margin) for g in range(len(grid_G))]
    conj = stats.conjunction(parts, alpha=ALPHA)
    rows = []
    for g, (j, held) in enumerate(zip(parts, conj.held)):
        d = stats.paired_differences(a_RxG[:, g], b_RxG[:, g])
        rows.append({"kl": float(grid_G[g]), "estimate": j.estimate - margin,
                     "low": j.low - margin, "high": j.high - margin, "verdict": j.verdict,
                     "held_after_holm": held, "n": j.n,
                     "mde": (stats.observed_minimum_detectable_effect(d, alpha=ALPHA)
                             if np.ptp(d) > 0 else math.nan)})
    return {"claim": text, "verdict": conj.verdict, "margin": margin, "parts": rows}


def claims(res: dict) -> list[dict]:
    grid = kl_grid(res)
    dpo = matched(res, "dpo", grid)
    return [frontier_claim(dpo, matched(res, "ppo_rm", grid), grid,
                           "DPO's gold-KL frontier is at least as good as PPO-RM's"),
            frontier_claim(dpo, matched(res, "ppo_gold", grid), grid,
                           "DPO's gold-KL frontier is at least as good as PPO-gold's")]


# ----------------------------------------------------------------------------- outputs

def _cell(values, digits: int = 3) -> str:
    return harness.seeds_summary(values, digits=digits)


def fixed_beta_table(res: dict, mode: dict) -> list[str]:
    """Final-step gold and KL of every family at every beta."""
    rows = []
    for f in FAMILIES:
        for u, b in enumerate(mode["betas"]):
            gold_R = np.asarray(res[f]["gold"], np.float64)[u, :, -1]
            kl_R = np.asarray(res[f]["kl"], np.float64)[u, :, -1]
            rows.append([LABELS[f], f"{b:g}", _cell(kl_R, 2), _cell(gold_R)])
    return ["", f"Fixed β, after {mode['steps']} updates: KL(π‖π_ref) (nats) and expected gold "
            "on the held-out prompts.", "",
            harness.markdown_table(["family", "β", "KL", "gold"], rows)]


def matched_table(res: dict) -> list[str]:
    grid = kl_grid(res)
    vals = {f: matched(res, f, grid) for f in FAMILIES}
    rows = [[LABELS[f], *[_cell(vals[f][:, g]) for g in range(grid.size)]] for f in FAMILIES]
    for f in ("ppo_rm", "ppo_gold"):
        rows.append([f"DPO − {LABELS[f]}",
                     *[_cell(vals["dpo"][:, g] - vals[f][:, g]) for g in range(grid.size)]])
    return ["", "Gold at matched KL: each seed's frontier over β and recorded steps, "
            "interpolated at the grid (π_ref's gold at KL 0 is "
            f"{_cell(res['ref_gold'])}).", "",
            harness.markdown_table(["family", *[f"KL {k:.2f}" for k in grid]], rows)]


def claim_lines(cl: list[dict]) -> list[str]:
    lines = ["", "Claims (criteria pre-registered in README.md): DPO − PPO at each grid KL, "
             f"{100 * (1 - 2 * ALPHA):.0f}% paired-t interval, non-inferiority margin "
             f"{MARGIN} gold; Holm within the claim.", ""]
    for c in cl:
        lines.append(f"- **{c['claim']}** → **{c['verdict']}**")
        for p in c["parts"]:
            lines.append(f"  - KL {p['kl']:.2f}: {p['estimate']:+.3f} [{p['low']:+.3f}, "
                         f"{p['high']:+.3f}], {p['verdict']}"
                         f"{', holds after Holm' if p['held_after_holm'] else ''}")
        mdes = [p["mde"] for p in c["parts"] if not math.isnan(p["mde"])]
        if mdes:
            lines.append(f"  - power: minimum detectable difference (one-sided α = {ALPHA}, "
                         f"power 0.8, paired t over {c['parts'][0]['n']} seeds) at most "
                         f"{max(mdes):.3f} gold across the grid, against the margin "
                         f"{c['margin']}")
    return lines


def markdown(res: dict, mode: dict, mode_name: str, cl: list[dict]) -> str:
    lines = [f"# DPO vs PPO on the pool world, Tier A ({mode_name} mode, {mode['seeds']} seeds)",
             "", f"Mean ± 95% t interval over seeds. {mode['pairs']} judge-labelled pairs from "
             f"π_ref per seed feed DPO and the reward model (width-{WIDTH} MLP, {RM_STEPS} Adam "
             f"steps; agreement with the gold on held-out π_ref pairs "
             f"{_cell(res['rm_agreement'])}). Every family: {mode['steps']} full-batch Adam "
             f"updates, lr {LR}, width-{WIDTH} MLP policy. Paper: {published.DPO['citation']}."]
    lines += fixed_beta_table(res, mode) + matched_table(res) + claim_lines(cl)
    lines += ["", f"Run time (compilation included): {res['seconds'] / 60:.1f} min."]
    return "\n".join(lines) + "\n"


def plot_frontier(res: dict, path: str) -> None:
    def draw(ax):
        for f in FAMILIES:
            grid = np.linspace(0.0, reach(res[f]), 40)
            ax.plot(grid, matched(res, f, grid).mean(axis=0), label=LABELS[f])

    harness.plot(path, draw, title="Tier A: gold against KL (frontier over beta and steps)",
                 xlabel="KL(pi || pi_ref), nats", ylabel="expected gold (held-out prompts)")


def main(argv=None) -> int:
    p = harness.parser(__doc__)
    args = p.parse_args(argv)
    mode_name, mode = harness.mode_settings(p, args, MODES, min_seeds=2, why="paired intervals")
    out = harness.experiment_output(args, mode_name, "dpo_vs_ppo_pool")
    res = run_all(mode, out)
    cl = claims(res)
    md = markdown(res, mode, mode_name, cl)
    plot_frontier(res, os.path.join(out, PLOT))
    return harness.finish(out, {"mode": mode_name, "settings": mode, "lr": LR, "width": WIDTH,
                                "margin": MARGIN, "alpha": ALPHA,
                                "grid": kl_grid(res).tolist(), "claims": cl,
                                "ref_gold": res["ref_gold"],
                                "rm_agreement": res["rm_agreement"]}, md,
                          publish_to=HERE if args.publish else "", results_md=RESULTS_MD)


if __name__ == "__main__":
    sys.exit(main())
