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
from align.objectives.base import ROLLOUT_STAT, LossOut, Models, Objective
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


def _models(model_def, params, frozen, ref_def=None) -> Models:
    """The policy (under stop_gradient) and the frozen models, as modules for `prepare`.

    ref_def describes the reference when it is another kind of model than the policy (a
    language model beside a policy with a value function).
    """
    ref = frozen.get("reference")
    return Models(policy=state_lib.bind(model_def, jax.lax.stop_gradient(params)),
                  reference=None if ref is None else state_lib.bind(ref_def or model_def, ref))


def prepare_rollout(params, obj_state, batch, frozen, key, *, model_def, objective: Objective,
                    ref_def=None):
    """An online objective's `prepare` on a whole rollout, then its `update_state` once.

    Returns (prepared batch without the rollout_* fields, new objective state, stats: the
    rollout_* means plus "rows").
    """
    frozen = jax.lax.stop_gradient(frozen)
    out = objective.prepare(_models(model_def, params, frozen, ref_def), batch, obj_state,
                            rng=key)
    prefix = ROLLOUT_STAT
    stats = {k[len(prefix):]: jnp.mean(v.astype(jnp.float32)) for k, v in out.items()
             if k.startswith(prefix)}
    stats["rows"] = jnp.asarray(batch[next(iter(batch))].shape[0], jnp.float32)
    new_obj = objective.update_state(obj_state, stats)
    return {k: v for k, v in out.items() if not k.startswith(prefix)}, new_obj, stats


def train_step(state, batch, frozen, *, model_def, objective: Objective, optimizer, lr_fn,
               accum: int, ref_def=None, update_objective: bool = True):
    """One optimizer step; a non-finite loss or gradient leaves the state unchanged.

    `frozen` holds parameters that are never trained (e.g. {"reference": params}).
    update_objective=False leaves the objective state alone (online objectives update it once
    per rollout, in `prepare_rollout`).
    """
    rng = jax.random.fold_in(stream_key(state["rng"], "train"), state["step"])
    prep_rng, loss_rng = jax.random.split(rng)
    params = state["params"]
    frozen = jax.lax.stop_gradient(frozen)
    batch = objective.prepare(_models(model_def, params, frozen, ref_def), batch,
                              state["objective"], rng=prep_rng)

    loss_sum, weight, parts, grads = _accumulated_loss(
        model_def, objective, params, batch, state["objective"], loss_rng, accum, grad=True)
    updates, opt_state = optimizer.update(grads, state["opt_state"], params)
    new_params = optax.apply_updates(params, updates)

    metrics = _finalise(loss_sum, weight, parts)
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
        "objective": (keep(objective.update_state(state["objective"], metrics),
                           state["objective"]) if update_objective else state["objective"]),
    }
    return new_state, metrics


def eval_step(state, batch, frozen, *, model_def, objective: Objective, accum: int = 1,
              ref_def=None):
    """Held-out loss and metric parts (sums, so several batches combine exactly)."""
    rng = stream_key(state["rng"], "eval")
    batch = objective.prepare(_models(model_def, state["params"], frozen, ref_def), batch,
                              state["objective"], rng=rng)
    loss_sum, weight, parts, _ = _accumulated_loss(
        model_def, objective, state["params"], batch, state["objective"], rng, accum, grad=False)
    return {"loss_sum": loss_sum, "weight": weight, "parts": parts}


def batch_shardings(batch: Mapping[str, Any], mesh, rules) -> dict[str, Any]:
    return {k: mesh_lib.batch_sharding(mesh, rules, jnp.ndim(v)) for k, v in batch.items()}


def jit_train_step(state_sh, batch_sh, frozen_sh, mesh, rules, **kwargs):
    """The train step under jit with explicit in/out shardings and the state donated."""
    return jax.jit(mesh_lib.traced_under(functools.partial(train_step, **kwargs), mesh, rules),
                   in_shardings=(state_sh, batch_sh, frozen_sh),
                   out_shardings=(state_sh, mesh_lib.replicated(mesh)),
                   donate_argnums=0)


def jit_eval_step(state_sh, batch_sh, frozen_sh, mesh, rules, **kwargs):
    return jax.jit(mesh_lib.traced_under(functools.partial(eval_step, **kwargs), mesh, rules),
                   in_shardings=(state_sh, batch_sh, frozen_sh),
                   out_shardings=mesh_lib.replicated(mesh))
