"""align's side of the side-by-side benchmark; also writes the shared checkpoints.

    python peers/align_worker.py export --size 30m --max_len 256 --model_dir D
    python peers/align_worker.py --workload dpo --model_dir D [protocol.py's arguments]

`export` makes two LLaMA-style models with random weights (policy: seed 0, reference: seed 1)
in the trainer's own model config (`run.build`) and writes each with
`align.models.hf_checkpoint.export_hf(..., "llama", ...)` to D/policy and D/reference, so that
transformers loads the very same weights as a LlamaForCausalLM.

The workloads load those checkpoints back (`load_pretrained`) and time the trainer's own pieces:
  dpo      `setup.make_steps`'s donated train step with the in-step frozen reference (run.py)
  sample   `align.sampling.generate`: jitted prefill + KV-cache decode (sampler.py)
  mixture  the same with reference_model=..., beta: two models, two caches
  grpo     as ppo.py does PPO: the jitted sampler on the prompts repeated --samples times (a
           random score per completion inside it), `steps.prepare_rollout` (old and reference
           log-probs, group advantages), one donated train step on the whole rollout
eos_id is -1, an id never drawn, so every completion has exactly --new_tokens tokens.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))  # run.py beside side_by_side.py
import protocol  # noqa: E402
import run as _RUN  # noqa: E402

from align import config as config_lib  # noqa: E402
from align import mesh as mesh_lib  # noqa: E402
from align import samples as samples_lib  # noqa: E402
from align import sampling  # noqa: E402
from align.models import hf_checkpoint, transformer  # noqa: E402
from align.train import state as state_lib  # noqa: E402
import align.objectives  # noqa: E402,F401  (registers the objectives' config schemas)

NEVER_EOS = -1
# The side-by-side model (as in run.py's SIZES: d_model, layers, heads, kv heads, d_ff, vocab)
# and the one of --quick.
SHARED_SIZES = {"30m": (512, 8, 8, 8, 1344, 8000), "quick": (64, 2, 4, 4, 128, 512)}
for _name, _dims in SHARED_SIZES.items():
    _RUN.SIZES.setdefault(_name, _dims)
_FROM_CHECKPOINT = "checkpoint"  # the size registered from a checkpoint's config.json


def version() -> str:
    from importlib import metadata
    try:
        v = metadata.version("align")
    except metadata.PackageNotFoundError:
        v = "source"
    return f"align {v}, jax {jax.__version__} ({jax.default_backend()})"


def export(size: str, max_len: int, model_dir: str, dtype: str = "float32") -> dict:
    """Policy (seed 0) and reference (seed 1) checkpoints in the trainer's model config."""
    b = _RUN.build(size, config_lib.objective_config("sft"), seq=max_len, dtype=dtype)
    cfg = b.model_cfg
    init = state_lib.init_params_fn(lambda rngs: transformer.Transformer(cfg, rngs=rngs))
    for name, seed in (("policy", 0), ("reference", 1)):
        params = jax.jit(init)(jax.random.key(seed))
        hf_checkpoint.export_hf(params, cfg, "llama", os.path.join(model_dir, name))
    return {"size": size, "params": transformer.num_params(cfg), "d_model": cfg.d_model,
            "n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "n_kv_heads": cfg.n_kv_heads,
            "d_ff": cfg.d_ff, "vocab": cfg.vocab_size, "max_len": cfg.max_len, "dtype": dtype}


