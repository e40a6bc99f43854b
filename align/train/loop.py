"""The offline training loop: data -> jitted step -> metrics, evaluation and checkpoints.

One Trainer serves every offline objective: SFT, the pairwise and listwise preference
objectives, reward and preference models. Dimension letters: B batch, N new tokens.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from typing import Any

import jax
import numpy as np

from align import atomic
from align import config as config_lib
from align import mesh as mesh_lib
from align import objectives
from align.data import pipeline, sources
from align.evaluate import policy as policy_eval
from align.models import transformer
from align.objectives.base import Models
from align.train import checkpoint as ckpt_lib
from align.train import metrics as metrics_lib
from align.train import optim
from align.train import reference as reference_lib
from align.train import online as online_lib
from align.train import runs
from align.train import state as state_lib
from align.train import step as step_lib

REWARD_OFFSET_FILE = "reward_offset.json"
DATA_REPORT_FILE = "data_report.json"


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


def check_lengths(cfg, objective) -> None:
    """Refuses sequence lengths that would cut examples or samples, naming the keys."""
    c, model_len = cfg.data, cfg.model.max_len
    pretrained = bool(cfg.init.workdir or cfg.init.pretrained)
    problems = []
    if c.max_prompt_len >= c.max_len:
        problems.append(f"data.max_prompt_len={c.max_prompt_len} leaves no room for a completion "
                        f"in data.max_len={c.max_len}")
    if c.max_len > model_len and not pretrained:
        problems.append(f"data.max_len={c.max_len} exceeds model.max_len={model_len}, the "
                        "positions the model has")
    is_policy = objective.model in ("lm", "lm_value")
    if is_policy and cfg.eval.num_samples and c.max_prompt_len + cfg.eval.max_new_tokens > model_len:
        problems.append(f"data.max_prompt_len + eval.max_new_tokens = {c.max_prompt_len} + "
                        f"{cfg.eval.max_new_tokens} exceeds model.max_len={model_len}")
    if objective.online:
        rollout = c.max_prompt_len + cfg.online.max_new_tokens
        for key, limit in (("data.max_len", c.max_len), ("model.max_len", model_len)):
            if rollout > limit:
                problems.append(f"data.max_prompt_len + online.max_new_tokens = "
                                f"{c.max_prompt_len} + {cfg.online.max_new_tokens} exceeds "
                                f"{key}={limit}: rollouts would not fit")
        if cfg.online.scorer != "gold" and cfg.online.scorer_workdir:
            scorer = runs.read_run(runs.resolve_workdir(cfg.online.scorer_workdir, "."))
            if scorer is not None and scorer.cfg.data.max_len < rollout:
                problems.append(f"the scorer in online.scorer_workdir was trained on "
                                f"data.max_len={scorer.cfg.data.max_len} tokens but rollouts have "
                                f"up to {rollout} (data.max_prompt_len + online.max_new_tokens)")
    if problems:
        raise config_lib.ConfigError("inconsistent sequence lengths: " + "; ".join(problems))


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
        workdir = os.path.abspath(workdir)
        cfg = config_lib.absolute_paths(cfg, workdir)
        self.cfg, self.workdir = cfg, workdir
        self.objective = objectives.make(cfg.objective, chunk_size=cfg.logprobs.chunk_size)
        check_lengths(cfg, self.objective)
        mesh_lib.initialize_distributed(cfg.distributed)
        self.mesh = mesh_lib.make_mesh(cfg.mesh, devices)
        self.rules = mesh_lib.logical_rules(cfg.mesh.rules)
        self.primary = jax.process_index() == 0
        if cfg.init.workdir and cfg.init.pretrained:
            raise ValueError("set init.workdir (start from a run) or init.pretrained (start from "
                             "a Hugging Face checkpoint), not both")
        self.parent = runs.require_finished(cfg.init.workdir, workdir) if cfg.init.workdir else None
        self.pretrained = runs.pretrained_dir(cfg)

        self.is_policy = self.objective.model in ("lm", "lm_value")
        kinds = {self.objective.data, "sft"} | ({"prompts"} if self.is_policy else set())
        self.data = sources.prepare(
            cfg, workdir, kinds=sorted(kinds),
            data_dir=self.parent.data_dir if self.parent and not cfg.data.data_dir else "",
            tokenizer_path=(self.parent.tokenizer_path if self.parent
                            else runs.tokenizer_path(cfg)))
        tok = self.data.tokenizer
        self.pad_id = tok.pad_id if cfg.data.pad_id < 0 else int(cfg.data.pad_id)
        if self.primary:
            self._report_data()
        pretrained_params = None
        if self.parent:
            self.model_cfg = runs.inherit_model(cfg.model, self.parent.model_cfg)
        elif self.pretrained:
            from align.models import hf_checkpoint
            self.model_cfg, pretrained_params = hf_checkpoint.load_pretrained(
                self.pretrained, self.mesh, self.rules,
                overrides={k: cfg.model[k] for k in runs.EXECUTION_FIELDS + ("scan_layers",)})
            if tok.vocab_size > self.model_cfg.vocab_size:
                raise ValueError(f"the tokenizer's {tok.vocab_size} ids exceed the vocabulary of "
                                 f"the checkpoint in {self.pretrained} "
                                 f"({self.model_cfg.vocab_size})")
        else:
            self.model_cfg = model_config(cfg, tok.vocab_size)
        self.make_fn = runs.model_fn(self.objective.model, self.model_cfg, cfg.objective)
        self.model_def = state_lib.describe(self.make_fn)
        # The reference (and every language model beside the trained one) as its own model
        # when the trained module is not a plain language model.
        self.lm_def = (self.model_def if self.objective.model == "lm" else state_lib.describe(
            runs.model_fn("lm", self.model_cfg, cfg.objective)))
        # Online objectives take epochs x minibatches optimizer steps per rollout (= train step).
        self.updates_per_step = (cfg.online.epochs * cfg.online.minibatches
                                 if self.objective.online else 1)
        self.optimizer, self.lr_fn = optim.make(
            cfg.optim, cfg.train.steps * self.updates_per_step,
            decay_mask=optim.decay_mask_from_names(self.model_def.names))
        self.abstract, self.shardings, self.init_fn, self.from_params_fn = state_lib.create(
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
        self.checkpointer = ckpt_lib.Checkpointer(
            os.path.join(workdir, "checkpoints"), keep=cfg.train.keep_checkpoints)
        self.writer = metrics_lib.MetricWriter(workdir, is_primary=self.primary)
        if self.primary:
            runs.write_model_config(workdir, self.model_cfg)

        self.parent_params = None
        if pretrained_params is not None:
            self.parent_params, self.parent_kind = pretrained_params, "lm"
        if self.parent is not None:
            self.parent_params, self.parent_kind, _ = runs.final_params(
                self.parent, self.mesh, self.rules)
        self.reference = None  # frozen reference parameters (also used by evaluation)
        if self.is_policy and ("reference" in self.objective.needs
                               or self.parent_params is not None):
            self.reference = (
                runs.lm_params(self.parent_params, self.parent_kind)
                if self.parent_params is not None
                else runs.lm_params(self.init_fn()["params"], self.objective.model))
        self.reference_shardings = (
            self.shardings["params"] if self.lm_def is self.model_def else
            mesh_lib.tree_shardings(self.lm_def.abstract_params, self.lm_def.names, self.rules,
                                    self.mesh))
        if self.objective.online and cfg.reference.mode != "in_step":
            raise ValueError("online objectives score fresh samples each step: "
                             "reference.mode must be 'in_step'")
        in_step = "reference" in self.objective.needs and cfg.reference.mode == "in_step"
        self.frozen = {"reference": self.reference} if in_step else {}
        self.frozen_shardings = {"reference": self.reference_shardings} if in_step else {}
        self.reference_table = None
        self.rollouts = online_lib.Rollouts(self) if self.objective.online else None
        self._jitted: dict[str, Any] = {}
        self._reference_samples = None
        self.last_samples: dict[str, Any] = {}

    # Data ------------------------------------------------------------------------------------
    def _report_data(self) -> None:
        """What tokenization does to the training split (truncations, drops), once per workdir:
        printed and written to WORKDIR/data_report.json."""
        path = os.path.join(self.workdir, DATA_REPORT_FILE)
        if os.path.exists(path):
            return
        from align.data import token_report
        c, kind = self.cfg.data, self.objective.data
        source = getattr(self.data, kind).get("train")
        if source is None:
            return
        report = token_report.token_report(
            source, self.data.tokenizer, kind, c.max_len, c.max_prompt_len,
            list_size=c.list_size if kind == "lists" else None)
        text = token_report.format_token_report(report)
        if report["dropped"]:
            # The pipeline raises on such records: stop now, before any compute, not midway.
            raise ValueError(f"{report['dropped']} training records cannot become examples; "
                             f"data (train split) {text}")
        print("data (train split) " + text, flush=True)
        os.makedirs(self.workdir, exist_ok=True)
        atomic.write_text(path, json.dumps(report, indent=1) + "\n")

    def _batches(self, split: str, *, train: bool, drop_remainder: bool = True):
        c, kind = self.cfg.data, self.objective.data
        common = dict(
            batch_size=self.batch_size if train else self.eval_batch_size,
            max_len=c.max_len, max_prompt_len=c.max_prompt_len, seed=self.cfg.seed,
            shuffle=train, num_epochs=None if train else 1, drop_remainder=drop_remainder,
            pad_id=self.pad_id)
        source = getattr(self.data, kind)[split]
        if kind == "sft":
            return pipeline.sft_batches(source, self.data.tokenizer, **common)
        if kind == "pairs":
            return pipeline.pair_batches(source, self.data.tokenizer, **common)
        if kind == "lists":
            return pipeline.list_batches(source, self.data.tokenizer, list_size=c.list_size,
                                         **common)
        raise ValueError(f"objective {self.objective.name!r} reads {kind!r} data, which the "
                         "offline trainer does not serve")

    def train_iterator(self):
        if self.rollouts is not None:
            return self.rollouts.prompt_iterator()
        it = self._batches("train", train=True)
        if self.cfg.reference.mode == "cached" and "reference" in self.objective.needs:
            return reference_lib.WithReference(it, self.reference_cache())
        return it

    def eval_iterator(self):
        return self._batches("test", train=False)

    # Reference cache -------------------------------------------------------------------------
    def reference_cache(self) -> dict[str, np.ndarray]:
        """The reference fields for the whole train split, loaded or computed once."""
        if self.reference_table is not None:
            return self.reference_table
        c, kind = self.cfg.data, self.objective.data
        source = getattr(self.data, kind)["train"]
        with open(self.data.tokenizer.path, "rb") as f:
            tok_bytes = f.read()
        settings = {"kind": kind, "max_len": c.max_len, "max_prompt_len": c.max_prompt_len,
                    "pad_id": self.pad_id, "list_size": c.list_size, "objective": self.objective.name,
                    "tokenizer": hashlib.sha256(tok_bytes).hexdigest()}
        fingerprint = hashlib.sha256((
            reference_lib.dataset_fingerprint(source, settings) +
            reference_lib.params_fingerprint(self.reference)).encode()).hexdigest()
        path = reference_lib.cache_path(self.workdir, fingerprint)
        table = reference_lib.load(path)
        if table is None:
            print(f"computing reference log-probs for {len(source)} {kind} records", flush=True)
            it = self._batches("train", train=False, drop_remainder=False)
            table = reference_lib.compute_table(
                _padded(it, self.eval_batch_size), self._reference_fields, len(source))
            if self.primary:
                reference_lib.save(path, table)
            mesh_lib.barrier("align-reference-cache")
        self.reference_table = table
        return table

    def _reference_fields(self, batch):
        gbatch = mesh_lib.to_global(batch, self.mesh, self.rules)
        if "reference" not in self._jitted:
            def added(ref_params, b):
                ref = state_lib.bind(self.model_def, ref_params)
                out = self.objective.prepare(Models(policy=ref, reference=ref), b, {},
                                             rng=jax.random.key(0))
                return {k: v for k, v in out.items() if k not in b}
            self._jitted["reference"] = jax.jit(mesh_lib.traced_under(added, self.mesh, self.rules))
        return mesh_lib.to_host(self._jitted["reference"](self.reference, gbatch))

    # Steps -----------------------------------------------------------------------------------
    def train_step(self, state, batch, *, full: bool = False):
        """One jitted step on a host batch (compiled on first use).

        full: the batch is the whole global batch, the same on every process (online rollouts);
        otherwise each process passes its own rows.
        """
        gbatch = (mesh_lib.put_global(batch, self.mesh, self.rules) if full
                  else mesh_lib.to_global(batch, self.mesh, self.rules))
        if "train" not in self._jitted:
            self._jitted["train"] = step_lib.jit_train_step(
                self.shardings, step_lib.batch_shardings(gbatch, self.mesh, self.rules),
                self.frozen_shardings, self.mesh, self.rules, model_def=self.model_def,
                objective=self.objective, optimizer=self.optimizer, lr_fn=self.lr_fn,
                accum=self.cfg.optim.accum_steps, ref_def=self.lm_def,
                update_objective=self.rollouts is None)
        return self._jitted["train"](state, gbatch, self.frozen)

    def evaluate_loss(self, state) -> dict[str, float]:
        """Held-out loss and the objective's metrics over `eval.num_batches` test batches."""
        totals = None
        it = self.eval_iterator()
        frozen = {"reference": self.reference} if "reference" in self.objective.needs else {}
        for i, batch in enumerate(it):
            if i >= self.cfg.eval.num_batches:
                break
            gbatch = mesh_lib.to_global(batch, self.mesh, self.rules)
            if "eval" not in self._jitted:
                sh = {"reference": self.reference_shardings} if frozen else {}
                self._jitted["eval"] = step_lib.jit_eval_step(
                    self.shardings, step_lib.batch_shardings(gbatch, self.mesh, self.rules),
                    sh, self.mesh, self.rules, model_def=self.model_def,
                    objective=self.objective, ref_def=self.lm_def)
            out = jax.device_get(self._jitted["eval"](state, gbatch, frozen))
            totals = out if totals is None else jax.tree.map(np.add, totals, out)
        if totals is None:
            raise ValueError("the test split is smaller than one eval batch "
                             f"({self.cfg.data.eval_batch_size} rows)")
        result = {k: float(n / max(d, 1e-9)) for k, (n, d) in totals["parts"].items()}
        result["loss"] = float(totals["loss_sum"] / max(totals["weight"], 1e-9))
        return result

    # Sampling evaluation ---------------------------------------------------------------------
    def _prompt_batch(self) -> dict[str, np.ndarray]:
        # Every process samples the same prompts (a full copy each), so the gathered
        # completions line up with the prompt texts on every host.
        it = pipeline.prompt_batches(
            self.data.prompts["test"], self.data.tokenizer, batch_size=self.cfg.eval.num_samples,
            max_prompt_len=self.cfg.data.max_prompt_len, seed=self.cfg.seed, shuffle=False,
            num_epochs=1, pad_id=self.pad_id, process_index=0, process_count=1)
        return next(iter(it))

    def _sample(self, params, batch, key, *, reference: bool = False):
        """Evaluation samples of the trained policy, or of the reference."""
        name = "sample_reference" if reference else "sample"
        if name not in self._jitted:
            e = self.cfg.eval
            model_def = self.lm_def if reference else self.model_def

            def fn(p, b, k):
                return policy_eval.sample_fn(
                    state_lib.bind(model_def, p), b, k, max_new_tokens=e.max_new_tokens,
                    temperature=e.temperature, top_k=e.top_k, eos_id=self.data.tokenizer.eos_id)
            self._jitted[name] = jax.jit(mesh_lib.traced_under(fn, self.mesh, self.rules))
        return self._jitted[name](params, batch, key)

    def _kl(self, params, batch, samples):
        if "kl" not in self._jitted:
            def fn(p, r, b, s):
                return policy_eval.sequence_kl(
                    state_lib.bind(self.model_def, p), state_lib.bind(self.lm_def, r), b, s,
                    chunk_size=self.cfg.logprobs.chunk_size)
            self._jitted["kl"] = jax.jit(mesh_lib.traced_under(fn, self.mesh, self.rules))
        return mesh_lib.to_host(self._jitted["kl"](params, self.reference, batch, samples))

    def sample_eval(self, state, step: int) -> dict[str, Any]:
        """Policy samples with their gold reward; against the reference: win rate and KL."""
        if not self.is_policy or not self.data.prompts or not self.cfg.eval.num_samples:
            return {}
        batch = self._prompt_batch()
        prompts = [str(t) for t in batch["prompt_text"]]
        dbatch = mesh_lib.put_global(batch, self.mesh, self.rules)
        key = jax.random.fold_in(step_lib.stream_key(state["rng"], "sample"), step)
        samples = self._sample(state["params"], dbatch, key)
        host = mesh_lib.to_host(samples)
        result = {"prompts": prompts, "completions": policy_eval.decode(self.data.tokenizer, host),
                  "lengths": host["mask"].sum(-1)}
        if self.data.world is not None:
            result["gold"] = self.data.world.gold_rewards(prompts, result["completions"])
        if self.reference is not None:
            result["kl"] = self._kl(state["params"], dbatch, samples)
            if self.data.world is not None:
                if self._reference_samples is None:
                    # The reference never changes: its samples are drawn once, on a fixed key.
                    ref_key = step_lib.stream_key(state["rng"], "reference_sample")
                    ref = mesh_lib.to_host(self._sample(self.reference, dbatch, ref_key,
                                                        reference=True))
                    texts = policy_eval.decode(self.data.tokenizer, ref)
                    self._reference_samples = self.data.world.gold_rewards(prompts, texts)
                result["reference_gold"] = self._reference_samples
        return result

    def evaluate(self, state, step: int) -> dict[str, float]:
        # Online objectives have no held-out loss (it needs fresh samples): they are judged by
        # their samples' gold reward, win rate and KL.
        metrics = {} if self.rollouts is not None else self.evaluate_loss(state)
        samples = self.sample_eval(state, step)
        self.last_samples = samples
        if "gold" in samples:
            metrics["sample_gold_reward"], metrics["sample_gold_reward_se"] = (
                policy_eval.mean_and_se(samples["gold"]))
            metrics["sample_length"] = float(np.mean(samples["lengths"]))
        if "kl" in samples:
            metrics["kl"], metrics["kl_se"] = policy_eval.mean_and_se(samples["kl"])
        if "reference_gold" in samples:
            metrics["win_rate"], metrics["win_rate_se"] = policy_eval.win_rate(
                samples["gold"], samples["reference_gold"])
            metrics["reference_gold_reward"], _ = policy_eval.mean_and_se(
                samples["reference_gold"])
        self.writer.write(step, metrics, prefix="eval")
        if samples and self.cfg.eval.show_samples:
            text = "\n\n".join(f"{p} -> {c}" for p, c in zip(
                samples["prompts"][:self.cfg.eval.show_samples],
                samples["completions"][:self.cfg.eval.show_samples]))
            self.writer.write_text(step, "samples", text)
        return metrics

    # The loop --------------------------------------------------------------------------------
    def initial_state(self):
        if self.parent_params is None:
            return self.init_fn()
        fresh = None if self.objective.model == self.parent_kind else self.init_fn()["params"]
        return self.from_params_fn(runs.adapt_params(
            self.parent_params, self.parent_kind, self.objective.model, fresh))

    def restore_or_init(self, train_iter):
        """The newest checkpoint's state and step, or a fresh state at step 0.

        Metric lines that the restored state does not account for are dropped, so that
        metrics.jsonl never holds a step twice: everything after the checkpoint (all of it when
        there is none), and at the last step the final evaluation, written after its save.
        """
        restored = self.checkpointer.restore(self.abstract)
        if restored is None:
            self.writer.truncate_after(-1)
            return self.initial_state(), 0
        state, extra, step = restored
        train_iter.set_state(extra["data"])
        self.writer.truncate_after(step, train_only_at_step=step >= self.cfg.train.steps)
        return state, step

    def save(self, state, step: int, train_iter) -> None:
        self.checkpointer.save(step, state, extra={
            "data": train_iter.get_state(), "step": step})

    def train(self) -> dict[str, Any]:
        cfg = self.cfg
        total = cfg.train.steps
        train_iter = self.train_iterator()
        state, step = self.restore_or_init(train_iter)
        progress = metrics_lib.Progress(total, step, enabled=cfg.train.progress and self.primary,
                                        log_every=cfg.train.log_every)
        if step:
            print(f"resumed from the checkpoint of step {step}", flush=True)
        elif self.cfg.train.eval_every:
            progress.write(self.eval_summary(0, self.evaluate(state, 0)))
        # Throughput counts step time only (data, compute, the metrics fetch), not evaluation
        # or checkpoint writes, and not the first step of a process, which compiles.
        busy, tokens, compiled = 0.0, 0.0, False
        try:
            while step < total:
                start = time.perf_counter()
                state, metrics, n_tokens = self._advance(state, next(train_iter), step)
                if compiled:
                    busy += time.perf_counter() - start
                    tokens += n_tokens
                compiled = True
                step += 1
                tps = tokens / busy if busy > 0 else float("nan")
                progress.update(step, loss=float(metrics["loss"]), tokens_per_s=tps,
                                lr=float(metrics["lr"]))
                if step % cfg.train.log_every == 0 or step == total:
                    metrics = {k: float(v) for k, v in metrics.items()}
                    if busy > 0:
                        metrics["tokens_per_s"] = tps
                    self.writer.write(step, metrics, prefix="train")
                    busy, tokens = 0.0, 0.0
                if cfg.train.eval_every and step % cfg.train.eval_every == 0 and step < total:
                    progress.write(self.eval_summary(step, self.evaluate(state, step)))
                if step % cfg.train.checkpoint_every == 0 or step == total:
                    self.save(state, step, train_iter)
        finally:
            progress.close()
        result = {"step": step, "eval": self.evaluate(state, step)}
        if self.objective.model == "scalar":
            result["reward_offset"] = self.save_reward_offset(state)
        return result

    def eval_summary(self, step: int, metrics: dict[str, float]) -> str:
        """One line of held-out metrics and the first evaluation sample, for the log."""
        names = ("loss", "accuracy", "gold_agreement", "sample_gold_reward", "win_rate", "kl")
        parts = [f"{n} {metrics[n]:.4g}" for n in names if n in metrics]
        line = f"eval step {step}: " + ("  ".join(parts) if parts else "(no metrics)")
        samples = self.last_samples
        if samples.get("completions"):
            line += f"\n  sample: {samples['prompts'][0]} -> {samples['completions'][0]}"
        return line

    def _advance(self, state, batch, step: int):
        """One training step: (state, metrics, tokens processed by all processes)."""
        if self.rollouts is None:
            state, metrics = self.train_step(state, batch)
            # The per-step fetch is the NaN guard: a bad step stops the run at once.
            metrics = self._check_finite(jax.device_get(metrics), step)
            return state, metrics, _count_tokens(batch) * jax.process_count()
        rollout, rollout_metrics = self.rollouts.collect(state, batch, step)
        state, rollout, stats = self.prepare_rollout(state, rollout, step)
        updates = []
        for _ in range(self.cfg.online.epochs):
            for mb in online_lib.minibatches(rollout, self.cfg.online.minibatches):
                state, metrics = self.train_step(state, mb, full=True)
                updates.append(self._check_finite(jax.device_get(metrics), step))
        # Each update's metrics, averaged over the epochs and minibatches of this rollout.
        metrics = {k: float(np.mean([u[k] for u in updates])) for k in updates[0]}
        return state, {**metrics, **rollout_metrics, **stats}, _count_tokens(rollout)

    def prepare_rollout(self, state, rollout, step: int):
        """The objective's `prepare` once on the whole rollout, with the parameters that sampled
        it, then its `update_state`: (state, prepared host rollout, rollout_* stats)."""
        gbatch = mesh_lib.put_global(rollout, self.mesh, self.rules)
        if "prepare" not in self._jitted:
            self._jitted["prepare"] = jax.jit(mesh_lib.traced_under(functools.partial(
                step_lib.prepare_rollout, model_def=self.model_def, objective=self.objective,
                ref_def=self.lm_def), self.mesh, self.rules))
        key = jax.random.fold_in(step_lib.stream_key(state["rng"], "rollout_prepare"), step)
        out, obj_state, stats = self._jitted["prepare"](
            state["params"], state["objective"], gbatch, self.frozen, key)
        state = {**state, "objective": jax.device_put(obj_state, self.shardings["objective"])}
        stats = jax.device_get(stats)
        return state, mesh_lib.to_host(out), {f"rollout_{k}": float(v) for k, v in stats.items()
                                              if k != "rows"}

    def _check_finite(self, metrics, step: int):
        if not metrics["finite"]:
            raise NonFiniteLossError(
                f"non-finite loss ({metrics['loss']}) or gradient norm "
                f"({metrics['grad_norm']}) at step {step + 1}; the update was not "
                f"applied and training stopped. The last good checkpoint is step "
                f"{self.checkpointer.latest_step()} in "
                f"{os.path.join(self.workdir, 'checkpoints')}")
        return metrics

    def save_reward_offset(self, state) -> float:
        """Stiennon et al.: shift rewards so the demonstrations score 0 on average."""
        from align.objectives import reward_model
        if "offset" not in self._jitted:
            def fn(p, b):
                return reward_model.reward_scores(state_lib.bind(self.model_def, p), b["tokens"],
                                                  b["input_mask"])
            self._jitted["offset"] = jax.jit(mesh_lib.traced_under(fn, self.mesh, self.rules))

        def score_fn(tokens, input_mask):
            b = mesh_lib.to_global({"tokens": tokens, "input_mask": input_mask}, self.mesh,
                                   self.rules)
            return mesh_lib.to_host(self._jitted["offset"](state["params"], b))

        c = self.cfg.data
        it = pipeline.sft_batches(
            self.data.sft["train"], self.data.tokenizer, batch_size=self.eval_batch_size,
            max_len=c.max_len, max_prompt_len=c.max_prompt_len, seed=self.cfg.seed,
            shuffle=False, num_epochs=1, drop_remainder=True, pad_id=self.pad_id)
        offset = reward_model.reward_offset(score_fn, it)
        if self.primary:
            atomic.write_text(os.path.join(self.workdir, REWARD_OFFSET_FILE),
                              json.dumps({"offset": offset}) + "\n")
        return offset

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


def _count_tokens(batch) -> float:
    return float(sum(np.asarray(v).sum() for k, v in batch.items() if k.endswith("input_mask")))


def _padded(it, batch_size: int):
    """Batches padded to a fixed size by repeating their last row (a duplicate writes the same value)."""
    for batch in it:
        n = len(batch["example_id"])
        if n < batch_size:
            idx = np.concatenate([np.arange(n), np.full(batch_size - n, n - 1)])
            batch = {k: np.asarray(v)[idx] for k, v in batch.items()}
        yield batch

