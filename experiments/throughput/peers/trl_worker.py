"""TRL's side of the side-by-side benchmark (runs in a peer venv with torch, transformers, TRL).

    <venv>/bin/python peers/trl_worker.py --workload dpo --model_dir D [protocol.py's arguments]

The models are the checkpoints align exported (D/policy, D/reference), loaded as
LlamaForCausalLM in float32: the same weights align times. The token ids are those of
protocol.random_tokens; protocol.word_tokenizer (id i <-> the word "t<i>") turns them into the
text TRL's trainers read, so each trainer tokenizes back to exactly those ids and lengths
(checked before timing).

  dpo      trl.DPOTrainer, the real training loop (`trainer.train()`, precompute_ref_log_probs
           off, so the reference runs every step as align's in-step reference); a step is the
           time between two optimizer steps' ends (collation, policy and reference forward on
           chosen + rejected, DPO sigmoid loss, backward, clipping, AdamW)
  sample   transformers `generate(do_sample=True)` with the KV cache, top_k 0, top_p 1,
           min_new_tokens = max_new_tokens so every row decodes all tokens
  mixture  TRL's GeometricMixtureWrapper (NashMD; TRL <= 1.13) around policy and reference,
           `generate` as the NashMD trainer calls it
  grpo     trl.GRPOTrainer, one real training step: transformers generation of --samples
           completions for each of --prompts prompts, a random reward, beta = 0.04 (so the
           reference model runs, as align's kl_coef 0.04), one optimizer step on all of them
Gradient checkpointing and bf16 (TRL's defaults on an accelerator) are off: float32 like align.
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import protocol  # noqa: E402

import torch  # noqa: E402


def version() -> str:
    import transformers
    try:
        import trl
        trl_v = trl.__version__
    except ImportError:
        trl_v = "absent"
    return (f"trl {trl_v}, transformers {transformers.__version__}, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads)")


def load(model_dir: str, name: str):
    from transformers import LlamaForCausalLM
    return LlamaForCausalLM.from_pretrained(os.path.join(model_dir, name), dtype=torch.float32)


def step_clock():
    """A TrainerCallback that times the wall time between consecutive optimizer steps' ends
    (the first step from the start of training)."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self):
            self.start, self.ends = None, []

        def on_train_begin(self, args, state, control, **kw):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.ends.append(time.perf_counter())

        def split(self, warmup: int):
            """(warm-up seconds, the times of the later steps)."""
            marks = [self.start] + self.ends
            steps = [b - a for a, b in zip(marks, marks[1:])]
            return sum(steps[:warmup]), steps[warmup:]

    return StepClock()


def _common_args(args, out_dir: str) -> dict:
    return dict(output_dir=out_dir, max_steps=args.warmup + args.repeats, learning_rate=1e-6,
                gradient_accumulation_steps=1, gradient_checkpointing=False, bf16=False,
                use_cpu=True, report_to="none", save_strategy="no", logging_steps=10 ** 6,
                disable_tqdm=True, dataloader_num_workers=0, seed=0)


