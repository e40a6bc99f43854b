"""Population training against separate runs: P members in one jit versus P runs of their own.

    python experiments/throughput/population.py                  # P = 1, 16, 64 tiny DPO members
    python experiments/throughput/population.py --sizes 1,16 --steps 10 --data split
    python experiments/throughput/population.py --quick          # P = 1, 4; a smoke run

On a CPU every row runs on one host device per core (--host_devices, default all cores): a
single run is then data-parallel over the cores, and a population splits its members over
them (population sharding), so neither side leaves a core idle (XLA:CPU runs one device's
element-wise work on one thread).

Every row is the real trainer (`loop.build`, its data iterator, `loop.advance` and
`evaluation.evaluate`) on the embedded synthetic task, a DPO run from a random start with each
member's initial policy as its reference, in its own process (so each row's peak memory is its
own). A population's step trains all P members and its evaluation samples from all of them, so
the comparison is

    step speedup   = P · t_step(1) / t_step(P)
    eval speedup   = P · t_eval(1) / t_eval(P)
    run speedup    = P · T(1) / T(P),   T = t_setup + S · t_step + E · t_eval

with S = --run_steps and E = S / train.eval_every + 1 evaluations (the run the comparison is
for), t_setup the time from `build` to the end of the first (compiling) step and the first
(compiling) evaluation. P separate runs pay the setup P times.
MFU = model FLOPs of all members per second / the matmul peak measured in the row's process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import jax
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

import run as throughput  # noqa: E402  (experiments/throughput/run.py)
from align import config as config_lib  # noqa: E402
from align.models import transformer  # noqa: E402
from align.train import evaluation  # noqa: E402
from align.train import loop  # noqa: E402

CONFIG = os.path.join(ROOT, "configs", "preference.py")
# DPO from a random initialisation: no SFT run to start from, each member its own reference.
NO_START = ["--config.init.workdir=", "--config.init.config="]


def overrides(*, members: int, size: str, batch: int, data: str, data_dir: str) -> list[str]:
    return [*NO_START, f"--config.data.data_dir={data_dir}",
            "--config.data.num_train=4096", "--config.data.num_test=256",
            "--config.data.num_prompts=256", "--config.eval.num_batches=1",
            f"--config.data.batch_size={batch}",
            "--config.train.progress=False", "--config.train.steps=100000",
            f"--config.population.size={members}", f"--config.population.data={data}"]


def bench(*, members: int, size: str, batch: int, data: str, steps: int, peak: float) -> dict:
    """Times the trainer's step for a population of `members` (1: a single run)."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config_lib.resolve(
            f"{CONFIG}:objective=dpo,size={size}",
            overrides(members=members, size=size, batch=batch, data=data,
                      data_dir=os.path.join(tmp, "data")))
        t0 = time.perf_counter()
        setup = loop.build(cfg, os.path.join(tmp, "run"))
        it = loop.train_iterator(setup)
        state = loop.initial_state(setup)
        state, metrics, _ = loop.advance(setup, state, next(it), 0)
        jax.block_until_ready(metrics)
        setup_s = time.perf_counter() - t0
        times, tokens = [], 0
        for step in range(1, steps + 1):
            batch_ = next(it)
            t = time.perf_counter()
            state, metrics, n_tokens = loop.advance(setup, state, batch_, step)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - t)
            tokens += n_tokens
        loss = float(np.mean(jax.device_get(metrics["loss"])))
        t = time.perf_counter()
        evaluation.evaluate(setup, state, steps)  # compiles the sampler and the eval step
        setup_s += time.perf_counter() - t
        t = time.perf_counter()
        evaluation.evaluate(setup, state, steps)
        eval_s = time.perf_counter() - t
        model_cfg, eval_every = setup.model_cfg, int(cfg.train.eval_every)
        seq = int(next(it)["chosen_tokens"].shape[-1])
        setup.close()
    step_s = float(np.median(times))
    tokens_per_s = tokens / float(np.sum(times))
    # Forward + backward of the policy, plus the reference's forward (a third as much).
    flops = transformer.flops_per_token(model_cfg, seq) * 4 / 3
    mem, mem_kind = throughput.peak_memory_bytes()
    return {"members": members, "size": size, "params": transformer.num_params(model_cfg),
            "batch": batch, "seq": seq, "data": data, "setup_s": setup_s, "step_s": step_s,
            "eval_s": eval_s, "eval_every": eval_every,
            "tokens_per_s": tokens_per_s, "mfu": flops * tokens_per_s / peak,
            "peak_memory_gib": mem / 2 ** 30, "memory_kind": mem_kind, "loss": loss}


