"""The objective API: `Objective(init, prepare, loss)` plus what data and models it needs.

Dimension letters: B batch, T tokens.

An objective never touches devices or meshes. `loss` returns sums and their global
denominator so the train step can normalise once, over the whole global batch and all
accumulation microbatches; metrics are (numerator, denominator) pairs reduced the same way.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp

DATA_KINDS = ("sft", "pairs", "lists", "prompts")


class LossOut(NamedTuple):
    """A loss as a sum over the batch with its normaliser, and metrics as ratio parts."""

    loss_sum: jax.Array
    weight: jax.Array
    metrics: Mapping[str, tuple[jax.Array, jax.Array]]


MODEL_KINDS = ("lm", "lm_value", "scalar", "preference")


class Models(NamedTuple):
    """The modules `prepare` may use; all outside the gradient."""

    policy: Any  # the module being trained, with its parameters under stop_gradient
    reference: Any = None  # the frozen reference, when the objective needs one


class OnlineSpec(NamedTuple):
    """How an online objective collects its data each step."""

    mixture: tuple[float, ...] = (0.0, 0.0)  # per completion of a prompt: geometric-mixture β
    # with the reference (0 = sample from the policy itself); its length is the number of
    # completions per prompt.
    score: str = "preference"  # "preference": P(a ≻ b) for the first two; "reward": per completion


SCORES = ("preference", "reward")
# Fields `prepare` adds to a rollout as per-row values [M] named ROLLOUT_STAT + name: the
# online loop reports their means and hands them to `update_state` once per rollout.
ROLLOUT_STAT = "rollout_"


class Objective(NamedTuple):
    """What a config names: pure pieces closed over their settings with functools.partial.

    init() -> objective state (a pytree, checkpointed with the train state; {} if none).
    prepare(models, batch, obj_state, *, rng) -> batch with everything outside the gradient
        added (reference log-probs, samples, scores, advantages). Fields already in the
        batch (e.g. reference log-probs read from a cache) are kept, not recomputed.
    loss(model, batch, obj_state, *, rng) -> LossOut, differentiable in the model's params.
    update_state(obj_state, metrics) -> obj_state after a step (e.g. an adaptive KL coefficient).
    data: the batches it reads ("sft", "pairs", "lists", "prompts").
    model: the module it trains ("lm" policy, "lm_value" policy with a value function,
        "scalar" reward/value model, "preference" model).
    needs: other models ("reference",).
    online: for objectives trained on their own samples: what to sample and how to score it.
        The online loop then calls `prepare` once per rollout, on the whole rollout and with
        the parameters that sampled it (old log-probs, values, advantages), then
        `update_state(obj_state, stats)` once, where stats holds the means of the
        `rollout_*` fields prepare added (without the prefix) and "rows", the rollout size;
        then `loss` on its minibatches, for several epochs.
    """

    name: str
    data: str
    init: Callable[[], Any]
    prepare: Callable[..., Mapping[str, Any]]
    loss: Callable[..., LossOut]
    update_state: Callable[[Any, Mapping[str, jax.Array]], Any]
    needs: tuple[str, ...] = ()
    model: str = "lm"
    online: OnlineSpec | None = None  # set for objectives trained on their own samples


def no_state() -> dict:
    return {}


def no_prepare(models, batch, obj_state, *, rng):
    del models, obj_state, rng
    return batch


def keep_state(obj_state, metrics):
    del metrics
    return obj_state


def ratio(num: jax.Array, den: jax.Array) -> tuple[jax.Array, jax.Array]:
    """A metric part in fp32."""
    return jnp.asarray(num, jnp.float32), jnp.asarray(den, jnp.float32)
