"""The training loop: `train(setup)` reads top to bottom.

Data -> jitted step -> metrics, evaluation, checkpoints, then the objective's artifacts. One
loop serves every objective: offline ones (SFT, the pairwise and listwise preference
objectives, reward and preference models) take a batch per step; online ones take a batch of
prompts and make their own rollout (`online.advance`).

A step's metrics are read from the device one step late, so the host never waits for the
step it just dispatched. Nothing is lost by it: a step with a non-finite loss or gradient
leaves the state unchanged, and the pending metrics are always read (and checked) before a
checkpoint is written or an evaluation runs.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import numpy as np

from align import atomic
from align import mesh as mesh_lib
from align.train import evaluation
from align.train import metrics as metrics_lib
from align.train import online as online_lib
from align.train import population as population_lib
from align.train import preemption
from align.train import reference as reference_lib
from align.train import setup as setup_lib
from align.train import state as state_lib
from align.train.setup import Setup, build

Preempted = preemption.Preempted

__all__ = ["NonFiniteLossError", "Preempted", "Setup", "advance", "build", "restore_or_init", "train",
           "train_iterator"]


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss or gradient."""


def train_iterator(setup: Setup):
    """This process's training batches (global prompt batches for online objectives), with the
    cached reference fields under reference.mode=cached; for a population with
    population.data = "split", every member's batch stacked on a leading axis.
    Checkpointable (get/set_state)."""
    cfg = setup.cfg
    if setup.objective.online:
        return setup_lib.prompt_batches(setup, "train", batch_size=cfg.data.batch_size,
                                        train=True)
    table = None
    if cfg.reference.mode == "cached" and setup.objective.uses_reference:
        split = setup_lib.batches(setup, setup.objective.data, "train", train=False,
                                  drop_remainder=False)
        table = reference_lib.table(setup, split)

    def one(seed):
        it = setup_lib.batches(setup, setup.objective.data, "train", train=True, seed=seed)
        return it if table is None else reference_lib.WithReference(it, table)

    pop = setup.population
    if pop is not None and pop.data == "split":
        return population_lib.StackedIterator([one(seed) for seed in pop.seeds])
    return one(cfg.seed)


def initial_state(setup: Setup):
    """A fresh state, or one whose parameters start from init.workdir / init.pretrained."""
    if setup.start is None:
        return setup.spec.init_fn()
    source, params = setup.start
    model = setup.objective.model
    if source.name == model.name and not setup.start_stacked:
        return setup.spec.from_params_fn(params)
    fresh = setup.spec.init_fn()["params"]
    if setup.population is None:
        return setup.spec.from_params_fn(model.start_from(source, params, fresh))
    # Each member's own fresh parts (e.g. a reward head) around the shared start, or around
    # its own member of a population it starts from.
    state = setup.spec.init_fn()
    start_of = ((lambda p: population_lib.member(params, p)) if setup.start_stacked
                else (lambda p: params))
    members = [model.start_from(source, start_of(p), population_lib.member(fresh, p))
               for p in range(setup.population.size)]
    stacked = jax.device_put(jax.tree.map(lambda *xs: jax.numpy.stack(xs), *members),
                             setup.spec.shardings["params"])
    opt_state = jax.jit(jax.vmap(setup.optimizer.init),
                        out_shardings=setup.spec.shardings["opt_state"])(stacked)
    return {**state, "params": stacked, "opt_state": opt_state}


def restore_or_init(setup: Setup, train_iter):
    """The newest checkpoint's state and step, or a fresh state at step 0.

    Metric lines that the restored state does not account for are dropped, so that
    metrics.jsonl never holds a step twice: everything after the checkpoint (all of it when
    there is none), and at the last step the final evaluation, written after its save.
    """
    # A step whose data-loader state the iterator cannot take is unreadable like a damaged one.
    restored = setup.checkpointer.restore(
        setup.spec.abstract, accept=lambda extra: train_iter.set_state(extra["data"]))
    if restored is None:
        setup.writer.truncate_after(-1)
        return initial_state(setup), 0
    state, extra, step = restored
    setup.writer.truncate_after(step, train_only_at_step=step >= setup.cfg.train.steps)
    return state, step


def save(setup: Setup, state, step: int, train_iter) -> None:
    setup.checkpointer.save(step, state, extra={"data": train_iter.get_state(), "step": step})


def advance(setup: Setup, state, batch, step: int):
    """One training step: (state, metrics (device arrays), tokens processed by all processes)."""
    if setup.objective.online:
        return online_lib.advance(setup, state, batch, step)
    pop = setup.population
    if pop is not None and pop.data == "split":
        gbatch = population_lib.to_global(batch, setup.mesh, setup.rules, pop)
        n_tokens = online_lib.count_tokens(batch)
    else:
        gbatch = mesh_lib.to_global(batch, setup.mesh, setup.rules)
        # A shared batch is read once and trained on by every member.
        n_tokens = online_lib.count_tokens(batch) * (pop.size if pop is not None else 1)
    state, metrics = setup.steps.train(state, gbatch, setup.frozen)
    return state, metrics, n_tokens * jax.process_count()


def _read(setup: Setup, metrics, step: int) -> dict[str, Any]:
    """Host values of a step's metrics; refuses a step whose loss or gradient was not finite."""
    host = jax.device_get(metrics)
    if not np.all(host["finite"]):
        where = ""
        if setup.population is not None:
            bad = np.flatnonzero(np.asarray(host["finite"]) < 1).tolist()
            where = f" of population member(s) {bad} ({setup.workdir}/population.json)"
        raise NonFiniteLossError(
            f"non-finite loss ({host['loss']}) or gradient norm ({host['grad_norm']}){where} at step "
            f"{step}; the update was not applied and training stopped; "
            f"{setup.checkpointer.describe_latest()}")
    return {k: (float(v) if np.ndim(v) == 0 else np.asarray(v)) for k, v in host.items()}


