"""Calandriello et al. (arXiv 2403.08635) on the exact pool world (Tier A): online IPO and
IPO-MD reach the same solution, tested by TOST with a pre-registered margin.

    python experiments/online_ipo/pool.py --quick    # 16 seeds
    python experiments/online_ipo/pool.py            # full protocol (32 seeds; README.md, Tier A)
    python experiments/online_ipo/pool.py --publish  # the same, then pool_results.md here

Outputs go to ~/align-runs/experiments/online_ipo_pool (online_ipo_pool_quick for --quick;
$ALIGN_RUNS replaces ~/align-runs) or --out.

The worlds, judge, pairs, preference model, RLHF policy and policy family are those of
experiments/nash_md/pool.py (its imbalanced condition; the learned-cycle check comes first).
IPO-MD(beta) minimises, by Adam, the exact expectation of the soft IPO loss
p L(y, y') + (1 - p) L(y', y), L = ipo_loss at tau, over pairs y, y' iid from sg pi_mix,
pi_mix ∝ pi_theta^(1 - beta) pi_ref^beta, p the preference model's; online IPO is beta = 0.
The claim compares IPO-MD at IPO_MD_BETA with online IPO head to head under the judge; the
planted non-equivalent case is beta = 1 (pairs from pi_ref: offline IPO's fixed point).
Dimension letters: R seeds, N prompts, M candidates, F features.
"""

from __future__ import annotations

import functools
import importlib.util
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


