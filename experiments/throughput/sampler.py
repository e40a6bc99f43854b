"""Sampler throughput: tokens/s of prefill + decode, decode model FLOPs utilisation, peak memory.

    python experiments/throughput/sampler.py                  # 1m, 10m, 50m; policy and mixture
    python experiments/throughput/sampler.py --sizes 10m --batch 64 --new_tokens 256

Times `align.sampling.generate` (the jitted KV-cache sampler the trainer uses) from one model,
and from the token-level geometric mixture of a policy and a reference (beta = 0.5: two models,
two KV caches). Every row decodes exactly --new_tokens tokens: eos_id is -1, an id the sampler
never draws, so no row stops early. Decode MFU counts 2 x N_params FLOPs per generated token
and model (attention over the cache is not counted) against the matmul peak that run.py
measures on this machine.
Dimension letters: B batch, P prompt tokens.
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
from flax import nnx

from align import sampling
from align.models import transformer


# run.py beside this script: the sizes, the matmul peak, peak memory, shared table helpers.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as _RUN  # noqa: E402
SIZES = _RUN.SIZES
# Never drawn (ids are >= 0), so every row decodes all --new_tokens tokens.
NEVER_EOS = -1


def _model(size: str, max_len: int, dtype: str, seed: int) -> transformer.Transformer:
    # Unrolled layers, the trainer's default (model.scan_layers=False): on CPU a scan over
    # layers copies each layer's weights out of the stack at every decoding step.
    d, n_layers, n_heads, n_kv, d_ff, vocab = SIZES[size]
    cfg = transformer.TransformerConfig(
        vocab_size=vocab, d_model=d, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv,
        d_ff=d_ff, max_len=max_len, dtype=dtype, scan_layers=False)
    return transformer.Transformer(cfg, rngs=nnx.Rngs(seed))


def _median_time(fn, repeats: int) -> tuple[float, float]:
    """(first-call seconds including compilation, median of `repeats` later calls)."""
    t = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return first, float(np.median(times))


def bench(size: str, *, mixture: bool, batch: int, prompt_len: int, new_tokens: int,
          dtype: str, repeats: int, peak: float) -> dict:
    """Times full sampling and the prefill alone; decode time is their difference."""
    max_len = prompt_len + new_tokens
    policy_model = _model(size, max_len, dtype, seed=0)
    reference_model = _model(size, max_len, dtype, seed=1) if mixture else None
    vocab = policy_model.config.vocab_size
    rng = np.random.default_rng(0)
    prompt_tokens_BxP = jnp.asarray(rng.integers(4, vocab, (batch, prompt_len)), jnp.int32)
    prompt_mask_BxP = jnp.ones((batch, prompt_len), jnp.int32)
    example_ids_B = jnp.arange(batch)
    beta = 0.5 if mixture else 0.0

    def sample_fn():
        return sampling.generate(
            policy_model, prompt_tokens_BxP, prompt_mask_BxP, example_ids_B=example_ids_B,
            rng=jax.random.key(0), max_new_tokens=new_tokens, eos_id=NEVER_EOS,
            reference_model=reference_model, beta=beta)

    @jax.jit
    def prefill(policy_model, reference_model, prompt_tokens_BxP, prompt_mask_BxP):
        policy = (sampling.model_policy(policy_model) if reference_model is None
                  else sampling.mixture_policy(policy_model, reference_model, beta))
        return policy.prefill_fn(prompt_tokens_BxP, prompt_mask_BxP, max_len)

    compile_s, total_s = _median_time(sample_fn, repeats)
    _, prefill_s = _median_time(
        lambda: prefill(policy_model, reference_model, prompt_tokens_BxP, prompt_mask_BxP),
        repeats)
    out = sample_fn()
    generated = int(np.asarray(out["mask_BxN"]).sum())
    if generated != batch * new_tokens:
        raise RuntimeError(f"sampler stopped early: {generated} of {batch * new_tokens} tokens")
    decode_s = max(total_s - prefill_s, 1e-9)
    n_models = 2 if mixture else 1
    params = transformer.num_params(policy_model.config)
    decode_flops = 2 * params * n_models * generated / decode_s
    mem, mem_kind = _RUN.peak_memory_bytes()
    return {
        "size": size, "params": params, "mixture": mixture, "batch": batch,
        "prompt_len": prompt_len, "new_tokens": new_tokens, "dtype": dtype,
        "compile_s": compile_s, "total_s": total_s, "prefill_s": prefill_s,
        "decode_s": decode_s, "tokens_per_s": generated / total_s,
        "decode_tokens_per_s": generated / decode_s,
        "decode_model_tflops_per_s": decode_flops / 1e12, "decode_mfu": decode_flops / peak,
        "peak_memory_gib": mem / 2 ** 30, "memory_kind": mem_kind,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="1m,10m,50m")
    p.add_argument("--batch", type=int, default=32, help="prompts per call")
    p.add_argument("--prompt_len", type=int, default=16)
    p.add_argument("--new_tokens", type=int, default=128)
    p.add_argument("--mixture", default="both", choices=("both", "no", "yes"),
                   help="sample from the policy alone, the beta = 0.5 mixture, or both")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--repeats", type=int, default=3, help="timed calls after the compiling one")
    p.add_argument("--out", default="", help="also write the results as JSON here")
    p.add_argument("--in_process", action="store_true",
                   help="measure everything in this process (default: one subprocess per row, "
                        "so each row's peak memory is its own)")
    p.add_argument("--json_only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    sizes = _RUN.parse_sizes(p, args.sizes)
    for name in ("batch", "prompt_len", "new_tokens", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    mixtures = {"both": (False, True), "no": (False,), "yes": (True,)}[args.mixture]
    device, peak = _RUN.start(args.dtype, quiet=args.json_only)
    rows = []
    for s in sizes:
        for mixture in mixtures:
            if args.in_process or (len(sizes) == 1 and len(mixtures) == 1):
                r = bench(s, mixture=mixture, batch=args.batch, prompt_len=args.prompt_len,
                          new_tokens=args.new_tokens, dtype=args.dtype, repeats=args.repeats,
                          peak=peak)
            else:
                r = _RUN.in_subprocess(__file__, [
                    "--sizes", s, "--mixture", "yes" if mixture else "no"] + [
                        f"--{k}={getattr(args, k)}"
                        for k in ("batch", "prompt_len", "new_tokens", "dtype", "repeats")])
                # Against this process's peak, so every row shares one denominator.
                r["decode_mfu"] = r["decode_model_tflops_per_s"] * 1e12 / peak
            rows.append(r)
            if args.json_only:
                print(json.dumps(r), flush=True)
                return 0
            print(json.dumps(r), file=sys.stderr, flush=True)
    print(_RUN.markdown_table(
        ["size", "params", "sampler", "batch x (prompt + new)", "compile (s)", "call (s)",
         "prefill (s)", "tokens/s", "decode tokens/s", "decode model TFLOP/s", "decode MFU",
         "peak memory"],
        [[r["size"], f"{r['params'] / 1e6:.1f}M",
          "mixture (2 models)" if r["mixture"] else "policy",
          f"{r['batch']}x({r['prompt_len']}+{r['new_tokens']})", f"{r['compile_s']:.1f}",
          f"{r['total_s']:.3f}", f"{r['prefill_s']:.3f}", f"{r['tokens_per_s']:,.0f}",
          f"{r['decode_tokens_per_s']:,.0f}", f"{r['decode_model_tflops_per_s']:.3f}",
          f"{100 * r['decode_mfu']:.1f}%",
          f"{r['peak_memory_gib']:.2f} GiB ({r['memory_kind']})"] for r in rows]))
    if args.out:
        _RUN.save_results(args.out, device, peak, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
