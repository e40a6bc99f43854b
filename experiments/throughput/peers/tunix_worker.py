"""Tunix's side of the side-by-side benchmark (runs in a peer venv with google-tunix and the
jax/flax stack it resolves).

    <venv>/bin/python peers/tunix_worker.py --workload dpo --model_dir D [protocol.py's arguments]

The models are the checkpoints align exported, read by Tunix's own HF safetensors loader
(`tunix.models.llama3.params.create_model_from_safe_tensors`) into its Llama3 module with the
config.json's sizes: the same weights align and TRL time. Tunix's sampler and GRPO read text, so
protocol.word_tokenizer maps the shared token ids to words and back (lengths checked).

  dpo      tunix.sft.dpo.DPOTrainer.train on pre-tokenized TrainingInput batches (its reference
           log-probs are computed in `_prepare_inputs` every step); max_inflight_computations = 1
           so each step has finished when the next starts; a step is the time between two
           steps' starts
  sample   tunix.generate.sampler.Sampler (jitted prefill + KV-cache decode); temperature 1 with
           top_p = 1, its only non-greedy mode (it sorts the vocabulary every step); EOS -1, an
           id never drawn, so every row decodes all tokens
  mixture  n/a: Tunix has no geometric-mixture (NashMD) sampler
  grpo     tunix.rl.grpo.GRPOLearner.train with the "vanilla" rollout (that Sampler), the
           policy as actor and the reference model, beta 0.04, one optimizer step per global
           step on all completions; a step is the time between two global steps' starts (read
           by wrapping the learner's `_run_global_step`)
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import protocol  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

NEVER_EOS = -1
# Tunix 0.1.7's Llama3 attention calls apply_rope without the config's rope_theta, so it always
# rotates with base 1e6: the same weights and cost, a slightly different function (its DPO loss
# differs from align's and TRL's; with the base patched to the checkpoint's they agree to 1e-6).
ROPE_NOTE = ("Tunix 0.1.7's Llama3 ignores rope_theta (RoPE base 1e6, the checkpoint says "
             "{theta:g}): same weights and cost, slightly different outputs")


def version() -> str:
    from importlib import metadata
    return (f"google-tunix {metadata.version('google-tunix')}, jax {jax.__version__}, "
            f"flax {metadata.version('flax')} ({jax.default_backend()})")


def _mesh():
    auto = (jax.sharding.AxisType.Auto,) * 2
    return jax.make_mesh((1, 1), ("fsdp", "tp"), axis_types=auto)


def _rope_note(hf: dict) -> str:
    theta = float(hf.get("rope_theta", 10000.0))
    return "" if theta == 1e6 else ROPE_NOTE.format(theta=theta)


def _config(model_dir: str):
    from tunix.models.llama3 import model as llama
    with open(os.path.join(model_dir, "policy", "config.json")) as f:
        hf = json.load(f)
    if hf.get("model_type") != "llama" or hf.get("rope_scaling"):
        raise ValueError(f"expected a plain Llama checkpoint, got {hf.get('model_type')} with "
                         f"rope_scaling {hf.get('rope_scaling')}")
    return hf, llama.ModelConfig(
        num_layers=hf["num_hidden_layers"], vocab_size=hf["vocab_size"],
        embed_dim=hf["hidden_size"], hidden_dim=hf["intermediate_size"],
        num_heads=hf["num_attention_heads"],
        head_dim=hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"],
        num_kv_heads=hf["num_key_value_heads"], rope_theta=int(hf["rope_theta"]),
        norm_eps=hf["rms_norm_eps"], weight_tying=bool(hf["tie_word_embeddings"]))


def _load(model_dir: str, name: str, cfg, mesh):
    from tunix.models.llama3 import params
    return params.create_model_from_safe_tensors(os.path.join(model_dir, name), cfg, mesh,
                                                 dtype=jnp.float32)


def _optimizer():
    import optax
    # As TRL's defaults: global-norm clipping at 1, AdamW.
    return optax.chain(optax.clip_by_global_norm(1.0),
                       optax.adamw(1e-6, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0))


def dpo(args) -> dict:
    from tunix.sft import hooks
    from tunix.sft.dpo import dpo_trainer
    hf, cfg = _config(args.model_dir)
    mesh = _mesh()
    prompt, chosen, rejected = protocol.dpo_pairs(args, hf["vocab_size"])
    eos = np.full((args.pairs, 1), protocol.EOS_ID)
    ones = lambda a: np.ones(a.shape, np.int32)
    chosen, rejected = np.concatenate([chosen, eos], 1), np.concatenate([rejected, eos], 1)
    batch = dpo_trainer.TrainingInput(
        prompt_ids=prompt.astype(np.int32), prompt_mask=ones(prompt),
        chosen_ids=chosen.astype(np.int32), chosen_mask=ones(chosen),
        rejected_ids=rejected.astype(np.int32), rejected_mask=ones(rejected))
    steps = args.warmup + args.repeats
    starts, losses = [], []

    class Clock(hooks.TrainingHooks):
        def on_train_start(self, ctx): pass
        def on_train_end(self, ctx): starts.append(time.perf_counter())
        def on_train_step_start(self, ctx): starts.append(time.perf_counter())
        def on_train_step_end(self, ctx, step, loss): losses.append(float(loss))
        def on_eval_step_start(self, ctx): pass
        def on_eval_step_end(self, ctx, loss): pass

    with jax.set_mesh(mesh):
        policy = _load(args.model_dir, "policy", cfg, mesh)
        reference = _load(args.model_dir, "reference", cfg, mesh)
        config = dpo_trainer.DPOTrainingConfig(
            eval_every_n_steps=10 ** 6, max_steps=steps, beta=0.1,
            max_inflight_computations=1, pbar_description=None)
        trainer = dpo_trainer.DPOTrainer(policy, reference, _optimizer(), config)
        trainer.with_training_hooks(Clock())
        trainer.train([batch] * steps)
    durations = [b - a for a, b in zip(starts, starts[1:])]
    return protocol.result(
        args, "Tunix", version(), times=durations[args.warmup:],
        warmup_s=sum(durations[:args.warmup]), weights="the exported checkpoints",
        path="tunix.sft.dpo.DPOTrainer.train (reference log-probs every step)",
        first_loss=losses[0] if losses else None, notes=_rope_note(hf))


def _sampler(model, cfg, vocab: int, cache_size: int):
    from tunix.generate import sampler as sampler_lib
    cache = sampler_lib.CacheConfig(cache_size=cache_size, num_layers=cfg.num_layers,
                                    num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim)
    return sampler_lib.Sampler(model, protocol.word_tokenizer(vocab), cache)


def sample(args) -> dict:
    hf, cfg = _config(args.model_dir)
    mesh = _mesh()
    ids = protocol.random_tokens(args.prompts, args.prompt_len, hf["vocab_size"])
    prompts = [protocol.text(r).strip() for r in ids]
    holder = {"seed": 0}
    with jax.set_mesh(mesh):
        model = _load(args.model_dir, "policy", cfg, mesh)
        sampler = _sampler(model, cfg, hf["vocab_size"], args.prompt_len + args.new_tokens)

        def call():
            holder["seed"] += 1
            out = sampler(prompts, max_generation_steps=args.new_tokens,
                          max_prompt_length=args.prompt_len, temperature=1.0, top_p=1.0,
                          eos_tokens=[NEVER_EOS], seed=holder["seed"])
            holder["out"] = out

        warm, times = protocol.time_calls(call, args.warmup, args.repeats, args.budget_s)
    out = holder["out"]
    if not np.array_equal(np.asarray(out.padded_prompt_tokens), ids):
        raise RuntimeError("Tunix's sampler tokenized the prompts to other ids")
    new = sum(len(t) for t in out.tokens)
    if new != args.prompts * args.new_tokens:
        raise RuntimeError(f"generated {new} tokens, not {args.prompts * args.new_tokens}")
    return protocol.result(args, "Tunix", version(), times=times, warmup_s=warm,
                           weights="the exported checkpoints",
                           path="tunix.generate.sampler.Sampler (top_p 1: sorts the vocabulary "
                                "each step), KV cache", notes=_rope_note(hf))


def grpo(args) -> dict:
    from tunix.rl import rl_cluster as rl_cluster_lib
    from tunix.rl.grpo import grpo_learner
    from tunix.rl.rollout import base_rollout
    hf, cfg = _config(args.model_dir)
    vocab = hf["vocab_size"]
    mesh = _mesh()
    ids = protocol.random_tokens(args.prompts, args.prompt_len, vocab)
    prompts = [protocol.text(r).strip() for r in ids]
    steps = args.warmup + args.repeats + 1  # the last one only ends the previous interval
    lengths = []

    def random_reward(prompts, completions, **kw):
        lengths.extend(len(c.split()) for c in completions)  # one word per token
        return [random.random() for _ in completions]

    with jax.set_mesh(mesh), tempfile.TemporaryDirectory() as out:
        policy = _load(args.model_dir, "policy", cfg, mesh)
        reference = _load(args.model_dir, "reference", cfg, mesh)
        training = rl_cluster_lib.RLTrainingConfig(
            actor_optimizer=_optimizer(), eval_every_n_steps=10 ** 6, max_steps=steps,
            mini_batch_size=args.prompts, pbar_description=None,
            metrics_logging_options=None, checkpoint_root_directory=None)
        rollout = base_rollout.RolloutConfig(
            max_tokens_to_generate=args.new_tokens, max_prompt_length=args.prompt_len,
            kv_cache_size=args.prompt_len + args.new_tokens, temperature=1.0, top_p=1.0,
            top_k=None, eos_tokens=[NEVER_EOS])
        roles = {r: mesh for r in (rl_cluster_lib.Role.ACTOR, rl_cluster_lib.Role.REFERENCE,
                                   rl_cluster_lib.Role.ROLLOUT)}
        cluster = rl_cluster_lib.RLCluster(
            actor=policy, reference=reference, tokenizer=protocol.word_tokenizer(vocab),
            cluster_config=rl_cluster_lib.ClusterConfig(
                role_to_mesh=roles, rollout_engine="vanilla", offload_to_cpu=False,
                training_config=training, rollout_config=rollout))
        learner = grpo_learner.GRPOLearner(
            rl_cluster=cluster, reward_fns=[random_reward],
            algo_config=grpo_learner.GRPOConfig(num_generations=args.samples, num_iterations=1,
                                                beta=0.04, epsilon=0.2))
        starts = []
        run_global_step = learner._run_global_step

        def timed_global_step(*a, **kw):
            starts.append(time.perf_counter())
            return run_global_step(*a, **kw)

        learner._run_global_step = timed_global_step
        # A batch's prompts as one array (a leaf: the learner repeats it per generation).
        learner.train([{"prompts": np.asarray(prompts)}] * steps)
        del out
    durations = [b - a for a, b in zip(starts, starts[1:])]
    if len(durations) < args.warmup + args.repeats:
        raise RuntimeError(f"GRPOLearner ran {len(starts)} global steps, expected {steps}")
    want = args.prompts * args.samples * steps
    if len(lengths) != want or set(lengths) != {args.new_tokens}:
        raise RuntimeError(f"GRPO completions: {len(lengths)} of lengths {sorted(set(lengths))}, "
                           f"expected {want} of {args.new_tokens}")
    return protocol.result(
        args, "Tunix", version(), times=durations[args.warmup:args.warmup + args.repeats],
        warmup_s=sum(durations[:args.warmup]), weights="the exported checkpoints",
        path="tunix.rl.grpo.GRPOLearner.train, vanilla rollout (beta 0.04)",
        notes=_rope_note(hf))


def main(argv=None) -> int:
    args = protocol.parser(__doc__.split("\n")[0]).parse_args(argv)
    random.seed(0)
    fns = {"dpo": dpo, "sample": sample, "grpo": grpo,
           "mixture": lambda a: protocol.unavailable(
               a, "Tunix", version(), "Tunix has no geometric-mixture (NashMD) sampler")}
    return protocol.run(lambda a: fns[a.workload](a), args, "Tunix", version)


if __name__ == "__main__":
    sys.exit(main())
