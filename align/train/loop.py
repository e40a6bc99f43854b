"""The offline training loop: data -> jitted step -> metrics, evaluation and checkpoints.

Dimension letters: B batch, P prompt tokens, N new tokens.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any

import jax
import numpy as np

from align import mesh as mesh_lib
from align import objectives, sampling
from align.data import pipeline, sources
from align.models import transformer
from align.train import checkpoint as ckpt_lib
from align.train import metrics as metrics_lib
from align.train import optim
from align.train import state as state_lib
from align.train import step as step_lib


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss or gradient."""


def model_config(cfg, vocab_size: int) -> transformer.TransformerConfig:
    model = dict(cfg.model)
    if not model["vocab_size"]:
        model["vocab_size"] = vocab_size
    elif model["vocab_size"] < vocab_size:
        raise ValueError(f"model.vocab_size={model['vocab_size']} is smaller than the "
                         f"tokenizer's {vocab_size}")
    return transformer.transformer_config(model)


def _per_process(global_batch: int, divisor: int, what: str) -> int:
    if global_batch % divisor:
        raise ValueError(f"{what}={global_batch} must be a multiple of {divisor} "
                         "(the devices the batch is split over)")
    if global_batch % jax.process_count():
        raise ValueError(f"{what}={global_batch} must be a multiple of the "
                         f"{jax.process_count()} processes")
    return global_batch // jax.process_count()