def _build(model_dir: str, objective: str, seq: int):
    """The trainer for the checkpoint's architecture (run.build), and both checkpoints' params
    loaded onto its mesh; refuses a checkpoint whose config differs from the trainer's."""
    _, ckpt_cfg = hf_checkpoint.read_hf_config(os.path.join(model_dir, "policy"))
    _RUN.SIZES[_FROM_CHECKPOINT] = (ckpt_cfg.d_model, ckpt_cfg.n_layers, ckpt_cfg.n_heads,
                                    ckpt_cfg.n_kv_heads, ckpt_cfg.d_ff, ckpt_cfg.vocab_size)
    b = _RUN.build(_FROM_CHECKPOINT, config_lib.objective_config(objective), seq=seq,
                   dtype=ckpt_cfg.dtype)
    same = lambda c: dataclasses.replace(c, head_dim=c.head_size)  # head_dim 0: d_model/heads
    loaded = {}
    for name in ("policy", "reference"):
        cfg, loaded[name] = hf_checkpoint.load_pretrained(
            os.path.join(model_dir, name), b.mesh, b.rules,
            overrides={"scan_layers": b.model_cfg.scan_layers, "max_len": seq,
                       "remat": b.model_cfg.remat})
        if same(cfg) != same(b.model_cfg):
            raise ValueError(f"checkpoint config {cfg} differs from the trainer's {b.model_cfg}")
    return b, loaded


def _dpo_batch(args, vocab: int) -> dict[str, np.ndarray]:
    """protocol.dpo_pairs as align's pair batch: prompt + completion + EOS, the loss on the
    completion and EOS (the tokens TRL scores)."""
    prompt, chosen, rejected = protocol.dpo_pairs(args, vocab)
    eos = np.full((args.pairs, 1), protocol.EOS_ID)
    loss_mask = np.concatenate([np.zeros_like(prompt), np.ones_like(chosen), np.ones_like(eos)], 1)
    batch = {}
    for side, completion in (("chosen", chosen), ("rejected", rejected)):
        batch[f"{side}_tokens"] = np.concatenate([prompt, completion, eos], 1).astype(np.int32)
        batch[f"{side}_input_mask"] = np.ones((args.pairs, args.seq), np.int32)
        batch[f"{side}_loss_mask"] = loss_mask.astype(np.int32)
    return batch


def dpo(args) -> dict:
    b, params = _build(args.model_dir, "dpo", args.seq)
    state = b.trained.spec.from_params_fn(params["policy"])
    frozen = {"reference": params["reference"]}
    batch = mesh_lib.to_global(_dpo_batch(args, b.model_cfg.vocab_size), b.mesh, b.rules)
    holder = {"state": state, "losses": []}

    def step():
        holder["state"], metrics = b.steps.train(holder["state"], batch, frozen)
        jax.block_until_ready(metrics)
        holder["losses"].append(float(metrics["loss"]))

    warm, times = protocol.time_calls(step, args.warmup, args.repeats)
    return protocol.result(
        args, "align", version(), times=times, warmup_s=warm, weights="the exported checkpoints",
        path="setup.make_steps train step (AdamW, clipping, donated state), in-step reference",
        first_loss=holder["losses"][0], params=transformer.num_params(b.model_cfg))


def _models(model_dir: str, max_len: int):
    out = []
    for name in ("policy", "reference"):
        _, cfg = hf_checkpoint.read_hf_config(os.path.join(model_dir, name))
        mesh = mesh_lib.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
        rules = mesh_lib.logical_rules(config_lib.default_config().mesh.rules)
        cfg, params = hf_checkpoint.load_pretrained(
            os.path.join(model_dir, name), mesh, rules,
            overrides={"max_len": max_len, "scan_layers": False})
        model_def = state_lib.describe(lambda rngs, c=cfg: transformer.Transformer(c, rngs=rngs))
        out.append(state_lib.bind(model_def, params))
    return out


def sample(args, mixture: bool) -> dict:
    policy_model, reference_model = _models(args.model_dir, args.prompt_len + args.new_tokens)
    vocab = policy_model.config.vocab_size
    prompt_BxP = jnp.asarray(protocol.random_tokens(args.prompts, args.prompt_len, vocab),
                             jnp.int32)
    mask_BxP = jnp.ones_like(prompt_BxP)
    holder = {"key": 0}

    def call():
        holder["key"] += 1
        out = sampling.generate(
            policy_model, prompt_BxP, mask_BxP, example_ids_B=jnp.arange(args.prompts),
            rng=jax.random.key(holder["key"]), max_new_tokens=args.new_tokens, eos_id=NEVER_EOS,
            reference_model=reference_model if mixture else None,
            beta=args.beta if mixture else 0.0)
        holder["generated"] = int(np.asarray(out["mask_BxN"]).sum())

    warm, times = protocol.time_calls(call, args.warmup, args.repeats, args.budget_s)
    if holder["generated"] != args.prompts * args.new_tokens:
        raise RuntimeError(f"sampler stopped early: {holder['generated']} tokens")
    what = (f"generate(reference_model=..., beta={args.beta}): two models, two KV caches"
            if mixture else "generate: jitted prefill + KV-cache decode in a while_loop")
    return protocol.result(args, "align", version(), times=times, warmup_s=warm,
                           weights="the exported checkpoints", path="align.sampling." + what)


