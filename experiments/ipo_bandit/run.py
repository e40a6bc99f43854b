"""IPO's bandit illustration (Azar et al., arXiv 2310.12036, §5): DPO and IPO on a tabular softmax policy.

    python experiments/ipo_bandit/run.py --quick              # 2,000 steps, 3 seeds
    python experiments/ipo_bandit/run.py                      # full protocol: 18,000 steps, 10 seeds
    python experiments/ipo_bandit/run.py --publish            # the same, then results.md, PNGs here
    python experiments/ipo_bandit/run.py --steps 5000 --seeds 4 --out /tmp/bandit

Outputs go to ~/align-runs/experiments/ipo_bandit ($ALIGN_RUNS replaces ~/align-runs) or --out.

Three actions, pi = softmax(theta), theta initialised at 0 (pi = mu, uniform), uniform reference mu,
Adam (lr 0.01), each step a minibatch of 9 pairs drawn with replacement from the dataset, loss =
the minibatch mean of the library's `dpo_loss` (beta = tau) or `ipo_loss`. All seeds and all tau of
a (dataset, method) run in one jitted `lax.scan` over steps, vmapped over tau and seeds.
Dimension letters: A actions, P preference pairs in a dataset, N pairs in a minibatch,
S steps, R seeds (runs), U tau values.
"""

from __future__ import annotations

import functools
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import stats

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import harness  # noqa: E402

from align.objectives import pairwise  # noqa: E402

NAME = "ipo_bandit"
HERE = os.path.dirname(os.path.abspath(__file__))

ACTIONS = ("a", "b", "c")
# (winner, loser) action indices. The paper's D3 as printed never mentions c, so nothing could
# move pi(c); D3' is the dataset its discussion describes (a and b tied, both beat c).
DATASETS = {
    "D1": ((0, 1), (1, 2), (0, 2)),
    "D3'": ((0, 1), (1, 0), (1, 2)),
}
TAUS = (0.1, 0.5, 1.0, 2.0, 10.0)
METHODS = ("dpo", "ipo")
STEPS = 18_000
SEEDS = 10
BATCH_SIZE = 9
LEARNING_RATE = 0.01
CONFIDENCE = 0.95
# Adam steps and seeds per mode; --steps / --seeds override them.
MODES = {"full": dict(steps=STEPS, seeds=SEEDS), "quick": dict(steps=2000, seeds=3),
         "tiny": dict(steps=200, seeds=2)}


def pair_losses(method, logratio_chosen_N, logratio_rejected_N, tau):
    """Per-pair loss of `method` from the library; DPO's beta is set to tau."""
    if method == "dpo":
        return pairwise.dpo_loss(logratio_chosen_N, logratio_rejected_N, beta=tau)
    if method == "ipo":
        return pairwise.ipo_loss(logratio_chosen_N, logratio_rejected_N, tau=tau)
    raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")


def minibatch_loss(theta_A, pairs_Nx2, tau, *, method):
    """Mean loss over a minibatch of (winner, loser) pairs for pi = softmax(theta)."""
    n_actions = theta_A.shape[-1]
    # The uniform reference cancels in r_w - r_l; kept so the log-ratios are the ones the
    # transformer binding feeds to the same functions.
    logratio_A = jax.nn.log_softmax(theta_A) + math.log(n_actions)
    losses_N = pair_losses(method, logratio_A[pairs_Nx2[:, 0]], logratio_A[pairs_Nx2[:, 1]], tau)
    return jnp.mean(losses_N)


def train_one(pairs_Px2, tau, rng, *, method, steps, batch_size=BATCH_SIZE, lr=LEARNING_RATE,
              n_actions=len(ACTIONS)):
    """Action probabilities after every step of one Adam run: probs_SxA."""
    optimizer = optax.adam(lr)
    theta_A = jnp.zeros((n_actions,), jnp.float32)
    grad_fn = jax.grad(functools.partial(minibatch_loss, method=method))

    def step(carry, t):
        theta_A, opt_state = carry
        idx_N = jax.random.randint(jax.random.fold_in(rng, t), (batch_size,), 0, pairs_Px2.shape[0])
        grads_A = grad_fn(theta_A, pairs_Px2[idx_N], tau)
        updates_A, opt_state = optimizer.update(grads_A, opt_state, theta_A)
        theta_A = optax.apply_updates(theta_A, updates_A)
        return (theta_A, opt_state), jax.nn.softmax(theta_A)

    _, probs_SxA = jax.lax.scan(step, (theta_A, optimizer.init(theta_A)), jnp.arange(steps))
    return probs_SxA


@functools.partial(jax.jit, static_argnames=("method", "steps", "batch_size", "lr"))
def _train_grid(pairs_Px2, taus_U, seeds_R, *, method, steps, batch_size, lr):
    run_fn = functools.partial(train_one, method=method, steps=steps, batch_size=batch_size, lr=lr)
    over_seeds_fn = jax.vmap(lambda tau, seed: run_fn(pairs_Px2, tau, jax.random.key(seed)),
                             in_axes=(None, 0))
    return jax.vmap(over_seeds_fn, in_axes=(0, None))(taus_U, seeds_R)


