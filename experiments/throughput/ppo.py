"""One PPO iteration: sample -> prepare -> epochs x minibatch updates, timed per phase, with MFU.

    python experiments/throughput/ppo.py                       # 1m, 10m, 50m on this machine
    python experiments/throughput/ppo.py --sizes 10m --prompts 64 --new_tokens 128 --epochs 4

The pieces are the trainer's own (`setup.make_steps`): the jitted KV-cache sampler on the
policy (PolicyWithValue, a value head on the policy trunk by default), `step.prepare_rollout`
(old log-probs and values, the reference's log-probs, token rewards, GAE, whitening) and the
donated train step on minibatches gathered on the devices. Prompts are random tokens and the score is a random number per completion (a
gold or reward-model score is outside the timed compute). eos_id = −1 is never drawn, so every
completion has --new_tokens tokens.

FLOPs: sampling counts 2 x N_params per generated token (as sampler.py); prepare counts two
forward passes (policy with value, reference) over every prompt + completion token, a third of
`flops_per_token` each; each update counts the full `flops_per_token`. MFU is against the matmul
peak run.py measures here.
Dimension letters: B prompts, P prompt tokens, N new tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from align import config as config_lib
from align import mesh as mesh_lib
from align import sampling
from align import samples as policy_eval
from align.models import heads, transformer
from align.train import online as online_lib
from align.train import state as state_lib


# run.py beside this script: the sizes, the matmul peak, peak memory, shared table helpers.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as _RUN  # noqa: E402
SIZES = _RUN.SIZES


def _timed(fn):
    t = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - t


def bench(size: str, *, prompts: int, prompt_len: int, new_tokens: int, epochs: int,
          minibatches: int, critic: str, dtype: str, iterations: int, peak: float) -> dict:
    vocab = SIZES[size][-1]
    seq = prompt_len + new_tokens
    obj_cfg = config_lib.objective_config("ppo", critic=critic, kl_target=0.0)
    b = _RUN.build(size, obj_cfg, seq=seq, dtype=dtype)
    cfg, mesh, rules, steps = b.model_cfg, b.mesh, b.rules, b.steps
    model_def = b.trained.model_def
    state = b.trained.spec.init_fn()
    # The reference: the language model inside an independently initialised policy.
    frozen = {"reference": b.trained.objective.model.language_model(
        b.trained.spec.init_fn()["params"])}
    rng = np.random.default_rng(0)
    prompt_batch = {"prompt_tokens": rng.integers(4, vocab, (prompts, prompt_len)).astype(np.int32),
                    "prompt_mask": np.ones((prompts, prompt_len), np.int32),
                    "example_id": np.arange(prompts, dtype=np.int32)}
    dprompts = mesh_lib.put_global(prompt_batch, mesh, rules)

    def sample_fn(params, batch, key):
        out = sampling.sample(sampling.model_policy(state_lib.bind(model_def, params)),
                              batch["prompt_tokens"], batch["prompt_mask"],
                              example_ids_B=batch["example_id"], rng=key,
                              max_new_tokens=new_tokens, eos_id=-1)
        tokens, input_mask, loss_mask = policy_eval.join(
            batch["prompt_tokens"], batch["prompt_mask"], out["tokens_BxN"], out["mask_BxN"])
        return {"tokens": tokens, "input_mask": input_mask, "loss_mask": loss_mask,
                "score": jax.random.normal(key, (tokens.shape[0],)),
                "finished": out["finished_B"].astype(jnp.float32)}

    sample = jax.jit(mesh_lib.traced_under(sample_fn, mesh, rules))
    phases = {"sample": [], "prepare": [], "update": []}
    rows = prompts
    for it in range(iterations + 1):  # the first iteration compiles
        key = jax.random.key(it)
        rollout, t_sample = _timed(lambda: sample(state["params"], dprompts, key))
        (prepared, obj_state, _), t_prepare = _timed(lambda: steps.prepare_rollout(
            state["params"], state["objective"], rollout, frozen, key))
        # As the trainer does: the rollout stays on the devices; minibatches by a jitted gather.
        t_update = 0.0
        for _ in range(epochs):
            for idx in online_lib.minibatch_rows(rows, minibatches):
                (state, metrics), t = _timed(
                    lambda: steps.train(state, steps.gather(prepared, idx), frozen))
                t_update += t
        if it:
            for name, t in (("sample", t_sample), ("prepare", t_prepare), ("update", t_update)):
                phases[name].append(t)
    times = {k: float(np.median(v)) for k, v in phases.items()}
    total = sum(times.values())
    n_params = transformer.num_params(cfg)
    fwd = transformer.flops_per_token(cfg, seq) / 3
    value_trunk = 2 if critic == "separate" else 1  # a separate critic runs its own trunk
    flops = {
        "sample": 2 * n_params * prompts * new_tokens,
        "prepare": (1 + value_trunk) * fwd * prompts * seq,
        "update": epochs * 3 * fwd * value_trunk * prompts * seq,
    }
    mem, mem_kind = _RUN.peak_memory_bytes()
    row = {"size": size, "params": n_params, "critic": critic, "prompts": prompts, "peak": peak,
           "prompt_len": prompt_len, "new_tokens": new_tokens, "epochs": epochs,
           "minibatches": minibatches, "dtype": dtype, "iteration_s": total,
           "peak_memory_gib": mem / 2 ** 30, "memory_kind": mem_kind,
           "iteration_mfu": sum(flops.values()) / total / peak,
           "completions_per_s": prompts / total, "loss": float(metrics["loss"])}
    for name in phases:
        row[f"{name}_s"] = times[name]
        row[f"{name}_mfu"] = flops[name] / times[name] / peak
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="1m,10m,50m")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--prompt_len", type=int, default=16)
    p.add_argument("--new_tokens", type=int, default=128)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--minibatches", type=int, default=2)
    p.add_argument("--critic", default="head", choices=heads.CRITICS)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--iterations", type=int, default=2, help="timed iterations after the first")
    p.add_argument("--out", default="", help="also write the results as JSON here")
    p.add_argument("--in_process", action="store_true",
                   help="measure every size in this process (default: one subprocess per size, "
                        "so each size's peak memory is its own)")
    p.add_argument("--json_only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    sizes = _RUN.parse_sizes(p, args.sizes)
    device, peak = _RUN.start(args.dtype, quiet=args.json_only)
    settings = ("prompts", "prompt_len", "new_tokens", "epochs", "minibatches", "critic",
                "dtype", "iterations")
    rows = []
    for s in sizes:
        if args.in_process or len(sizes) == 1:
            r = bench(s, peak=peak, **{k: getattr(args, k) for k in settings})
        else:
            r = _RUN.in_subprocess(__file__, ["--sizes", s] + [
                f"--{k}={getattr(args, k)}" for k in settings])
            for phase in ("sample", "prepare", "update", "iteration"):
                # Against this process's peak, so every row shares one denominator.
                r[f"{phase}_mfu"] *= r["peak"] / peak
        rows.append(r)
        if args.json_only:
            print(json.dumps(r), flush=True)
            return 0
        print(json.dumps(r), file=sys.stderr, flush=True)
    phase = lambda r, n: f"{r[n + '_s']:.3f}, {100 * r[n + '_mfu']:.1f}%"
    print(_RUN.markdown_table(
        ["size", "params", "critic", "prompts x (prompt + new)", "epochs x minibatches",
         "iteration (s)", "sample (s, MFU)", "prepare (s, MFU)", "update (s, MFU)",
         "iteration MFU", "peak memory"],
        [[r["size"], f"{r['params'] / 1e6:.1f}M", r["critic"],
          f"{r['prompts']}x({r['prompt_len']}+{r['new_tokens']})",
          f"{r['epochs']}x{r['minibatches']}", f"{r['iteration_s']:.3f}", phase(r, "sample"),
          phase(r, "prepare"), phase(r, "update"), f"{100 * r['iteration_mfu']:.1f}%",
          f"{r['peak_memory_gib']:.2f} GiB ({r['memory_kind']})"] for r in rows]))
    if args.out:
        _RUN.save_results(args.out, device, peak, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
