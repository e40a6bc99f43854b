"""Train state: created already sharded, and the model as (graphdef, pure params).

The state is a plain dict pytree {"step", "params", "opt_state", "rng", "objective"} so
optax, orbax and jit shardings all see ordinary nested dicts.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from align import mesh as mesh_lib
from align.models.specs import ModelDef, bind, describe
from align.train import population as population_lib

__all__ = ["ModelDef", "bind", "describe", "StateSpec", "create", "init_params_fn", "num_params"]

def init_params_fn(make_fn: Callable[[nnx.Rngs], nnx.Module]):
    """key -> pure-dict params of a freshly initialised model."""

    def init(key):
        model = make_fn(nnx.Rngs(params=key))
        return nnx.to_pure_dict(nnx.state(model, nnx.Param))

    return init


def state_shardings(abstract_state, model_def: ModelDef, optimizer, mesh, rules):
    """Shardings for the whole state: params by logical names, optimizer moments alike."""
    param_sh = mesh_lib.tree_shardings(model_def.abstract_params, model_def.names, rules, mesh)
    repl = mesh_lib.replicated(mesh)
    opt_sh = optax.tree_map_params(
        optimizer, lambda _, sh: sh, abstract_state["opt_state"], param_sh,
        transform_non_params=lambda _: repl)
    return {
        "step": repl, "params": param_sh, "opt_state": opt_sh, "rng": repl,
        "objective": jax.tree.map(lambda _: repl, abstract_state["objective"]),
    }


class StateSpec(NamedTuple):
    """How to make the train state: its abstract shape with shardings, and two makers."""

    abstract: Any
    shardings: Any
    init_fn: Callable[[], Any]  # () -> state with freshly initialised params
    from_params_fn: Callable[[Any], Any]  # params -> state starting from those params


def create(model_def: ModelDef, make_fn, optimizer, objective, *, seed: int, mesh,
           rules, population=None) -> StateSpec:
    """The state's shardings and jitted makers: the state is created already sharded.

    population (align/train/population.py): every leaf gets a leading member axis; member p's
    state is the one `seed = population.seeds[p]` would give, and `from_params_fn` starts every
    member from the same parameters.
    """
    init_params = init_params_fn(make_fn)

    def state_from(params, seed):
        _, train_key = jax.random.split(jax.random.key(seed))
        return {
            "step": jnp.zeros((), jnp.int32),
            "params": params,
            "opt_state": optimizer.init(params),
            "rng": jax.random.key_data(train_key),
            "objective": objective.init(),
        }

    def init_state(seed):
        params_key, _ = jax.random.split(jax.random.key(seed))
        return state_from(init_params(params_key), seed)

    if population is None:
        init_fn = lambda: init_state(seed)
        from_fn = lambda params: state_from(params, seed)
    else:
        seeds = jnp.asarray(population.seeds, jnp.int32)
        init_fn = lambda: jax.vmap(init_state)(seeds)
        from_fn = lambda params: jax.vmap(state_from, in_axes=(None, 0))(params, seeds)
    member_abstract = jax.eval_shape(lambda: init_state(seed))
    shardings = state_shardings(member_abstract, model_def, optimizer, mesh, rules)
    if population is not None:
        shardings = population_lib.stacked_shardings(shardings, population, mesh)
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), jax.eval_shape(init_fn),
        shardings)
    params_sh = state_shardings(member_abstract, model_def, optimizer, mesh, rules)["params"]
    return StateSpec(
        abstract, shardings, jax.jit(init_fn, out_shardings=shardings),
        jax.jit(from_fn, in_shardings=(params_sh,), out_shardings=shardings))


def num_params(params) -> int:
    return int(sum(x.size for x in jax.tree.leaves(params)))
