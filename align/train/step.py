"""The jitted train and eval steps: one jit, explicit shardings, donated state.

Dimension letters: A accumulation microbatches, B batch (global), M microbatch rows.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax

from align import mesh as mesh_lib
from align.objectives.base import LossOut, Objective
from align.train import state as state_lib


# Append only: a stream's key is its position here.
STREAMS = ("train", "eval", "sample", "reference_sample", "train_sample", "rollout_prepare")


def stream_key(key_data, name: str):
    """A named random stream from the state's root key (streams never share keys)."""
    return jax.random.fold_in(jax.random.wrap_key_data(key_data), STREAMS.index(name))


def _microbatches(batch: Mapping[str, jax.Array], accum: int) -> dict[str, jax.Array]:
    """[B, ...] -> [A, M, ...] taking rows a, a+A, a+2A, ... so each device feeds every microbatch."""

    def split(x):
        if x.shape[0] % accum:
            raise ValueError(f"batch of {x.shape[0]} rows does not split into {accum} microbatches")
        x = x.reshape((x.shape[0] // accum, accum) + x.shape[1:])
        return jnp.swapaxes(x, 0, 1)

    return {k: split(v) for k, v in batch.items()}


def _sum_metrics(acc, new):
    return jax.tree.map(jnp.add, acc, new)


def _finalise(loss_sum, weight, parts) -> dict[str, jax.Array]:
    metrics = {k: num / jnp.maximum(den, 1e-9) for k, (num, den) in parts.items()}
    metrics["loss"] = loss_sum / jnp.maximum(weight, 1e-9)
    metrics["weight"] = weight
    return metrics


def _accumulated_loss(model_def, objective: Objective, params, batch, obj_state, rng, accum,
                      grad: bool):
    """Sums of loss, weight, metric parts (and grads) over microbatches, normalised once."""

    def loss_fn(p, mb, key):
        out: LossOut = objective.loss(state_lib.bind(model_def, p), mb, obj_state, rng=key)
        return out.loss_sum, out

    def micro(carry, xs):
        mb, i = xs
        key = jax.random.fold_in(rng, i)
        if grad:
            (_, out), g = jax.value_and_grad(loss_fn, has_aux=True)(params, mb, key)
        else:
            _, out = loss_fn(params, mb, key)
            g = None
        part = (out.loss_sum, out.weight, dict(out.metrics), g)
        return (part if carry is None else _sum_metrics(carry, part)), None

    mbs = _microbatches(batch, accum)
    first = jax.tree.map(lambda x: x[0], mbs)
    carry, _ = micro(None, (first, 0))
    if accum > 1:
        rest = jax.tree.map(lambda x: x[1:], mbs)
        carry, _ = jax.lax.scan(micro, carry, (rest, jnp.arange(1, accum)))
    loss_sum, weight, parts, grads = carry
    if grad:
        grads = jax.tree.map(lambda g: g / jnp.maximum(weight, 1e-9), grads)
    return loss_sum, weight, parts, grads


def with_reference(objective: Objective, batch, frozen, ref_def):
    """The batch with the objective's reference fields, computed here when the reference is in
    `frozen` (reference.mode=in_step), else already in the batch (read from the cache)."""
    ref = frozen.get("reference")
    if objective.reference_fields is None or ref is None:
        return batch
    reference = state_lib.bind(ref_def, jax.lax.stop_gradient(ref))
    return {**batch, **objective.reference_fields(reference, batch)}


def prepared(objective: Objective, model_def, params, batch, obj_state, frozen, ref_def, rng):
    """(batch with reference fields and `prepare`'s fields, prepare's stats), no gradient."""
    batch = with_reference(objective, batch, frozen, ref_def)
    policy = state_lib.bind(model_def, jax.lax.stop_gradient(params))
    batch, stats = objective.prepare(policy, batch, obj_state, rng=rng)
    return batch, {k: jnp.asarray(v, jnp.float32) for k, v in stats.items()}


def prepare_rollout(params, obj_state, batch, frozen, key, *, model_def, objective: Objective,
                    ref_def):
    """An online objective's reference fields and `prepare` on a whole rollout, then its
    `update_state` once: (prepared rollout, new objective state, stats plus "rows")."""
    out, stats = prepared(objective, model_def, params, batch, obj_state, frozen, ref_def, key)
    stats["rows"] = jnp.asarray(batch[next(iter(batch))].shape[0], jnp.float32)
    return out, objective.update_state(obj_state, stats), stats


def train_step(state, batch, frozen, *, model_def, objective: Objective, optimizer, lr_fn,
               accum: int, ref_def, online: bool = False):
    """One optimizer step; a non-finite loss or gradient leaves the state unchanged.

    `frozen` holds parameters that are never trained (e.g. {"reference": params}).
    online=True: the batch is a minibatch of a rollout that `prepare_rollout` already prepared,
    and the objective state is updated once per rollout there, not here.
    """
    rng = jax.random.fold_in(stream_key(state["rng"], "train"), state["step"])
    prep_rng, loss_rng = jax.random.split(rng)
    params = state["params"]
    stats = {}
    if not online:
        batch, stats = prepared(objective, model_def, params, batch, state["objective"], frozen,
                                ref_def, prep_rng)

    loss_sum, weight, parts, grads = _accumulated_loss(
        model_def, objective, params, batch, state["objective"], loss_rng, accum, grad=True)
    updates, opt_state = optimizer.update(grads, state["opt_state"], params)
    new_params = optax.apply_updates(params, updates)

    metrics = {**stats, **_finalise(loss_sum, weight, parts)}
    metrics["grad_norm"] = optax.global_norm(grads)
    metrics["param_norm"] = optax.global_norm(params)
    metrics["lr"] = lr_fn(state["step"])
    ok = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
    metrics["finite"] = ok.astype(jnp.float32)

    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
    new_state = {
        "step": state["step"] + ok.astype(jnp.int32),
        "params": keep(new_params, params),
        "opt_state": keep(opt_state, state["opt_state"]),
        "rng": state["rng"],
        "objective": (state["objective"] if online else
                      keep(objective.update_state(state["objective"], metrics),
                           state["objective"])),
    }
    return new_state, metrics


def eval_step(state, batch, frozen, *, model_def, objective: Objective, ref_def, accum: int = 1):
    """Held-out loss and metric parts (sums, so several batches combine exactly)."""
    rng = stream_key(state["rng"], "eval")
    batch, _ = prepared(objective, model_def, state["params"], batch, state["objective"], frozen,
                        ref_def, rng)
    loss_sum, weight, parts, _ = _accumulated_loss(
        model_def, objective, state["params"], batch, state["objective"], rng, accum, grad=False)
    return {"loss_sum": loss_sum, "weight": weight, "parts": parts}


def jit_train_step(state_sh, frozen_sh, mesh, rules, **kwargs):
    """The train step under jit with explicit in/out shardings and the state donated.

    Every batch field is split along its leading (batch) dim: one sharding covers them all.
    """
    return jax.jit(mesh_lib.traced_under(functools.partial(train_step, **kwargs), mesh, rules),
                   in_shardings=(state_sh, mesh_lib.batch_sharding(mesh, rules), frozen_sh),
                   out_shardings=(state_sh, mesh_lib.replicated(mesh)),
                   donate_argnums=0)


def jit_eval_step(state_sh, frozen_sh, mesh, rules, **kwargs):
    return jax.jit(mesh_lib.traced_under(functools.partial(eval_step, **kwargs), mesh, rules),
                   in_shardings=(state_sh, mesh_lib.batch_sharding(mesh, rules), frozen_sh),
                   out_shardings=mesh_lib.replicated(mesh))
