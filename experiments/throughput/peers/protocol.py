"""What every side-by-side worker shares: its command line, the inputs, timing and its JSON line.

The workers (align_worker.py, trl_worker.py, tunix_worker.py) run in different virtual
environments, so this module imports only the standard library (numpy, present in all three
stacks, only inside `random_tokens`). side_by_side.py passes every worker the same arguments;
each prints exactly one JSON object on its last stdout line: the fields of `result` below, or
`ok: false` with the reason when a workload cannot run in that framework.

Workloads (tokens counted in brackets):
  dpo      one DPO optimizer step on --pairs pairs of --seq tokens, policy + reference
           [both sequences of every pair, all their tokens]
  sample   sampling --prompts prompts of --prompt_len random tokens, --new_tokens new tokens
           each, from one model with a KV cache [new tokens]
  mixture  the same from the token-level geometric mixture (beta = --beta) of the policy and
           the reference [new tokens]
  grpo     one online GRPO iteration: --prompts prompts x --samples completions of --new_tokens
           tokens, a random score per completion, one optimizer step [new tokens]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
import traceback

WORKLOADS = ("dpo", "sample", "mixture", "grpo")
# Special ids of the shared vocabulary (trl_worker's word-level tokenizer): random tokens are >= 4.
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
UNITS = {"dpo": "tokens/s", "sample": "new tokens/s", "mixture": "new tokens/s",
         "grpo": "new tokens/s"}


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--workload", required=True, choices=WORKLOADS)
    p.add_argument("--model_dir", required=True,
                   help="holds policy/ and reference/, HF Llama checkpoints (config.json and "
                        "model.safetensors)")
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--prompt_tokens", type=int, default=64,
                   help="dpo: tokens of each pair's shared prompt inside --seq (frameworks "
                        "that mask the prompt out of the loss still run it through the model)")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--prompt_len", type=int, default=64)
    p.add_argument("--new_tokens", type=int, default=128)
    p.add_argument("--samples", type=int, default=4, help="grpo: completions per prompt")
    p.add_argument("--beta", type=float, default=0.5, help="mixture: the reference's weight")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls first (compilation)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls; the median is reported")
    p.add_argument("--budget_s", type=float, default=300.0,
                   help="sampling: no further timed call once the timed ones took this long "
                        "(at least one is always made); trainers run --repeats steps")
    return p


def units(args, workload: str) -> int:
    """Tokens one call of `workload` counts (see the module docstring)."""
    if workload == "dpo":
        return 2 * args.pairs * args.seq
    if workload == "grpo":
        return args.prompts * args.samples * args.new_tokens
    return args.prompts * args.new_tokens


def random_tokens(rows: int, cols: int, vocab: int, seed: int = 0):
    """The same random token ids in every framework: numpy's generator, ids >= 4."""
    import numpy as np
    return np.random.default_rng(seed).integers(4, vocab, (rows, cols)).astype(np.int64)


def word_tokenizer(vocab: int):
    """A transformers tokenizer over ids 0..vocab-1 for trainers that read text: the word
    "t<i>" is id i (i >= 4), ids 0-3 are <pad>, <s>, </s> (EOS) and <unk>; no BOS is added, so
    a text of n words is n ids. Needs `tokenizers` and `transformers` (the TRL and Tunix
    stacks both have them)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    special = ["<pad>", "<s>", "</s>", "<unk>"]
    words = {**{w: i for i, w in enumerate(special)}, **{f"t{i}": i for i in range(4, vocab)}}
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>")


def text(ids) -> str:
    """Token ids as word_tokenizer's words, each followed by a space (so an EOS that a trainer
    appends stays a word of its own)."""
    return "".join(f"t{int(i)} " for i in ids)


def dpo_pairs(args, vocab: int):
    """(prompt [pairs, prompt_tokens], chosen, rejected [pairs, seq - prompt_tokens - 1]): the
    ids of the DPO batch. Each completion is followed by EOS_ID (TRL appends it itself), so a
    sequence has exactly --seq tokens."""
    completion = args.seq - args.prompt_tokens - 1
    if completion < 1:
        raise ValueError(f"--seq {args.seq} leaves no completion after --prompt_tokens "
                         f"{args.prompt_tokens} and EOS")
    ids = random_tokens(3 * args.pairs, max(args.prompt_tokens, completion), vocab, seed=1)
    n = args.pairs
    return ids[:n, :args.prompt_tokens], ids[n:2 * n, :completion], ids[2 * n:, :completion]


def peak_rss_gib() -> float:
    """This process's peak resident set size (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def time_calls(fn, warmup: int, repeats: int, budget_s: float = float("inf")
               ) -> tuple[float, list[float]]:
    """(seconds of the untimed warm-up calls, the times of up to `repeats` later calls, fewer
    once they add up to budget_s); fn must block until its work is done."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        fn()
    warm = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        if sum(times) >= budget_s:
            break
    return warm, times


def result(args, framework: str, version: str, *, times: list[float], warmup_s: float,
           weights: str, path: str, notes: str = "", **extra) -> dict:
    """One cell: the median time of a call and the throughput it gives."""
    median = statistics.median(times)
    n = units(args, args.workload)
    return {"ok": True, "framework": framework, "version": version, "workload": args.workload,
            "seconds": median, "times": times, "warmup_s": warmup_s, "tokens": n,
            "throughput": n / median, "unit": UNITS[args.workload],
            "peak_rss_gib": peak_rss_gib(), "weights": weights, "path": path, "notes": notes,
            **extra}


def unavailable(args, framework: str, version: str, reason: str) -> dict:
    return {"ok": False, "framework": framework, "version": version, "workload": args.workload,
            "reason": reason, "peak_rss_gib": peak_rss_gib()}


def emit(row: dict) -> None:
    sys.stdout.flush()
    print(json.dumps(row), flush=True)


def run(main_fn, args, framework: str, version_fn) -> int:
    """Calls main_fn(args) -> row and prints it; an exception becomes an `ok: false` row whose
    reason is the error's last line (the traceback goes to stderr)."""
    try:
        row = main_fn(args)
    except Exception as e:  # noqa: BLE001 - any failure is reported as this cell's reason
        traceback.print_exc()
        row = unavailable(args, framework, version_fn(),
                          f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    emit(row)
    return 0