def run_seconds(row: dict, run_steps: int) -> float:
    """T = t_setup + S · t_step + E · t_eval for a run of S steps."""
    evals = run_steps // row["eval_every"] + 1 if row["eval_every"] else 1
    return row["setup_s"] + run_steps * row["step_s"] + evals * row["eval_s"]


def speedups(rows: list[dict], run_steps: int) -> list[dict]:
    """Each row's step, evaluation and whole-run speedup against as many single runs (the
    P = 1 row)."""
    single = next(r for r in rows if r["members"] == 1)
    return [{**r, "step_speedup": r["members"] * single["step_s"] / r["step_s"],
             "eval_speedup": r["members"] * single["eval_s"] / r["eval_s"],
             "run_speedup": r["members"] * run_seconds(single, run_steps)
             / run_seconds(r, run_steps)} for r in rows]


def table(rows: list[dict], run_steps: int) -> str:
    return throughput.markdown_table(
        ["members P", "data", "setup + compiles (s)", "step (s)", "tokens/s (all members)",
         "MFU", "evaluation (s)", "step speedup", "eval speedup",
         f"{run_steps}-step run speedup", "peak memory"],
        [[str(r["members"]), r["data"], f"{r['setup_s']:.1f}", f"{r['step_s']:.4f}",
          f"{r['tokens_per_s']:,.0f}", f"{100 * r['mfu']:.1f}%", f"{r['eval_s']:.2f}",
          f"{r['step_speedup']:.2f}x", f"{r['eval_speedup']:.1f}x", f"{r['run_speedup']:.1f}x",
          f"{r['peak_memory_gib']:.2f} GiB ({r['memory_kind']})"] for r in rows])


def parse_sizes(parser: argparse.ArgumentParser, text: str) -> list[int]:
    try:
        sizes = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        parser.error(f"--sizes must be comma-separated integers, got {text!r}")
    if not sizes or sizes[0] < 1:
        parser.error(f"--sizes must be positive integers, got {text!r}")
    return sizes if sizes[0] == 1 else [1, *sizes]  # the single run is the baseline


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="1,16,64", help="population sizes P (1 is always added)")
    p.add_argument("--model", default="tiny", help="configs/common.py model size")
    p.add_argument("--batch", type=int, default=16, help="pairs per member per step")
    p.add_argument("--data", default="shared", choices=("shared", "split"),
                   help="population.data: one batch for all members, or one per member")
    p.add_argument("--steps", type=int, default=20, help="timed steps after the compiling one")
    p.add_argument("--run_steps", type=int, default=600,
                   help="run length S of the whole-run speedup")
    p.add_argument("--out", default="", help="also write the rows as JSON here")
    p.add_argument("--quick", action="store_true", help="a smoke run: P = 1 and 4, 3 steps")
    p.add_argument("--host_devices", type=int, default=os.cpu_count() or 1,
                   help="CPU devices per row (XLA's host platform device count)")
    p.add_argument("--json_only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not args.json_only:  # the rows' processes start JAX with this many host devices
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = " ".join(
            [f for f in flags.split() if "host_platform_device_count" not in f]
            + [f"--xla_force_host_platform_device_count={args.host_devices}"])
    if args.quick:
        args.sizes, args.steps = "1,4", min(args.steps, 3)
    sizes = parse_sizes(p, args.sizes)
    device, peak = throughput.start("float32", quiet=args.json_only)
    if args.json_only:
        print(json.dumps(bench(members=sizes[-1], size=args.model, batch=args.batch,
                               data=args.data, steps=args.steps, peak=peak)), flush=True)
        return 0
    rows = []
    for members in sizes:
        r = throughput.in_subprocess(__file__, [
            f"--sizes={members}", f"--model={args.model}", f"--batch={args.batch}",
            f"--data={args.data}", f"--steps={args.steps}"])
        rows.append(r)
        print(json.dumps(r), file=sys.stderr, flush=True)
    rows = speedups(rows, args.run_steps)
    print(f"{jax.device_count()} x {jax.devices()[0].device_kind} in each row's process; "
          f"DPO, model size {args.model!r}, {args.batch} pairs per member per step, "
          f"population.data={args.data}, median of {args.steps} steps; speedups against P "
          f"separate runs; a run of {args.run_steps} steps evaluates every "
          f"{rows[0]['eval_every']} steps")
    print(table(rows, args.run_steps))
    if args.out:
        throughput.save_results(args.out, device, peak, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