def dpo(args) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer
    policy, reference = load(args.model_dir, "policy"), load(args.model_dir, "reference")
    vocab = policy.config.vocab_size
    prompt, chosen, rejected = protocol.dpo_pairs(args, vocab)
    # Exactly --pairs rows: every step (an epoch) trains on the same pairs, as align's does.
    data = Dataset.from_dict({"prompt": [protocol.text(r) for r in prompt],
                              "chosen": [protocol.text(r) for r in chosen],
                              "rejected": [protocol.text(r) for r in rejected]})
    losses = []

    class FirstLoss(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    clock = step_clock()
    with tempfile.TemporaryDirectory() as out:
        config = DPOConfig(**{**_common_args(args, out), "logging_steps": 1},
                           per_device_train_batch_size=args.pairs, max_length=args.seq,
                           beta=0.1, loss_type=["sigmoid"], precompute_ref_log_probs=False)
        trainer = DPOTrainer(model=policy, ref_model=reference, args=config, train_dataset=data,
                             processing_class=protocol.word_tokenizer(vocab),
                             callbacks=[clock, FirstLoss()])
        ex = trainer.train_dataset[0]
        lengths = (len(ex["prompt_ids"]) + len(ex["chosen_ids"]),
                   len(ex["prompt_ids"]) + len(ex["rejected_ids"]))
        if lengths != (args.seq, args.seq) or ex["chosen_ids"][-1] != protocol.EOS_ID:
            raise RuntimeError(f"TRL tokenized a pair to {lengths} tokens, not {args.seq}")
        trainer.train()
    warm, times = clock.split(args.warmup)
    return protocol.result(
        args, "TRL", version(), times=times, warmup_s=warm, weights="the exported checkpoints",
        path="trl.DPOTrainer.train() (sigmoid loss, reference every step)",
        first_loss=losses[0] if losses else None)


def _prompts(args, vocab: int):
    ids = torch.as_tensor(protocol.random_tokens(args.prompts, args.prompt_len, vocab))
    return ids, torch.ones_like(ids)


def _generation_config(args, eos_id: int):
    from transformers import GenerationConfig
    return GenerationConfig(do_sample=True, max_new_tokens=args.new_tokens,
                            min_new_tokens=args.new_tokens, temperature=1.0, top_k=0, top_p=1.0,
                            pad_token_id=protocol.PAD_ID, eos_token_id=eos_id, use_cache=True)


def _geometric_mixture_wrapper():
    """TRL's GeometricMixtureWrapper, wherever this TRL keeps it."""
    import importlib
    errors = []
    for where in ("trl.experimental.nash_md.nash_md_trainer", "trl.experimental.nash_md",
                  "trl.models.utils", "trl.models.modeling_base", "trl.models"):
        try:
            return getattr(importlib.import_module(where), "GeometricMixtureWrapper"), where
        except (ImportError, AttributeError) as e:
            errors.append(f"{where}: {type(e).__name__}: {e}")
    raise ImportError("no GeometricMixtureWrapper in this TRL (NashMD was removed after TRL "
                      "1.13; the mixture workload runs in the trl-nashmd venv): "
                      + "; ".join(errors))


def sample(args, mixture: bool) -> dict:
    policy = load(args.model_dir, "policy").eval()
    ids, mask = _prompts(args, policy.config.vocab_size)
    gen = _generation_config(args, eos_id=protocol.EOS_ID)
    if mixture:
        # The wrapper has no KV cache of its own. With the generation config's use_cache on,
        # transformers 5 still feeds it only the newest token (so it would sample from a
        # one-token context); off, as NashMDTrainer sets it under its default gradient
        # checkpointing, every step reruns both models over the whole prefix.
        gen.use_cache = False
        wrapper, where = _geometric_mixture_wrapper()
        reference = load(args.model_dir, "reference").eval()
        model = wrapper(model=policy, ref_model=reference, generation_config=gen,
                        mixture_coef=args.beta, device=torch.device("cpu"))
        path = (f"{where}.GeometricMixtureWrapper.generate, use_cache off: each new token "
                "reruns both models over the whole prefix (TRL's wrapper has no KV cache)")
    else:
        model, path = policy, "transformers generate(do_sample=True), KV cache"
    holder = {}

    def call():
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen)
        holder["new"] = int(out.shape[1] - ids.shape[1]) * int(out.shape[0])

    warm, times = protocol.time_calls(call, args.warmup, args.repeats, args.budget_s)
    want = args.prompts * args.new_tokens
    if holder["new"] != want:
        raise RuntimeError(f"generated {holder['new']} tokens, not {want}")
    return protocol.result(args, "TRL", version(), times=times, warmup_s=warm,
                           weights="the exported checkpoints", path=path)


def grpo(args) -> dict:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer
    policy_dir = os.path.join(args.model_dir, "policy")
    vocab = load(args.model_dir, "policy").config.vocab_size
    # Exactly --prompts prompts: every step (an epoch) samples from all of them.
    ids = protocol.random_tokens(args.prompts, args.prompt_len, vocab)
    data = Dataset.from_dict({"prompt": [protocol.text(row) for row in ids]})
    lengths = []

    def random_reward(completions, completion_ids=None, **kw):
        if completion_ids is not None:
            lengths.extend(len(c) for c in completion_ids)
        return [random.random() for _ in completions]

    clock = step_clock()
    with tempfile.TemporaryDirectory() as out:
        config = GRPOConfig(
            **_common_args(args, out), per_device_train_batch_size=args.prompts * args.samples,
            num_generations=args.samples, max_completion_length=args.new_tokens,
            generation_kwargs={"min_new_tokens": args.new_tokens}, temperature=1.0, top_k=0,
            top_p=1.0, beta=0.04, num_iterations=1, shuffle_dataset=False,
            model_init_kwargs={"dtype": torch.float32})
        trainer = GRPOTrainer(model=policy_dir, reward_funcs=random_reward, args=config,
                              train_dataset=data, processing_class=protocol.word_tokenizer(vocab),
                              callbacks=[clock])
        out_metrics = trainer.train()
    warm, times = clock.split(args.warmup)
    want = args.prompts * args.samples * (args.warmup + args.repeats)
    if len(lengths) != want or set(lengths) != {args.new_tokens}:
        raise RuntimeError(f"GRPO completions: {len(lengths)} of lengths {sorted(set(lengths))}, "
                           f"expected {want} of {args.new_tokens}")
    return protocol.result(
        args, "TRL", version(), times=times, warmup_s=warm,
        weights="the exported policy (TRL copies it as the reference)",
        path="trl.GRPOTrainer.train(), one step = generate + reward + ref + update (beta 0.04)",
        loss=float(out_metrics.training_loss))


def main(argv=None) -> int:
    args = protocol.parser(__doc__.split("\n")[0]).parse_args(argv)
    torch.manual_seed(0)
    random.seed(0)
    fns = {"dpo": dpo, "sample": lambda a: sample(a, False), "mixture": lambda a: sample(a, True),
           "grpo": grpo}
    return protocol.run(lambda a: fns[a.workload](a), args, "TRL", version)


if __name__ == "__main__":
    sys.exit(main())
