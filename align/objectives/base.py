"""The objective API: what one objective owns, as plain values and pure functions.

Dimension letters: B batch, T tokens.

An objective never touches devices or meshes. `loss` returns sums and their global
denominator so the train step can normalise once, over the whole global batch and all
accumulation microbatches; metrics are (numerator, denominator) pairs reduced the same way.

The train step calls, in order, on the whole global batch:

1. `reference_fields(reference, batch) -> {field: array}`: a pure function of the frozen
   reference. With `reference.mode=cached` it runs once per record before training and its
   output is all the cache stores; with `in_step` it runs here. Either way `prepare` and `loss`
   see the same fields.
2. `prepare(policy, batch, obj_state, *, rng) -> (batch, stats)`: everything outside the
   gradient that depends on the current policy (old log-probs, values, advantages, a batch-level
   statistic). It runs every step, so nothing it computes is ever frozen at a stale value.
   `stats` are scalars: reported as metrics and handed to `update_state`.
3. `loss(model, batch, obj_state, *, rng) -> LossOut`, differentiable in the model's params,
   over accumulation microbatches.
4. `update_state(obj_state, metrics) -> obj_state` (e.g. an adaptive KL coefficient).

Online objectives (those with an `OnlineSpec`) run 1-2 once per rollout, with the parameters
that sampled it, and `update_state(obj_state, stats)` once (stats also hold "rows", the rollout
size); then `loss` on its minibatches for several epochs.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from align.models import specs
from align.models.specs import ModelSpec

__all__ = ["LossOut", "ModelSpec", "Objective", "OnlineSpec", "SCORES", "keep_state",
           "no_prepare", "no_state", "ratio"]


class LossOut(NamedTuple):
    """A loss as a sum over the batch with its normaliser, and metrics as ratio parts."""

    loss_sum: jax.Array
    weight: jax.Array
    metrics: Mapping[str, tuple[jax.Array, jax.Array]]


SCORES = ("preference", "reward")


class OnlineSpec(NamedTuple):
    """How an online objective collects its data each step.

    samples: completions per prompt.
    mixture: the geometric-mixture β with the reference of each completion slot (0 = sample
        from the policy itself); () = every completion from the policy.
    score: "preference": P(a ≻ b) for two completions; "reward": one score per completion.
    """

    samples: int = 2
    mixture: tuple[float, ...] = ()
    score: str = "preference"

    def betas(self) -> tuple[float, ...]:
        """β per completion slot."""
        return tuple(self.mixture) if self.mixture else (0.0,) * self.samples


# Artifacts: after training, `artifacts(apply)` computes what a run leaves beside its
# checkpoint (e.g. a reward model's offset). apply(fn, kind="sft", split="train") yields
# (host batch, host fn(model, device batch)) over that split, with the trained model.
ArtifactsFn = Callable[[Callable[..., Any]], Mapping[str, Any]]


def no_state() -> dict:
    return {}


def no_prepare(policy, batch, obj_state, *, rng):
    del policy, obj_state, rng
    return batch, {}


def keep_state(obj_state, metrics):
    del metrics
    return obj_state


class Objective(NamedTuple):
    """What a config names: pure pieces closed over their settings with functools.partial.

    name: the config's objective.name.
    data: the data kind its batches hold (a kind of `align.data.pipeline`; "prompts" for
        online objectives, which make their own batches).
    init() -> objective state (a pytree, checkpointed with the train state; {} if none).
    loss, prepare, reference_fields, update_state: see the module docstring.
        reference_fields=None: the objective uses no reference model.
    model: the module it trains (`align.models.specs`), default a plain language model.
    online: for objectives trained on their own samples: what to sample and how to score it.
    artifacts: what a finished run leaves beside its checkpoint, {name: JSON value}, written
        to WORKDIR/<name>.json (None: nothing).
    settings: its validated, frozen settings (`align.settings.Settings`), for reports.
    """

    name: str
    data: str
    init: Callable[[], Any]
    loss: Callable[..., LossOut]
    prepare: Callable[..., tuple[Mapping[str, Any], Mapping[str, jax.Array]]] = no_prepare
    reference_fields: Callable[[Any, Mapping[str, Any]], Mapping[str, jax.Array]] | None = None
    update_state: Callable[[Any, Mapping[str, jax.Array]], Any] = keep_state
    model: ModelSpec = specs.language_model()
    online: OnlineSpec | None = None
    artifacts: ArtifactsFn | None = None
    settings: Any = None

    @property
    def uses_reference(self) -> bool:
        return self.reference_fields is not None


def make(name: str, data: str, *, init=no_state, loss, prepare=no_prepare,
         reference_fields=None, update_state=keep_state, model: ModelSpec | None = None,
         online: OnlineSpec | None = None, artifacts=None, settings=None) -> Objective:
    """An Objective with the defaults filled in (a plain language model, no state, no prepare)."""
    return Objective(name=name, data=data, init=init, loss=loss, prepare=prepare,
                     reference_fields=reference_fields, update_state=update_state,
                     model=model if model is not None else specs.language_model(),
                     online=online, artifacts=artifacts, settings=settings)


def ratio(num: jax.Array, den: jax.Array) -> tuple[jax.Array, jax.Array]:
    """A metric part in fp32."""
    return jnp.asarray(num, jnp.float32), jnp.asarray(den, jnp.float32)