def _mean(x) -> float:
    return float(np.mean(x))


class _Clock:
    """Tokens per second over training steps only: the time between reads of consecutive
    steps' metrics, not counting evaluation, checkpoint writes or a process's first step (it
    compiles)."""

    def __init__(self):
        self.busy, self.tokens, self.last = 0.0, 0.0, None

    def tick(self, n_tokens: float) -> None:
        now = time.perf_counter()
        if self.last is not None:
            self.busy, self.tokens = self.busy + now - self.last, self.tokens + n_tokens
        self.last = now

    def resume(self) -> None:
        """Restarts the interval after evaluation or a checkpoint write (not counted)."""
        if self.last is not None:
            self.last = time.perf_counter()

    def rate(self) -> float:
        return self.tokens / self.busy if self.busy > 0 else float("nan")

    def reset(self) -> None:
        self.busy, self.tokens = 0.0, 0.0


def write_artifacts(setup: Setup, state) -> dict[str, Any]:
    """The objective's artifacts of the finished run, written to WORKDIR/<name>.json."""
    if setup.objective.artifacts is None:
        return {}
    fn_cache = {}

    def apply(fn, kind: str = "sft", split: str = "train"):
        if fn not in fn_cache:
            fn_cache[fn] = jax.jit(mesh_lib.traced_under(
                lambda p, b: fn(state_lib.bind(setup.model_def, p), b), setup.mesh, setup.rules))
        for batch in setup_lib.batches(setup, kind, split, train=False):
            gbatch = mesh_lib.to_global(batch, setup.mesh, setup.rules)
            yield batch, mesh_lib.to_host(fn_cache[fn](state["params"], gbatch))

    if setup.population is None:
        artifacts = dict(setup.objective.artifacts(apply))
    else:
        # One artifact per member, each computed from that member's parameters.
        full, per_member = state, []
        for p in range(setup.population.size):
            state = population_lib.member(full, p)  # what `apply` reads
            per_member.append(dict(setup.objective.artifacts(apply)))
        artifacts = {name: {"members": [m[name] for m in per_member]}
                     for name in per_member[0]}
    if setup.primary:
        for name, value in artifacts.items():
            atomic.write_text(os.path.join(setup.workdir, f"{name}.json"),
                              json.dumps(value) + "\n")
    return artifacts


def train(setup: Setup, *, on_resume=None) -> dict[str, Any]:
    """Trains to cfg.train.steps (resuming from the newest checkpoint) and evaluates.

    `on_resume(step)`, if given, is called once the state is restored (step 0 for a fresh
    state). On SIGTERM or SIGINT the current step is finished and saved, and `Preempted` is
    raised (align.train.preemption). Returns {"step", "eval": final metrics, "samples": final
    evaluation samples, and the objective's artifacts by name}.
    """
    cfg = setup.cfg
    total, log_every = cfg.train.steps, cfg.train.log_every
    train_iter = train_iterator(setup)
    state, step = restore_or_init(setup, train_iter)
    if on_resume is not None:
        on_resume(step)
    progress = metrics_lib.Progress(total, step, enabled=cfg.train.progress and setup.primary,
                                    log_every=log_every)
    if step:
        print(f"resumed from the checkpoint of step {step}", flush=True)
    elif cfg.train.eval_every:
        progress.write(evaluation.summary(0, *evaluation.evaluate(setup, state, 0)))
    clock, pending = _Clock(), None  # pending: (step, device metrics, tokens) not yet read

    def flush():
        """Reads the pending step's metrics: progress, the NaN guard and the train/ log."""
        nonlocal pending
        if pending is None:
            return
        done, metrics, n_tokens = pending
        pending = None
        metrics = _read(setup, metrics, done)
        clock.tick(n_tokens)
        tps = clock.rate()
        progress.update(done, loss=_mean(metrics["loss"]), tokens_per_s=tps,
                        lr=_mean(metrics["lr"]))
        if done % log_every == 0 or done == total:
            if clock.busy > 0:
                metrics["tokens_per_s"] = tps
            setup.writer.write(done, metrics, prefix="train")
            clock.reset()

    try:
        with preemption.Watch() as watch:
            while step < total:
                state, metrics, n_tokens = advance(setup, state, next(train_iter), step)
                flush()  # the previous step's metrics, read while this one runs
                step += 1
                pending = (step, metrics, n_tokens)
                stop_at = watch.stop_step(step, total)
                if stop_at is not None and step >= stop_at:
                    flush()
                    save(setup, state, step, train_iter)
                    raise Preempted(
                        f"stopped by {watch.signal_name()} after step {step} of {total}: wrote the "
                        f"checkpoint of step {step} in {setup.checkpointer.directory}; rerun the "
                        "same command to resume from it", watch.signum)
                evaluate_now = (cfg.train.eval_every and step % cfg.train.eval_every == 0
                                and step < total)
                save_now = step % cfg.train.checkpoint_every == 0 or step == total
                if evaluate_now or save_now:
                    flush()  # never evaluate or save past a step whose metrics were not checked
                if evaluate_now:
                    progress.write(
                        evaluation.summary(step, *evaluation.evaluate(setup, state, step)))
                if save_now:
                    save(setup, state, step, train_iter)
                if evaluate_now or save_now:
                    clock.resume()
            flush()
    finally:
        progress.close()
    metrics, samples = evaluation.evaluate(setup, state, step)
    return {"step": step, "eval": metrics, "samples": samples,
            **write_artifacts(setup, state)}