def _nash_pool():
    path = os.path.join(os.path.dirname(HERE), "nash_md", "pool.py")
    spec = importlib.util.spec_from_file_location("nash_md_pool", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


nmd = _nash_pool()

NAME = "online_ipo_pool"
RESULTS_MD = "pool_results.md"
TILT = nmd.TILTS["tilted"]
IPO_MD_BETA = 0.125  # the claim's IPO-MD
PLANTED_BETA = 1.0  # pairs from pi_ref: must not be equivalent
MARGIN = 0.01  # TOST margin on win rate - 1/2 (points of win rate), pre-registered
ALPHA = 0.05
LR = nmd.LR

MODES = {
    "full": dict(seeds=32, prompts=128, eval_prompts=256, pairs=8192, steps=1500),
    "quick": dict(seeds=16, prompts=64, eval_prompts=128, pairs=4096, steps=800),
    "tiny": dict(seeds=3, prompts=8, eval_prompts=8, pairs=256, steps=20),
}


def ipo_md_loss(theta_F, sample_logp_NxM, world: pool.World, pref_NxMxM, tau=nmd.TAU):
    """E_{y, y' ~ sample} [p L(y, y') + (1 - p) L(y', y)], exact, mean over prompts."""
    ratio_NxM = nmd.logits(theta_F, world) - world.ref_logp
    a = jnp.broadcast_to(ratio_NxM[:, :, None], pref_NxMxM.shape)
    b = jnp.broadcast_to(ratio_NxM[:, None, :], pref_NxMxM.shape)
    loss = (pref_NxMxM * pairwise.ipo_loss(a, b, tau=tau)
            + (1.0 - pref_NxMxM) * pairwise.ipo_loss(b, a, tau=tau))
    w_NxM = jnp.exp(jax.lax.stop_gradient(sample_logp_NxM))
    return jnp.mean(jnp.einsum("ni,nj,nij->n", w_NxM, w_NxM, loss))


def train_ipo(world: pool.World, pref_NxMxM, *, steps: int, beta, lr=LR, tau=nmd.TAU):
    """IPO-MD(beta) by Adam on the exact loss; (theta_F, |gradient| at the end)."""
    opt = optax.adam(lr)
    theta = jnp.zeros((world.features.shape[-1],), world.features.dtype)

    def grad(theta):
        return jax.grad(ipo_md_loss)(theta, nmd.mixture(theta, world, beta), world, pref_NxMxM,
                                     tau)

    def step(carry, _):
        theta, state = carry
        updates, state = opt.update(grad(theta), state)
        return (optax.apply_updates(theta, updates), state), None

    (theta, _), _ = jax.lax.scan(step, (theta, opt.init(theta)), None, length=steps)
    return theta, jnp.linalg.norm(grad(theta))


ARMS = {"online IPO": 0.0, f"IPO-MD β = {IPO_MD_BETA:g}": IPO_MD_BETA,
        f"IPO-MD β = {PLANTED_BETA:g} (planted)": PLANTED_BETA}


@functools.lru_cache(maxsize=None)
def _run_fn(steps: int):
    betas = jnp.asarray(list(ARMS.values()))

    def one(train_w, eval_w, pairs, held):
        bt, pm = nmd.fit_models(train_w, pairs)
        pref_train = nmd.pm_matrix(pm, train_w)
        judge_eval = pool.preference_matrix(eval_w, nmd.JUDGE)
        rlhf = pool.tilted_logits(eval_w.ref_logp, pool.score(bt, eval_w.features), nmd.TAU)
        thetas, grads = jax.lax.map(
            lambda b: train_ipo(train_w, pref_train, steps=steps, beta=b), betas)
        self_play, _ = nmd.train_nash(train_w, pref_train, steps=steps, beta=0.0)
        logp = jax.vmap(lambda t: nmd.logits(t, eval_w))(thetas)
        sp = nmd.logits(self_play, eval_w)

        def win(a, b):
            return jnp.mean(pool.win_rate_N(a, b, judge_eval))

        delta, cross = nmd.cycle_terms(eval_w, held)
        return {"vs_online": jax.vmap(lambda l: win(l, logp[0]))(logp),
                "vs_rlhf": jax.vmap(lambda l: win(l, rlhf))(logp),
                "vs_ref": jax.vmap(lambda l: win(l, eval_w.ref_logp))(logp),
                "vs_self_play": jax.vmap(lambda l: win(l, sp))(logp),
                "kl": jax.vmap(lambda l: jnp.mean(pool.kl_N(l, eval_w.ref_logp)))(logp),
                "theta_gap": jnp.linalg.norm(thetas - thetas[0], axis=-1), "grad": grads,
                "cycle": {"logit": nmd.pm_logits(pm, *nmd._pair_features(eval_w, held)),
                          "delta": delta, "cross": cross}}

    return jax.jit(jax.vmap(one))


def run(mode: dict, out: str) -> dict:
    spec = {"mode": mode, "tilt": TILT, "keys": nmd.KEYS, "tau": nmd.TAU, "lr": LR,
            "arms": list(ARMS.values()), "judge": [nmd.JUDGE.strength, nmd.JUDGE.cycle],
            "cycle_pairs": "uniform"}

    def compute():
        harness.log(f"online IPO / IPO-MD, {mode['seeds']} seeds")
        res = nmd._listed(_run_fn(mode["steps"])(*nmd.seed_data(mode, TILT)))
        res["cycle_check"] = nmd.cycle_summary(res.pop("cycle"))
        return res

    return harness.cached(os.path.join(out, "runs", "ipo.json"), spec, compute)


def equivalence_rule(win_R, margin: float = MARGIN) -> stats.Judgement:
    """Head-to-head win rate - 1/2 within +-margin: TOST (stats.equivalent)."""
    return stats.equivalent(np.asarray(win_R, np.float64) - 0.5, margin=margin, alpha=ALPHA)


def claims(res: dict) -> dict:
    v = np.asarray(res["vs_online"], np.float64)
    n = v.shape[0]
    learned = all(res["cycle_check"]["learned"])
    main_j, planted_j = equivalence_rule(v[:, 1]), equivalence_rule(v[:, 2])
    sd = float(np.std(v[:, 1], ddof=1))
    margin_mde = stats.minimum_equivalence_margin(max(sd, 1e-12), n, alpha=ALPHA)
    out = {"precondition": learned}
    for key, j in (("claim", main_j), ("planted", planted_j)):
        out[key] = {"verdict": j.verdict, "estimate": j.estimate, "low": j.low, "high": j.high,
                    "p_tost": j.p_reproduce, "p_different": j.p_contradict}
    out["planted"]["passes"] = planted_j.verdict == stats.REPRODUCED
    out["power"] = (f"with {n} seeds and the observed sd {sd:.2e} of the head-to-head, TOST at "
                    f"level {ALPHA} shows equivalence with power 0.8 for margins of "
                    f"{margin_mde:.2e} or more (pre-registered margin {MARGIN})")
    if not learned:
        out["claim"]["verdict"] = "not reported (the preference model did not learn the cycle)"
    return out


def _cell(values, digits: int = 4) -> str:
    return harness.seeds_summary(values, digits=digits)


def markdown(res: dict, mode: dict, mode_name: str, cl: dict) -> str:
    cc = res["cycle_check"]
    cols = {k: np.asarray(res[k], np.float64) for k in
            ("vs_online", "vs_rlhf", "vs_ref", "vs_self_play", "kl", "theta_gap", "grad")}
    rows = [[name, _cell(cols["vs_online"][:, j]), _cell(cols["vs_self_play"][:, j]),
             _cell(cols["vs_rlhf"][:, j], 3), _cell(cols["vs_ref"][:, j], 3),
             _cell(cols["kl"][:, j], 3), _cell(cols["theta_gap"][:, j]),
             f"{cols['grad'][:, j].max():.1e}"] for j, name in enumerate(ARMS)]
    c, p = cl["claim"], cl["planted"]
    lines = [f"# Online IPO and IPO-MD on the pool world, Tier A ({mode_name} mode, "
             f"{mode['seeds']} seeds)", "",
             "Source: Calandriello et al., Human Alignment of Large Language Models through "
             "Online Preference Optimisation, arXiv 2403.08635.", "",
             f"Worlds, judge (σ({nmd.JUDGE.strength:g}·(g − g') + {nmd.JUDGE.cycle:g}·C)), "
             f"π_ref style tilt {TILT:g}, τ = {nmd.TAU}, fitted preference model and RLHF as in "
             f"experiments/nash_md/pool.py; {mode['steps']} Adam steps (lr {LR}) on the exact "
             "expected soft IPO loss; exact win rates under the judge on "
             f"{mode['eval_prompts']} held-out prompts. Mean ± 95% t interval over seeds.", "",
             f"**Precondition** (the preference model learned the judge's cycle, every seed): "
             f"{sum(cc['learned'])}/{len(cc['learned'])} seeds; cycle share "
             f"{_cell(cc['share'], 2)}; seed 0: {cc['describe']}.", "",
             harness.markdown_table(
                 ["policy", "win rate vs online IPO", "vs Nash-MD self-play", "vs RLHF",
                  "vs π_ref", "KL to π_ref", "|θ − θ_online IPO|", "|grad| at end"], rows), "",
             f"- **IPO-MD (β = {IPO_MD_BETA:g}) ≈ online IPO** (head-to-head win rate − ½ within "
             f"±{MARGIN}, TOST): {c['estimate']:+.5f} [{c['low']:+.5f}, {c['high']:+.5f}], "
             f"p_TOST = {c['p_tost']:.2g} → **{c['verdict']}**",
             f"- planted non-equivalent case, IPO-MD β = {PLANTED_BETA:g}: {p['estimate']:+.5f} "
             f"[{p['low']:+.5f}, {p['high']:+.5f}] → {p['verdict']} (the rule must not pass "
             f"here: {'it passed, so the rule is not trusted' if p['passes'] else 'it did not'})",
             f"- power: {cl['power']}", "",
             f"Compute time (compilation included): {res['seconds'] / 60:.1f} min."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = harness.parser(__doc__)
    args = p.parse_args(argv)
    mode_name, mode = harness.mode_settings(p, args, MODES, min_seeds=3,
                                            why="intervals over seeds")
    out = harness.experiment_output(args, mode_name, NAME)
    res = run(mode, out)
    cl = claims(res)
    md = markdown(res, mode, mode_name, cl)
    return harness.finish(out, {"mode": mode_name, "settings": mode, "margin": MARGIN,
                                "results": res, "claims": cl}, md,
                          publish_to=HERE if args.publish else "", results_md=RESULTS_MD)


if __name__ == "__main__":
    sys.exit(main())