def train_grid(pairs, taus, seeds, *, method, steps=STEPS, batch_size=BATCH_SIZE, lr=LEARNING_RATE):
    """Probabilities over steps for every tau and seed: probs_UxRxSxA (numpy)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    pairs_Px2 = jnp.asarray(pairs, jnp.int32)
    taus_U = jnp.asarray(taus, jnp.float32)
    seeds_R = jnp.asarray(seeds, jnp.uint32)
    return np.asarray(_train_grid(pairs_Px2, taus_U, seeds_R, method=method, steps=steps,
                                  batch_size=batch_size, lr=lr))


def ipo_closed_form(pairs, tau, n_actions=len(ACTIONS)):
    """softmax(theta*), theta* = argmin sum_(w,l) (theta_w - theta_l - 1/(2 tau))^2 by least squares."""
    design_PxA = np.zeros((len(pairs), n_actions))
    for row, (winner, loser) in enumerate(pairs):
        design_PxA[row, winner] += 1.0
        design_PxA[row, loser] -= 1.0
    target_P = np.full(len(pairs), 1.0 / (2.0 * tau))
    # theta* is defined up to a constant (and along any action no pair mentions); lstsq returns
    # the minimum-norm solution, and softmax removes the constant.
    theta_A = np.linalg.lstsq(design_PxA, target_P, rcond=None)[0]
    return _softmax(theta_A)


def ipo_d1_analytic(tau):
    """IPO optimum on D1 from the normal equations: theta_a - theta_b = theta_b - theta_c = 1/(3 tau)."""
    return _softmax(np.array([2.0, 1.0, 0.0]) / (3.0 * tau))


def _softmax(theta_A):
    e_A = np.exp(theta_A - np.max(theta_A))
    return e_A / e_A.sum()


def mean_interval(values_RxA):
    """Mean over seeds and the half-width of its Student-t confidence interval."""
    # float64: the squares of DPO's vanishing probabilities underflow in float32.
    values_RxA = np.asarray(values_RxA, np.float64)
    n = values_RxA.shape[0]
    mean_A = values_RxA.mean(axis=0)
    if n < 2:
        return mean_A, np.full_like(mean_A, np.nan)
    t = stats.t.ppf(0.5 + CONFIDENCE / 2.0, df=n - 1)
    return mean_A, t * values_RxA.std(axis=0, ddof=1) / math.sqrt(n)


def run_all(*, steps=STEPS, seeds=SEEDS, taus=TAUS, datasets=DATASETS, batch_size=BATCH_SIZE,
            lr=LEARNING_RATE):
    """{(dataset, method): probs_UxRxSxA} over the whole grid."""
    seed_list = list(range(seeds))
    return {(name, method): train_grid(pairs, taus, seed_list, method=method, steps=steps,
                                       batch_size=batch_size, lr=lr)
            for name, pairs in datasets.items() for method in METHODS}


def _fmt(mean, half):
    if mean >= 1e-3:
        return f"{mean:.4f} ± {half:.4f}"
    return f"{mean:.1e} ± {half:.1e}"


def results_table(results, *, taus=TAUS, datasets=DATASETS, steps=STEPS):
    """Markdown: final pi per dataset, tau and method, with the IPO closed form beside IPO."""
    n_seeds = next(iter(results.values())).shape[1]
    head = ["dataset", "τ", "method"] + [f"π({a})" for a in ACTIONS]
    head += ["IPO closed form π*(a, b, c)", "max abs. diff. to π*"]
    lines = [
        f"Final action probabilities after {steps} steps: mean ± half-width of the "
        f"{CONFIDENCE:.0%} Student-t interval over {n_seeds} seeds (t with {n_seeds - 1} degrees "
        "of freedom). π* is the least-squares minimiser of the population IPO loss; "
        "the max abs. diff. to π* is over the three actions, for the seed mean.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for name, pairs in datasets.items():
        for u, tau in enumerate(taus):
            star_A = ipo_closed_form(pairs, tau)
            for method in METHODS:
                final_RxA = results[(name, method)][u, :, -1, :]
                mean_A, half_A = mean_interval(final_RxA)
                row = [name, f"{tau:g}", method.upper()]
                row += [_fmt(m, h) for m, h in zip(mean_A, half_A)]
                if method == "ipo":
                    row += [", ".join(f"{p:.4f}" for p in star_A),
                            f"{np.max(np.abs(mean_A - star_A)):.4f}"]
                else:
                    row += ["", ""]
                lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def trend_table(results, *, taus=TAUS, datasets=DATASETS, steps=STEPS):
    """Markdown: the smallest action probability at three points of training (does it settle?)."""
    checkpoints = sorted({max(1, steps // 9), max(1, steps // 3), steps})
    head = ["dataset", "τ", "method"] + [f"step {s}" for s in checkpoints]
    lines = [
        "Smallest action probability min_y π(y), mean over seeds, at three points of training: "
        "a value that keeps falling has not reached a fixed point.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for name in datasets:
        for u, tau in enumerate(taus):
            for method in METHODS:
                probs_RxSxA = np.asarray(results[(name, method)][u], np.float64)
                row = [name, f"{tau:g}", method.upper()]
                for s in checkpoints:
                    smallest = probs_RxSxA[:, s - 1, :].min(axis=-1).mean()
                    row.append(f"{smallest:.4f}" if smallest >= 1e-3 else f"{smallest:.1e}")
                lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def plot_dataset(results, name, path, *, taus=TAUS, datasets=DATASETS):
    """Probabilities over steps (seed mean, 95% band): rows DPO, IPO and both on a log scale."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = ("tab:blue", "tab:orange", "tab:green")
    fig, axes = plt.subplots(3, len(taus), figsize=(4 * len(taus), 10), squeeze=False, sharex=True)
    for u, tau in enumerate(taus):
        star_A = ipo_closed_form(datasets[name], tau)
        for row, method in enumerate(METHODS):
            probs_RxSxA = results[(name, method)][u]
            _draw(axes[row, u], probs_RxSxA, colors, linestyle="-")
            axes[row, u].set_title(f"{method.upper()}, τ = {tau:g}")
            axes[row, u].set_ylim(-0.02, 1.02)
            if method == "ipo":
                for k, p in enumerate(star_A):
                    axes[row, u].axhline(p, color=colors[k], linestyle=":", linewidth=1)
        log_ax = axes[2, u]
        for method, style in zip(METHODS, ("-", "--")):
            _draw(log_ax, results[(name, method)][u], colors, linestyle=style, band=False)
        log_ax.set_yscale("log")
        log_ax.set_ylim(1e-12, 2.0)
        log_ax.set_title(f"log scale, τ = {tau:g} (— DPO, -- IPO)")
        log_ax.set_xlabel("step")
    for row, label in enumerate(("π (DPO)", "π (IPO; dotted: closed form)", "π")):
        axes[row, 0].set_ylabel(label)
    handles = [plt.Line2D([], [], color=c, label=f"π({a})") for c, a in zip(colors, ACTIONS)]
    fig.legend(handles=handles, loc="upper right")
    fig.suptitle(f"{name}: action probabilities over steps (mean over seeds, 95% band)")
    fig.tight_layout(rect=(0, 0, 0.95, 0.97))
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _draw(ax, probs_RxSxA, colors, *, linestyle, band=True):
    n_steps = probs_RxSxA.shape[1]
    # ~400 points per curve are enough to see the dynamics and keep the PNGs small.
    keep_S = np.unique(np.linspace(0, n_steps - 1, min(n_steps, 400)).astype(int))
    mean_SxA, half_SxA = mean_interval(probs_RxSxA[:, keep_S])
    x_S = keep_S + 1
    for k, color in enumerate(colors):
        ax.plot(x_S, mean_SxA[:, k], color=color, linestyle=linestyle, linewidth=1.2)
        if band and np.all(np.isfinite(half_SxA[:, k])):
            ax.fill_between(x_S, mean_SxA[:, k] - half_SxA[:, k], mean_SxA[:, k] + half_SxA[:, k],
                            color=color, alpha=0.25, linewidth=0)