class Trainer:
    """Everything one run needs, built from a validated config."""

    def __init__(self, cfg, workdir: str, *, devices=None):
        self.cfg, self.workdir = cfg, workdir
        mesh_lib.initialize_distributed(cfg.distributed)
        self.mesh = mesh_lib.make_mesh(cfg.mesh, devices)
        self.rules = mesh_lib.logical_rules(cfg.mesh.rules)
        self.data = sources.prepare(cfg, workdir)
        tok = self.data.tokenizer
        self.pad_id = tok.pad_id if cfg.data.pad_id < 0 else int(cfg.data.pad_id)
        self.model_cfg = model_config(cfg, tok.vocab_size)
        self.make_fn = functools.partial(_make_transformer, self.model_cfg)
        self.model_def = state_lib.describe(self.make_fn)
        self.objective = objectives.make(cfg.objective, chunk_size=cfg.logprobs.chunk_size)
        self.optimizer, self.lr_fn = optim.make(
            cfg.optim, cfg.train.steps,
            decay_mask=optim.decay_mask_from_names(self.model_def.names))
        self.abstract, self.shardings, self.init_fn = state_lib.create(
            self.model_def, self.make_fn, self.optimizer, self.objective, seed=cfg.seed,
            mesh=self.mesh, rules=self.rules)
        divisor = mesh_lib.batch_divisor(self.mesh, self.rules)
        self.batch_size = _per_process(cfg.data.batch_size, divisor, "data.batch_size")
        if cfg.data.batch_size % (divisor * cfg.optim.accum_steps):
            raise ValueError(f"data.batch_size={cfg.data.batch_size} must split into "
                             f"optim.accum_steps={cfg.optim.accum_steps} microbatches of a "
                             f"multiple of {divisor} rows")
        self.eval_batch_size = _per_process(cfg.data.eval_batch_size, divisor,
                                            "data.eval_batch_size")
        self.primary = jax.process_index() == 0
        self.checkpointer = ckpt_lib.Checkpointer(
            os.path.join(workdir, "checkpoints"), keep=cfg.train.keep_checkpoints)
        self.writer = metrics_lib.MetricWriter(workdir, is_primary=self.primary)
        self.frozen, self.frozen_shardings = {}, {}
        self._train_step = None
        self._eval_step = None
        self._sample_fn = None
        self.last_samples: dict[str, Any] = {}

    # Data ------------------------------------------------------------------------------------
    def train_iterator(self):
        c = self.cfg.data
        return pipeline.sft_batches(
            self.data.sft["train"], self.data.tokenizer, batch_size=self.batch_size,
            max_len=c.max_len, max_prompt_len=c.max_prompt_len, seed=self.cfg.seed,
            shuffle=True, num_epochs=None, drop_remainder=True, pad_id=self.pad_id)

    def eval_iterator(self):
        c = self.cfg.data
        return pipeline.sft_batches(
            self.data.sft["test"], self.data.tokenizer, batch_size=self.eval_batch_size,
            max_len=c.max_len, max_prompt_len=c.max_prompt_len, seed=self.cfg.seed,
            shuffle=False, num_epochs=1, drop_remainder=True, pad_id=self.pad_id)

    # Steps -----------------------------------------------------------------------------------
    def train_step(self, state, batch):
        """One jitted step on a host batch (compiled on first use)."""
        gbatch = mesh_lib.to_global(batch, self.mesh, self.rules)
        if self._train_step is None:
            self._train_step = step_lib.jit_train_step(
                self.shardings, step_lib.batch_shardings(gbatch, self.mesh, self.rules),
                self.frozen_shardings, self.mesh, self.rules, model_def=self.model_def, objective=self.objective,
                optimizer=self.optimizer, lr_fn=self.lr_fn, accum=self.cfg.optim.accum_steps)
        return self._train_step(state, gbatch, self.frozen)

    def evaluate_loss(self, state) -> dict[str, float]:
        """Held-out loss over `eval.num_batches` batches of the test split."""
        totals = None
        for i, batch in enumerate(self.eval_iterator()):
            if i >= self.cfg.eval.num_batches:
                break
            gbatch = mesh_lib.to_global(batch, self.mesh, self.rules)
            if self._eval_step is None:
                self._eval_step = step_lib.jit_eval_step(
                    self.shardings, step_lib.batch_shardings(gbatch, self.mesh, self.rules),
                    self.frozen_shardings, self.mesh, self.rules, model_def=self.model_def,
                    objective=self.objective)
            out = jax.device_get(self._eval_step(state, gbatch, self.frozen))
            totals = out if totals is None else jax.tree.map(np.add, totals, out)
        if totals is None:
            raise ValueError("the test split is smaller than one eval batch "
                             f"({self.cfg.data.eval_batch_size} rows)")
        result = {k: float(n / max(d, 1e-9)) for k, (n, d) in totals["parts"].items()}
        result["loss"] = float(totals["loss_sum"] / max(totals["weight"], 1e-9))
        return result

    def sample(self, state, *, step: int, num: int | None = None) -> dict[str, Any]:
        """Completions for test prompts, decoded, with their gold reward when the world has one."""
        c, e = self.cfg.data, self.cfg.eval
        num = num or e.num_samples
        if not self.data.prompts:
            return {}
        # Every process samples the same prompts (a full copy each): the completions then
        # gather into one list that lines up with the prompt texts on every host.
        it = pipeline.prompt_batches(
            self.data.prompts["test"], self.data.tokenizer, batch_size=num,
            max_prompt_len=c.max_prompt_len, seed=self.cfg.seed, shuffle=False, num_epochs=1,
            pad_id=self.pad_id, process_index=0, process_count=1)
        batch = next(iter(it))
        prompts = [str(t) for t in batch["prompt_text"]]
        gbatch = {k: jax.device_put(v, mesh_lib.batch_sharding(self.mesh, self.rules, v.ndim))
                  for k, v in batch.items() if v.dtype != object}
        if self._sample_fn is None:
            self._sample_fn = jax.jit(mesh_lib.traced_under(functools.partial(
                _sample, model_def=self.model_def, max_new_tokens=e.max_new_tokens,
                temperature=e.temperature, top_k=e.top_k, eos_id=self.data.tokenizer.eos_id),
                self.mesh, self.rules))
        out = _gather(self._sample_fn(state["params"], gbatch, state["rng"], step))
        completions = [self.data.tokenizer.decode(_cut(t, m)) for t, m in
                       zip(out["tokens"], out["mask"])]
        result = {"prompts": prompts, "completions": completions,
                  "lengths": out["mask"].sum(-1)}
        if self.data.world is not None:
            result["gold"] = np.asarray(self.data.world.gold_rewards(prompts, completions))
        return result

    def evaluate(self, state, step: int) -> dict[str, float]:
        metrics = self.evaluate_loss(state)
        samples = self.sample(state, step=step)
        self.last_samples = samples
        if "gold" in samples:
            gold = np.asarray(samples["gold"], np.float64)
            metrics["sample_gold_reward"] = float(gold.mean())
            metrics["sample_gold_reward_se"] = float(gold.std(ddof=1) / np.sqrt(len(gold)))
            metrics["sample_length"] = float(np.mean(samples["lengths"]))
        self.writer.write(step, metrics, prefix="eval")
        if samples and self.cfg.eval.show_samples:
            text = "\n\n".join(f"{p} -> {c}" for p, c in zip(
                samples["prompts"][:self.cfg.eval.show_samples],
                samples["completions"][:self.cfg.eval.show_samples]))
            self.writer.write_text(step, "samples", text)
        return metrics

    # The loop --------------------------------------------------------------------------------
    def restore_or_init(self, train_iter):
        restored = self.checkpointer.restore(self.abstract)
        if restored is None:
            return self.init_fn(), 0
        state, extra, step = restored
        train_iter.set_state(extra["data"])
        self.writer.truncate_after(step)
        return state, step

    def save(self, state, step: int, train_iter) -> None:
        self.checkpointer.save(step, state, extra={
            "data": train_iter.get_state(), "step": step})

    def train(self) -> dict[str, Any]:
        cfg = self.cfg
        total = cfg.train.steps
        train_iter = self.train_iterator()
        state, step = self.restore_or_init(train_iter)
        if step:
            print(f"resumed from the checkpoint of step {step}", flush=True)
        elif self.cfg.train.eval_every:
            self.evaluate(state, 0)
        progress = metrics_lib.Progress(total, step, enabled=cfg.train.progress and self.primary)
        # Throughput counts step time only (data, compute, the metrics fetch), not evaluation
        # or checkpoint writes.
        busy, tokens = 0.0, 0.0
        try:
            while step < total:
                start = time.perf_counter()
                batch = next(train_iter)
                state, metrics = self.train_step(state, batch)
                # The per-step fetch is the NaN guard: a bad step stops the run at once.
                metrics = jax.device_get(metrics)
                busy += time.perf_counter() - start
                tokens += float(np.asarray(batch["input_mask"]).sum()) * jax.process_count()
                if not metrics["finite"]:
                    raise NonFiniteLossError(
                        f"non-finite loss ({metrics['loss']}) or gradient norm "
                        f"({metrics['grad_norm']}) at step {step + 1}; the update was not "
                        f"applied and training stopped. The last good checkpoint is step "
                        f"{self.checkpointer.latest_step()} in "
                        f"{os.path.join(self.workdir, 'checkpoints')}")
                step += 1
                tps = tokens / max(busy, 1e-9)
                progress.update(step, loss=float(metrics["loss"]), tokens_per_s=tps)
                if step % cfg.train.log_every == 0 or step == total:
                    metrics = {k: float(v) for k, v in metrics.items()}
                    metrics["tokens_per_s"] = tps
                    self.writer.write(step, metrics, prefix="train")
                    busy, tokens = 0.0, 0.0
                if cfg.train.eval_every and step % cfg.train.eval_every == 0 and step < total:
                    self.evaluate(state, step)
                if step % cfg.train.checkpoint_every == 0 or step == total:
                    self.save(state, step, train_iter)
        finally:
            progress.close()
        return {"step": step, "eval": self.evaluate(state, step)}

    @property
    def demo_gold(self) -> tuple[float, float]:
        """Mean gold reward of the held-out demonstrations and its standard error."""
        return sources.demo_gold_reward(self.data.sft["test"])

    @property
    def initial_gold(self) -> float:
        """Gold reward of the untrained policy's samples, from the step-0 evaluation."""
        for row in metrics_lib.read_metrics(self.workdir):
            if row.get("step") == 0 and "eval/sample_gold_reward" in row:
                return float(row["eval/sample_gold_reward"])
        return float("nan")

    def close(self):
        self.checkpointer.close()
        self.writer.close()


def _make_transformer(model_cfg, rngs):
    return transformer.Transformer(model_cfg, rngs=rngs)


def _sample(params, batch, key_data, step, *, model_def, max_new_tokens, temperature, top_k, eos_id):
    key = jax.random.fold_in(step_lib.stream_key(key_data, "sample"), step)
    policy = sampling.model_policy(state_lib.bind(model_def, params))
    out = sampling.sample(
        policy, batch["prompt_tokens"], batch["prompt_mask"], example_ids_B=batch["example_id"],
        rng=key, max_new_tokens=max_new_tokens, eos_id=eos_id, temperature=temperature,
        top_k=top_k)
    return {"tokens": out["tokens_BxN"], "mask": out["mask_BxN"]}


def _gather(tree):
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, tree)
    from jax.experimental import multihost_utils
    return multihost_utils.process_allgather(tree, tiled=True)


def _cut(tokens, mask) -> list[int]:
    return [int(t) for t, m in zip(tokens, mask) if m]