def grpo(args) -> dict:
    seq = args.prompt_len + args.new_tokens
    b, params = _build(args.model_dir, "grpo", seq)
    steps, model_def = b.steps, b.trained.model_def
    state = b.trained.spec.from_params_fn(params["policy"])
    frozen = {"reference": params["reference"]}
    rows = args.prompts * args.samples
    prompts = protocol.random_tokens(args.prompts, args.prompt_len, b.model_cfg.vocab_size)
    # Prompt-major, as the trainer's Rollouts: row b*S + s is sample s of prompt b.
    batch = mesh_lib.put_global({
        "prompt_tokens": np.repeat(prompts, args.samples, axis=0).astype(np.int32),
        "prompt_mask": np.ones((rows, args.prompt_len), np.int32),
        "example_id": np.arange(rows, dtype=np.int32)}, b.mesh, b.rules)

    def sample_fn(p, batch, key):
        out = sampling.sample(sampling.model_policy(state_lib.bind(model_def, p)),
                              batch["prompt_tokens"], batch["prompt_mask"],
                              example_ids_B=batch["example_id"], rng=key,
                              max_new_tokens=args.new_tokens, eos_id=NEVER_EOS)
        tokens, input_mask, loss_mask = samples_lib.join(
            batch["prompt_tokens"], batch["prompt_mask"], out["tokens_BxN"], out["mask_BxN"])
        return {"tokens": tokens, "input_mask": input_mask, "loss_mask": loss_mask,
                "score": jax.random.normal(key, (tokens.shape[0],)),
                "finished": out["finished_B"].astype(jnp.float32)}

    sample = jax.jit(mesh_lib.traced_under(sample_fn, b.mesh, b.rules))
    holder = {"state": state, "it": 0}
    all_rows = jnp.arange(rows, dtype=jnp.int32)

    def iteration():
        holder["it"] += 1
        key = jax.random.key(holder["it"])
        s = holder["state"]
        rollout = sample(s["params"], batch, key)
        prepared, obj_state, _ = steps.prepare_rollout(s["params"], s["objective"], rollout,
                                                       frozen, key)
        s = {**s, "objective": obj_state}
        s, metrics = steps.train(s, steps.gather(prepared, all_rows), frozen)
        jax.block_until_ready(metrics)
        holder["state"], holder["loss"] = s, float(metrics["loss"])

    warm, times = protocol.time_calls(iteration, args.warmup, args.repeats)
    return protocol.result(
        args, "align", version(), times=times, warmup_s=warm, weights="the exported checkpoints",
        path="jitted sampler + steps.prepare_rollout + one train step on all rows "
             "(objective grpo, kl_coef 0.04)", loss=holder["loss"])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["export"]:
        import argparse
        p = argparse.ArgumentParser(prog="align_worker.py export")
        p.add_argument("--size", required=True, choices=sorted(SHARED_SIZES))
        p.add_argument("--max_len", type=int, required=True)
        p.add_argument("--model_dir", required=True)
        a = p.parse_args(argv[1:])
        protocol.emit(export(a.size, a.max_len, a.model_dir))
        return 0
    args = protocol.parser(__doc__.split("\n")[0]).parse_args(argv)
    fns = {"dpo": dpo, "sample": lambda a: sample(a, False), "mixture": lambda a: sample(a, True),
           "grpo": grpo}
    return protocol.run(lambda a: fns[a.workload](a), args, "align", version)


if __name__ == "__main__":
    sys.exit(main())
