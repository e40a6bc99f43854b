"""What an objective trains: a model spec (how to build the module, where its language model is)
and the module as (graphdef, pure params).

A `ModelSpec` replaces branching on model kinds: the objective names the spec it trains, and
the trainer asks the spec to build the module, to find the language model inside its
parameters (the reference and evaluation samples use it) and to start it from a finished
policy's language model.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
from flax import nnx

from align.models import heads, preference, transformer

Names = tuple  # logical axis names of one array, e.g. ("embed", "mlp")


class ModelDef(NamedTuple):
    """A model without its values: the graph, abstract params and their logical axis names."""

    graphdef: Any
    abstract_params: Any  # nested dict of jax.ShapeDtypeStruct
    names: Any  # nested dict of logical-name tuples, same structure
    template: Any  # abstract nnx.State used to rebuild modules from pure dicts


def _is_var(x) -> bool:
    return isinstance(x, nnx.Variable)


def describe(make_fn: Callable[[nnx.Rngs], nnx.Module]) -> ModelDef:
    """Abstract description of the module `make_fn` builds (nothing is allocated)."""
    abstract = nnx.eval_shape(lambda: make_fn(nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract, nnx.Param)
    rest = nnx.state(abstract, nnx.Not(nnx.Param))
    if jax.tree.leaves(rest):
        raise ValueError("models must hold only nnx.Param variables at rest; found "
                         f"{jax.tree.structure(rest)}")

    def names_of(v):
        names = v.get_metadata().get("out_sharding")
        if names is None or len(names) != v.value.ndim:
            raise ValueError(f"parameter of shape {v.value.shape} lacks logical axis names "
                             f"(got {names!r})")
        return tuple(names)

    names = nnx.to_pure_dict(jax.tree.map(names_of, state, is_leaf=_is_var))
    return ModelDef(graphdef, nnx.to_pure_dict(state), names, state)


def bind(model_def: ModelDef, params) -> nnx.Module:
    """The module with the given pure-dict params (cheap inside jit: tracing only)."""
    state = jax.tree.map(lambda x: x, model_def.template, is_leaf=_is_var)
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(model_def.graphdef, state)



class ModelSpec(NamedTuple):
    """How to build the module an objective trains and how it relates to a language model.

    name: what the checkpoint holds, recorded with the run ("lm", "lm_value", ...); two runs
        with the same name have interchangeable parameters.
    build(model_cfg, rngs) -> nnx.Module.
    language_model(params) -> the parameters of the language model inside, or None when the
        module holds none that can sample (a reward model's backbone has no output head).
    from_language_model(lm_params, fresh_params) -> this module's parameters, starting from a
        finished policy's language model (heads come from `fresh_params`).
    """

    name: str
    build: Callable[[transformer.TransformerConfig, nnx.Rngs], nnx.Module]
    language_model: Callable[[Any], Any] | None
    from_language_model: Callable[[Any, Any], Any]

    @property
    def is_policy(self) -> bool:
        """Whether the module samples text (it has a language model inside)."""
        return self.language_model is not None

    def make_fn(self, model_cfg):
        """rngs -> module, for `describe` and initialisation."""
        return lambda rngs: self.build(model_cfg, rngs)

    def start_from(self, source: "ModelSpec", params, fresh_params):
        """Parameters of a `source` model placed into this one (a policy becomes a backbone)."""
        if source.name == self.name:
            return params
        if source.language_model is None:
            raise ValueError(f"cannot start a {self.name!r} model from a {source.name!r} run: "
                             "that model holds no language model")
        return self.from_language_model(source.language_model(params), fresh_params)


def _lm_only(lm, fresh):
    del fresh
    return lm


def language_model() -> ModelSpec:
    """A plain policy: the transformer language model."""
    return ModelSpec("lm", lambda cfg, rngs: transformer.Transformer(cfg, rngs=rngs),
                     lambda params: params, _lm_only)


def policy_with_value(critic: str = "head") -> ModelSpec:
    """A policy with a value function: a head on its trunk, or a separate critic trunk."""

    def from_lm(lm, fresh):
        # A separate critic starts from the policy's trunk too; value heads start at 0.
        out = {**fresh, "policy": lm}
        if "critic" in fresh:
            out["critic"] = {**fresh["critic"], "backbone": lm}
        return out

    return ModelSpec("lm_value",
                     lambda cfg, rngs: heads.PolicyWithValue(cfg, rngs=rngs, critic=critic),
                     lambda params: params["policy"], from_lm)


def _backbone(lm, fresh):
    # Reward and preference models start from the policy's weights; their heads are new.
    return {**fresh, "backbone": lm}


def scalar_model() -> ModelSpec:
    """A reward (or value) model: one scalar per token from a transformer backbone."""
    return ModelSpec("scalar", lambda cfg, rngs: heads.ScalarModel(cfg, rngs=rngs), None,
                     _backbone)


def preference_model(pref_dim: int = 8) -> ModelSpec:
    """A preference model P(y ≻ y' | x) on a transformer backbone."""
    return ModelSpec(
        "preference",
        lambda cfg, rngs: preference.PreferenceModel(cfg, rngs=rngs, pref_dim=pref_dim),
        None, _backbone)
