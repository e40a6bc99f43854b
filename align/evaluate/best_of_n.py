"""Best-of-n sampling: the completion a reward ranks first among n samples, its rewards and KL.

Dimension letters: B prompts, K samples per prompt (K ≥ n).

python -m align.evaluate.best_of_n --workdir RUN [--n 1,2,4,8,16] [--samples 16]
    [--scorer gold|reward_model --scorer_workdir RM_RUN] [--prompts 64] [--out FILE.json]
samples K completions of each held-out prompt from RUN's final policy, ranks them by the
scorer ("proxy") and reports, for each n ≤ K, the proxy and gold reward of best-of-n with 95%
intervals over prompts, beside the analytic KL(π_BoN ‖ π) = log n − (n−1)/n (Stiennon et al.,
arXiv 2009.01325), an upper bound when π puts visible mass on single completions.

Rewards of best-of-n use the unbiased estimator over all K samples (Nakano et al., arXiv
2112.09332, appendix): with the samples sorted by proxy reward, the i-th smallest (1-based)
is the best of a uniformly random n-subset with probability C(i−1, n−1)/C(K, n). This uses
every sample for every n instead of splitting K into K/n groups.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import jax
import numpy as np

from align import errors
from align import mesh as mesh_lib
from align import samples as policy_eval
from align.data import pipeline, sources
from align.models import specs
from align.objectives.online_math import best_of_n_kl
from align.train import runs
from align.train import scorers as scorers_lib
from align.train import state as state_lib


def best_of_n_weights(k: int, n: int) -> np.ndarray:
    """w_i = C(i−1, n−1)/C(k, n), i = 1..k: P(the i-th lowest of k is the best of an n-subset)."""
    if not (isinstance(n, int) and isinstance(k, int) and 1 <= n <= k):
        raise ValueError(f"best_of_n_weights: need integers 1 <= n <= k, got n={n!r}, k={k!r}")
    # Ratios of binomials in log space: exact enough for k in the thousands.
    log_total = math.lgamma(k + 1) - math.lgamma(n + 1) - math.lgamma(k - n + 1)
    w = np.zeros(k)
    for i in range(n, k + 1):
        w[i - 1] = math.exp(math.lgamma(i) - math.lgamma(n) - math.lgamma(i - n + 1) - log_total)
    return w


def best_of_n_values(proxy_BxK, value_BxK, n: int) -> np.ndarray:
    """Per prompt, E[value of the proxy's best among n of the K samples] (unbiased), [B].

    Ties in the proxy are broken by sample order; pass value = proxy for the proxy's own curve.
    """
    proxy_BxK = np.asarray(proxy_BxK, np.float64)
    value_BxK = np.asarray(value_BxK, np.float64)
    if proxy_BxK.ndim != 2 or proxy_BxK.shape != value_BxK.shape:
        raise ValueError(f"best_of_n_values: proxy and value must be [B, K] of one shape, got "
                         f"{proxy_BxK.shape} and {value_BxK.shape}")
    order_BxK = np.argsort(proxy_BxK, axis=1, kind="stable")
    sorted_BxK = np.take_along_axis(value_BxK, order_BxK, axis=1)
    return sorted_BxK @ best_of_n_weights(proxy_BxK.shape[1], n)


def table(proxy_BxK, gold_BxK, ns) -> list[dict]:
    """One row per n: analytic KL, proxy and gold reward of best-of-n with 95% half-widths."""
    rows = []
    for n in ns:
        row = {"n": int(n), "kl": best_of_n_kl(int(n))}
        for name, values in (("proxy", proxy_BxK), ("gold", gold_BxK)):
            if values is None:
                continue
            mean, se = policy_eval.mean_and_se(best_of_n_values(proxy_BxK, values, int(n)))
            row[name], row[f"{name}_ci95"] = mean, 1.96 * se
        rows.append(row)
    return rows


def markdown(rows) -> str:
    cols = [c for c in ("proxy", "gold") if c in rows[0]]
    head = "| n | KL (nats) | √KL | " + " | ".join(f"{c} reward" for c in cols) + " |"
    lines = [head, "|" + "---|" * (3 + len(cols))]
    for r in rows:
        cells = [f"{r[c]:+.3f} ± {r[c + '_ci95']:.3f}" for c in cols]
        lines.append(f"| {r['n']} | {r['kl']:.3f} | {math.sqrt(r['kl']):.3f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def sample_and_score(workdir: str, *, samples: int, num_prompts: int, scorer: str = "gold",
                     scorer_workdir: str = "", seed: int = 0, devices=None):
    """K samples of `num_prompts` held-out prompts from a finished run's policy, scored.

    Returns (proxy_BxK, gold_BxK or None, prompts, completions_BxK).
    """
    workdir = os.path.abspath(workdir)
    run = runs.read_run(workdir)
    if run is None or run.latest_step is None:
        raise FileNotFoundError(f"{workdir} holds no run with a checkpoint")
    cfg = run.cfg
    mesh = mesh_lib.make_mesh(cfg.mesh, devices)
    rules = mesh_lib.logical_rules(cfg.mesh.rules)
    data = sources.prepare(cfg, workdir, kinds=("prompts",), data_dir=run.data_dir,
                           tokenizer_path=run.tokenizer_path)
    spec, params, _ = runs.final_params(run, mesh, rules)
    if spec.language_model is None:
        raise errors.InputError(f"{workdir} trained a {spec.name!r} model, not a policy to sample from")
    lm_def = state_lib.describe(specs.language_model().make_fn(run.model_cfg))
    lm = spec.language_model(params)
    tok = data.tokenizer
    pad_id = tok.pad_id if cfg.data.pad_id < 0 else int(cfg.data.pad_id)
    prompts = next(iter(pipeline.batches(
        "prompts", data.prompts["test"], tok, batch_size=num_prompts,
        max_prompt_len=cfg.data.max_prompt_len, seed=seed, shuffle=False, num_epochs=1,
        pad_id=pad_id, process_index=0, process_count=1)))
    rows = {k: np.repeat(np.asarray(v), samples, axis=0) for k, v in prompts.items()}
    rows["example_id"] = (rows["example_id"] * samples
                          + np.tile(np.arange(samples), num_prompts)).astype(np.int32)
    e = cfg.eval

    def fn(p, b, key):
        return policy_eval.sample_fn(state_lib.bind(lm_def, p), b, key,
                                     max_new_tokens=e.max_new_tokens, temperature=e.temperature,
                                     top_k=e.top_k, eos_id=tok.eos_id)

    out = mesh_lib.to_host(jax.jit(mesh_lib.traced_under(fn, mesh, rules))(
        lm, mesh_lib.put_global(rows, mesh, rules), jax.random.key(seed)))
    texts = policy_eval.decode(tok, out)
    prompt_texts = [str(t) for t in rows["prompt_text"]]
    run_dep = runs.require_finished(scorer_workdir, workdir) if scorer != "gold" else None
    proxy_scorer = scorers_lib.make(scorer, world=data.world, run=run_dep, mesh=mesh, rules=rules)
    tokens, input_mask, _ = policy_eval.join(rows["prompt_tokens"], rows["prompt_mask"],
                                             out["tokens"], out["mask"])
    proxy = np.asarray(proxy_scorer.rewards(prompt_texts, texts, tokens_MxL=tokens,
                                            input_mask_MxL=input_mask))
    gold = (np.asarray(data.world.gold_rewards(prompt_texts, texts))
            if data.world is not None else None)
    shape = (num_prompts, samples)
    return (proxy.reshape(shape), None if gold is None else gold.reshape(shape),
            [str(t) for t in prompts["prompt_text"]], np.asarray(texts, object).reshape(shape))


def main(argv=None, prog: str = "python -m align.evaluate.best_of_n") -> int:
    parser = argparse.ArgumentParser(prog=prog,
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="a finished policy run")
    parser.add_argument("--n", default="1,2,4,8,16", help="comma-separated n values")
    parser.add_argument("--samples", type=int, default=0, help="K samples per prompt "
                        "(default: the largest n)")
    parser.add_argument("--prompts", type=int, default=64, help="held-out prompts")
    parser.add_argument("--scorer", default="gold", choices=("gold", "reward_model"))
    parser.add_argument("--scorer_workdir", default="", help="the reward model run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="", help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    try:
        ns = sorted({int(x) for x in args.n.split(",") if x.strip()})
    except ValueError:
        parser.error(f"--n must be comma-separated integers, got {args.n!r}")
    k = args.samples or max(ns)
    if not ns or ns[0] < 1 or ns[-1] > k:
        parser.error(f"--n values must lie in 1..{k} (--samples)")
    try:
        proxy, gold, _, _ = sample_and_score(
            args.workdir, samples=k, num_prompts=args.prompts, scorer=args.scorer,
            scorer_workdir=args.scorer_workdir, seed=args.seed)
    except errors.INPUT_ERRORS as e:  # a bug (anything else) keeps its traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = table(proxy, gold, ns)
    print(markdown(rows))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"workdir": args.workdir, "samples": k, "prompts": args.prompts,
                       "scorer": args.scorer, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
