"""Train-step throughput: tokens/s, model FLOPs utilisation and peak memory for three model sizes.

    python experiments/throughput/run.py                     # ~1M, ~10M, ~50M on this machine
    python experiments/throughput/run.py --sizes 10m --batch 16 --seq 512 --dtype bfloat16

MFU = (training FLOPs per token x tokens per second) / the matmul peak measured here, in the
same dtype, with the same jit (so it is relative to what this machine's XLA can reach, not a
datasheet). The step is the real SFT train step (AdamW, clipping, donated state).
Dimension letters: B batch, T tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from align import config as config_lib
from align import mesh as mesh_lib
from align.models import transformer
from align.train import runs
from align.train import setup as setup_lib

# name -> (d_model, n_layers, n_heads, n_kv_heads, d_ff, vocab)
SIZES = {
    "1m": (128, 4, 4, 2, 384, 4096),
    "10m": (320, 8, 8, 4, 896, 8192),
    "50m": (512, 12, 8, 4, 1536, 32000),
    # The side-by-side model (side_by_side.py): LLaMA-style, no GQA, about 30M parameters.
    "30m": (512, 8, 8, 8, 1344, 8000),
    # For an accelerator (device_check.sh): LLaMA-style, 1.1B parameters (TinyLlama's shape).
    "1b": (2048, 22, 32, 4, 5632, 32000),
}


def matmul_peak(dtype: str, n: int = 2048, repeats: int = 10) -> float:
    """Best FLOP/s of an n x n x n matmul on the default device."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dtype)
    f = jax.jit(lambda x, y: x @ y)
    f(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def peak_memory_bytes() -> tuple[int, str]:
    """Device peak if the backend reports it, else this process's peak resident memory."""
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "device peak"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process peak RSS"


def _batch(objective: str, batch: int, seq: int, vocab: int) -> dict[str, np.ndarray]:
    """Random tokens, all real: SFT rows, or DPO pairs (each pair is two sequences)."""
    rng = np.random.default_rng(0)
    row = lambda: {"tokens": rng.integers(4, vocab, (batch, seq)).astype(np.int32),
                   "input_mask": np.ones((batch, seq), np.int32),
                   "loss_mask": np.ones((batch, seq), np.int32)}
    if objective == "sft":
        return row()
    return {f"{side}_{k}": v for side in ("chosen", "rejected") for k, v in row().items()}


def parse_sizes(parser: argparse.ArgumentParser, text: str) -> list[str]:
    """--sizes as a list of known size names (an unknown one is a usage error)."""
    sizes = [s.strip() for s in text.split(",") if s.strip()]
    for s in sizes:
        if s not in SIZES:
            parser.error(f"unknown size {s!r}; valid: {', '.join(SIZES)}")
    return sizes


def start(dtype: str, *, quiet: bool = False):
    """(device, measured matmul peak), with the line that says both."""
    device = jax.devices()[0]
    peak = matmul_peak(dtype)
    if not quiet:
        print(f"device: {device.device_kind} x{jax.device_count()} ({jax.default_backend()}), "
              f"measured {dtype} matmul peak {peak / 1e12:.3f} TFLOP/s", flush=True)
    return device, peak


def in_subprocess(script: str, argv: list[str]) -> dict:
    """One measurement row from `script --json_only ARGV` run in its own process (so its peak
    memory is its own)."""
    cmd = [sys.executable, os.path.abspath(script), "--json_only", *argv]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def markdown_table(header: list[str], lines: list[list[str]]) -> str:
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(rows + ["| " + " | ".join(cells) + " |" for cells in lines])


def save_results(path: str, device, peak: float, rows: list[dict]) -> None:
    """The measured rows as JSON, with the device and its measured matmul peak."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"device": device.device_kind, "peak_flops": peak, "rows": rows}, f, indent=1)


class Built(NamedTuple):
    cfg: Any
    model_cfg: transformer.TransformerConfig
    mesh: Any
    rules: Any
    trained: runs.Trained
    lm_def: Any
    steps: setup_lib.Steps


def build(size: str, objective_cfg, *, seq: int, dtype: str, remat: str = "none",
          chunk_size: int = 0, accum: int = 1, scan_layers: bool = False,
          attention: str = "einsum") -> Built:
    """A size of SIZES trained by an objective, on a data-parallel mesh of every device: the
    trainer's own state spec and jitted steps (`runs.trained`, `setup.make_steps`), without
    data (the benchmarks feed random tokens)."""
    d, n_layers, n_heads, n_kv, d_ff, vocab = SIZES[size]
    cfg = config_lib.default_config()
    cfg.model.update(vocab_size=vocab, d_model=d, n_layers=n_layers, n_heads=n_heads,
                     n_kv_heads=n_kv, d_ff=d_ff, max_len=seq, dtype=dtype, remat=remat,
                     scan_layers=scan_layers, attention=attention)
    cfg.objective = objective_cfg
    cfg.logprobs.chunk_size = chunk_size
    cfg.optim.accum_steps = accum
    cfg.train.steps = 1000
    model_cfg = transformer.transformer_config(dict(cfg.model))
    mesh = mesh_lib.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    rules = mesh_lib.logical_rules(cfg.mesh.rules)
    trained = runs.trained(cfg, model_cfg, mesh, rules)
    lm_def = setup_lib.language_model_def(trained, model_cfg)
    steps = setup_lib.make_steps(
        cfg, trained, lm_def, mesh, rules, in_step=trained.objective.uses_reference, eos_id=-1,
        reference_sh=setup_lib.reference_shardings(trained, lm_def, mesh, rules))
    return Built(cfg, model_cfg, mesh, rules, trained, lm_def, steps)


def bench(size: str, *, batch: int, seq: int, dtype: str, remat: str, steps: int,
          chunk_size: int, peak: float, objective: str = "sft", scan_layers: bool = False,
          attention: str = "einsum") -> dict:
    """Times one objective's train step. DPO: `batch` pairs, policy and in-step reference.

    Tokens counted are all sequence tokens processed (both responses of a pair). FLOPs per
    token: the training FLOPs (forward + backward) plus, for DPO, the reference's forward pass
    (a third of them).
    """
    vocab = SIZES[size][-1]
    b = build(size, config_lib.objective_config(objective), seq=seq, dtype=dtype, remat=remat,
              chunk_size=chunk_size, scan_layers=scan_layers, attention=attention)
    cfg, obj, mesh, rules = b.model_cfg, b.trained.objective, b.mesh, b.rules
    state = b.trained.spec.init_fn()
    # The reference: a second, independent copy (the state is donated to the step).
    frozen = ({"reference": b.trained.spec.init_fn()["params"]} if obj.uses_reference else {})
    gbatch = mesh_lib.to_global(_batch(objective, batch, seq, vocab), mesh, rules)
    step_fn = b.steps.train
    t0 = time.perf_counter()
    state, metrics = step_fn(state, gbatch, frozen)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        state, metrics = step_fn(state, gbatch, frozen)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t)
    step_s = float(np.median(times))
    sequences = batch * (1 if objective == "sft" else 2)
    tokens_per_s = sequences * seq / step_s
    flops = transformer.flops_per_token(cfg, seq) * (4 / 3 if obj.uses_reference else 1)
    mem, mem_kind = peak_memory_bytes()
    return {
        "objective": objective, "size": size, "params": transformer.num_params(cfg),
        "batch": batch, "seq": seq,
        "dtype": dtype, "remat": remat, "step_s": step_s, "compile_s": compile_s,
        "tokens_per_s": tokens_per_s, "model_tflops_per_s": flops * tokens_per_s / 1e12,
        "mfu": flops * tokens_per_s / peak, "peak_memory_gib": mem / 2 ** 30,
        "memory_kind": mem_kind, "loss": float(metrics["loss"]),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="1m,10m,50m")
    p.add_argument("--objective", default="sft", choices=("sft", "dpo"),
                   help="dpo: --batch pairs, policy + in-step reference")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--remat", default="none", choices=("none", "full", "dots"))
    p.add_argument("--steps", type=int, default=5, help="timed steps after the compiling one")
    p.add_argument("--chunk_size", type=int, default=0, help="log-prob chunk over tokens")
    p.add_argument("--scan_layers", action="store_true",
                   help="layers under a scan (default: unrolled, the trainer's default)")
    p.add_argument("--attention", default="einsum", choices=("einsum", "dot_product_attention"),
                   help="model.attention: jax.nn.dot_product_attention may use cuDNN on GPU")
    p.add_argument("--out", default="", help="also write the results as JSON here")
    p.add_argument("--in_process", action="store_true",
                   help="measure all sizes in this process (default: one subprocess per size, so "
                        "each size's peak memory is its own)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: the smallest size, 2 timed steps")
    p.add_argument("--json_only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.steps = args.sizes.split(",")[0], min(args.steps, 2)
    sizes = parse_sizes(p, args.sizes)
    device, peak = start(args.dtype, quiet=args.json_only)
    rows = []
    for s in sizes:
        if args.in_process or len(sizes) == 1:
            r = bench(s, batch=args.batch, seq=args.seq, dtype=args.dtype, remat=args.remat,
                      steps=args.steps, chunk_size=args.chunk_size, peak=peak,
                      objective=args.objective, scan_layers=args.scan_layers,
                      attention=args.attention)
        else:
            r = in_subprocess(__file__, ["--sizes", s, "--in_process"] + [
                f"--{k}={getattr(args, k)}" for k in (
                    "batch", "seq", "dtype", "remat", "steps", "objective", "chunk_size",
                    "attention")]
                + (["--scan_layers"] if args.scan_layers else []))
            r["mfu"] = r["model_tflops_per_s"] * 1e12 / peak  # against this process's peak
        rows.append(r)
        if args.json_only:
            print(json.dumps(r), flush=True)
            return 0
        print(json.dumps(r), file=sys.stderr, flush=True)
    print(markdown_table(
        ["objective", "size", "params", "batch x seq", "step (s)", "tokens/s", "model TFLOP/s",
         "MFU", "peak memory"],
        [[r["objective"], r["size"], f"{r['params'] / 1e6:.1f}M", f"{r['batch']}x{r['seq']}",
          f"{r['step_s']:.3f}", f"{r['tokens_per_s']:,.0f}", f"{r['model_tflops_per_s']:.3f}",
          f"{100 * r['mfu']:.1f}%", f"{r['peak_memory_gib']:.2f} GiB ({r['memory_kind']})"]
         for r in rows]))
    if args.out:
        save_results(args.out, device, peak, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