def plot_file_name(name):
    """File name of a dataset's figure: D3' -> d3prime.png."""
    return name.lower().replace("'", "prime") + ".png"


def settings(argv=None):
    """(args, mode name, steps, seeds, out) from the command line."""
    p = harness.parser(__doc__)
    p.add_argument("--steps", type=int, help="Adam steps per run (default: the mode's)")
    args = p.parse_args(argv)
    name = harness.mode(p, args)
    steps = MODES[name]["steps"] if args.steps is None else args.steps
    seeds = args.seeds or MODES[name]["seeds"]
    if steps < 1:
        p.error(f"--steps must be at least 1, got {steps}")
    if seeds < 1:
        p.error(f"--seeds must be at least 1, got {seeds}")
    return args, name, steps, seeds, harness.output_dir(args.out, NAME)


def main(argv=None) -> int:
    args, _, steps, seeds, out = settings(argv)
    os.makedirs(out, exist_ok=True)
    # The least-squares optimum must agree with the analytic one where we have it.
    for tau in TAUS:
        np.testing.assert_allclose(ipo_closed_form(DATASETS["D1"], tau), ipo_d1_analytic(tau),
                                   rtol=1e-9, atol=1e-12)
    results = run_all(steps=steps, seeds=seeds)
    table = results_table(results, steps=steps) + "\n" + trend_table(results, steps=steps)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(table)
    plots = [plot_file_name(name) for name in DATASETS]
    for name, plot in zip(DATASETS, plots):
        plot_dataset(results, name, os.path.join(out, plot))
    if args.publish:
        harness.publish(out, HERE, ["results.md", *plots])
    print(table)
    print(f"wrote results.md and {', '.join(plots)} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
