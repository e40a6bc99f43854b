"""Population training: P independent members of one run, trained in one jit.

Dimension letters: P members, B batch rows (per member).

`population.size = P` gives every leaf of the train state a leading member axis: the step,
the evaluation and the sampler are the single-run functions under `jax.vmap`, so member p
computes exactly what a run of its own would (to float rounding of batched kernels). Members
differ by seed and, with `population.sweep = "objective.KEY=v1,v2,..."`, by one numeric
setting of the objective. Members are laid out value-major: with V values and S = P / V
seeds, member p has value v[p // S] and seed `seed + p % S`, so every value is trained from
the same S seeds (common random numbers: paired comparisons across values).

- The seed of member p sets its initial parameters and its random streams (sampling,
  dropout-free objectives' rng); with `population.data = "split"` it also sets its data
  order (member p then equals the run with `seed = seed + p % S`), with "shared" all members
  read the data order of `seed` (one batch, broadcast to all members without a copy).
- A swept float (β, τ, ε) enters the step as a traced number: the objective is built inside
  the vmapped step from a config section holding it, so one vmapped computation serves every
  value. A float that the objective's factory turns into a Python number cannot be swept that
  way; building such a member fails with a message naming the key.
- Any other setting (a string such as `weighting`, an integer, a flag, or `objective.name`
  itself: the loss) is swept by groups: the members of each value are a contiguous block
  (value-major layout), and the jitted step runs each block's own objective under its own
  vmap, so one jit still trains every member. Sweeping `objective.name` builds each member's
  objective from that objective's defaults plus the settings the objectives share (β); the
  objectives must read the same data kind, agree on using a reference, and train the same
  module.
- The member axis is split over the mesh's `data` axis when that axis has more than one
  device and divides P; the batch of each member is then split over the remaining batch axes
  (`fsdp`). Otherwise the member axis is replicated and the batch is split as in a single run.
- Online objectives: each member samples its own rollout from its own policy on the shared
  prompts (one decoding loop over every member's rows, `sampling.stacked_policy`), scores it
  on its own, and trains on it; a sweep may not change how rollouts are drawn.
- Metrics are [P] vectors: metrics.jsonl and TensorBoard get their means, population.jsonl
  the per-member values (align/train/metrics.py); WORKDIR/population.json lists the members.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from align import atomic
from align import config as config_lib
from align import errors
from align import mesh as mesh_lib
from align import objectives

MEMBERS_FILE = "population.json"
# The mesh axis the member axis may be split over (the batch axis that carries no parameters).
MEMBER_AXIS = "data"


@dataclasses.dataclass(frozen=True)
class Population:
    """Who the members are and how their axis is laid out on the mesh."""

    size: int
    seeds: tuple[int, ...]  # member -> its seed
    key: str  # the swept objective setting ("beta"), or "" when members differ by seed only
    values: tuple[Any, ...]  # member -> its value of `key` (empty without a sweep)
    data: str  # "shared" | "split"
    axes: tuple[str, ...]  # mesh axes the member axis is split over (() = replicated)
    traced: bool = True  # a float sweep (one vmap, traced values), else by groups of members

    @property
    def swept(self) -> bool:
        return bool(self.key)

    @property
    def grouped(self) -> bool:
        return self.swept and not self.traced

    def groups(self) -> list[tuple[Any, slice]]:
        """Each swept value in layout order with its block of members."""
        distinct = list(dict.fromkeys(self.values))
        per = self.size // len(distinct)
        return [(v, slice(g * per, (g + 1) * per)) for g, v in enumerate(distinct)]

    def members(self) -> list[dict[str, Any]]:
        """One description per member: index, seed and swept value."""
        out = []
        for p in range(self.size):
            m = {"member": p, "seed": self.seeds[p]}
            if self.swept:
                m[f"objective.{self.key}"] = self.values[p]
            out.append(m)
        return out

    def value_array(self) -> jax.Array:
        """[P] the swept values (zeros without a sweep), as the step's argument."""
        return jnp.asarray(self.values if self.swept and self.traced else np.zeros(self.size),
                           jnp.float32)


def parse_sweep(sweep: str) -> tuple[str, tuple[str, ...]]:
    """'objective.beta=0.1,0.5' -> ('beta', ('0.1', '0.5')); '' -> ('', ()). The values are
    read by `typed_values`, against the type of the setting."""
    sweep = sweep.strip()
    if not sweep:
        return "", ()
    name, eq, values = sweep.partition("=")
    name = name.strip()
    if not eq or not values.strip():
        raise errors.ConfigError(f"population.sweep={sweep!r}: expected "
                                 "'objective.KEY=v1,v2,...'", key="population.sweep")
    if not name.startswith("objective.") or name.count(".") != 1:
        raise errors.ConfigError(
            f"population.sweep={sweep!r}: only a setting of the objective (objective.KEY) can "
            "be swept inside one jit", key="population.sweep")
    out = tuple(v.strip() for v in values.split(","))
    return name.partition(".")[2], out


_BOOLS = {"true": True, "false": False}


def typed_values(key: str, texts: Sequence[str], default) -> tuple[Any, ...]:
    """The swept texts as values of the setting's type (that of its current value)."""
    def one(text):
        try:
            if isinstance(default, bool):
                return _BOOLS[text.lower()]
            if isinstance(default, int):
                return int(text)
            if isinstance(default, float):
                return float(text)
            return text
        except (KeyError, ValueError):
            kind = ("true or false" if isinstance(default, bool) else
                    "an integer" if isinstance(default, int) else "a number")
            raise errors.ConfigError(f"population.sweep: objective.{key}: {text!r} is not "
                                     f"{kind}", key="population.sweep") from None

    if not isinstance(default, (bool, int, float, str)):
        raise errors.ConfigError(
            f"population.sweep: objective.{key} is a {type(default).__name__}; only a number, "
            "a string or a flag can be swept", key="population.sweep")
    values = tuple(one(t) for t in texts)
    if len(set(values)) != len(values):
        raise errors.ConfigError(f"population.sweep: objective.{key}: a value is listed twice",
                                 key="population.sweep")
    return values


def from_config(cfg, mesh) -> Population | None:
    """The population a config asks for, or None for a single run (population.size = 1 and
    no sweep)."""
    c = cfg.population
    key, texts = parse_sweep(c.sweep)
    size = int(c.size)
    if size == 1 and not key:
        return None
    values = ()
    if key:
        if key not in cfg.objective:
            raise errors.ConfigError(
                f"population.sweep: objective {cfg.objective.name!r} has no setting {key!r}; "
                f"its settings: {', '.join(k for k in cfg.objective if k != 'name')}",
                key="population.sweep")
        values = typed_values(key, texts, cfg.objective[key])
        if size % len(values):
            raise errors.ConfigError(
                f"population.size={size} must be a multiple of the {len(values)} swept values "
                f"(every value gets the same seeds)", key="population.size")
    per_value = size // max(len(values), 1)
    seeds = tuple(int(cfg.seed) + p % per_value for p in range(size))
    member_values = tuple(values[p // per_value] for p in range(size)) if key else ()
    traced = not key or (isinstance(cfg.objective[key], float) and key != "name")
    n = mesh.shape[MEMBER_AXIS]
    # A grouped sweep slices the member axis by value: each block must divide over the axis.
    block = size if traced else per_value
    axes = (MEMBER_AXIS,) if n > 1 and block % n == 0 else ()
    chunk = int(c.eval_chunk)
    if axes and chunk and chunk % n:
        raise errors.ConfigError(
            f"population.eval_chunk={chunk} must be a multiple of the {n} devices of the mesh's "
            f"data axis that the {size} members are split over (or 0: all at once)",
            key="population.eval_chunk")
    pop = Population(size, seeds, key, member_values, str(c.data), axes, traced)
    if pop.traced:
        for value in values:  # every value is checked as a number before any compute
            member_objective(cfg, pop, value)
        if key:  # and the objective can be built from a traced value, as the step will
            jax.eval_shape(lambda v: (member_objective(cfg, pop, v), v)[1],
                           jnp.float32(values[0]))
    else:
        group_objectives(cfg, pop)
    return pop


def member_rules(rules, pop: Population | None):
    """The logical rules inside a member: the batch is not split over the member axes."""
    if pop is None or not pop.axes:
        return rules
    batch = tuple(a for a in rules.get("batch", ()) if a not in pop.axes)
    return {**rules, "batch": batch}


class _Section(dict):
    """An objective config section as a dict with attribute access (`section.name`), which can
    hold a traced value."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def member_section(cfg, pop: Population, value) -> dict:
    """The objective section of a member whose swept setting is `value`. For a sweep over
    `objective.name`: that objective's defaults, with the settings it shares with the config's
    objective (β) carried over."""
    section = cfg.objective.to_dict() if hasattr(cfg.objective, "to_dict") else dict(cfg.objective)
    if pop.key != "name":
        return _Section({**section, pop.key: value})
    try:
        fresh = config_lib.objective_config(value).to_dict()
    except errors.ConfigError as e:
        raise errors.ConfigError(f"population.sweep: objective.name={value!r}: {e}",
                                 key="population.sweep") from e
    return _Section({**fresh, **{k: v for k, v in section.items() if k in fresh and k != "name"}})


def member_objective(cfg, pop: Population, value):
    """The objective of a member whose swept setting is `value` (a number or a traced value)."""
    section = member_section(cfg, pop, value)
    try:
        if not pop.traced:  # a concrete value: checked as a config would be
            config_lib.objective_config(section["name"],
                                        **{k: v for k, v in section.items() if k != "name"})
        return objectives.make(section, chunk_size=cfg.logprobs.chunk_size)
    except jax.errors.ConcretizationTypeError as e:
        raise errors.ConfigError(
            f"population.sweep: objective {cfg.objective.name!r} needs objective.{pop.key} as a "
            "Python number when it is built, so it cannot be swept inside one jit; train one run "
            "per value instead", key="population.sweep") from e
    except (ValueError, TypeError) as e:
        if isinstance(e, errors.ConfigError) and e.key == "population.sweep":
            raise
        raise errors.ConfigError(f"population.sweep: objective.{pop.key}={value!r}: {e}",
                                 key="population.sweep") from e


def group_objectives(cfg, pop: Population) -> list:
    """Each block's objective (a grouped sweep), checked to be trainable side by side: the same
    data kind, online or not, reference use, trained module, objective-state structure and
    artifacts."""
    objs = [member_objective(cfg, pop, value) for value, _ in pop.groups()]
    first = objs[0]
    for (value, _), o in zip(pop.groups(), objs):
        same = {"data kind": (o.data, first.data),
                "online sampling": (o.online is None, first.online is None),
                "reference use": (o.uses_reference, first.uses_reference),
                "trained module": (o.model.name, first.model.name),
                "objective state": (jax.tree.structure(jax.eval_shape(o.init)),
                                    jax.tree.structure(jax.eval_shape(first.init))),
                "artifacts": (o.artifacts is None, first.artifacts is None)}
        for what, (a, b) in same.items():
            if a != b:
                raise errors.ConfigError(
                    f"population.sweep: objective.{pop.key}={value!r} differs from "
                    f"{pop.groups()[0][0]!r} in its {what} ({a} vs {b}); the members of one "
                    "population must be trainable side by side", key="population.sweep")
    return objs


def slice_members(tree, in_axes, sl: slice):
    """The members `sl` of the arguments mapped over axis 0 (in_axes as given to vmap: 0, None,
    or a dict of those)."""
    if in_axes is None:
        return tree
    if isinstance(in_axes, dict):
        return {k: slice_members(tree[k], in_axes.get(k), sl) for k in tree}
    return jax.tree.map(lambda x: x[sl], tree)


def by_groups(fn_of, pop: Population, objs, in_axes):
    """A grouped sweep's step: each block of members under `vmap(fn_of(objective))`, the
    outputs concatenated back in member order (one jit over all of them)."""
    blocks = list(zip((sl for _, sl in pop.groups()), objs))

    def run(*args):
        outs = [vmap(fn_of(obj), pop, in_axes)(
            *(slice_members(a, ax, sl) for a, ax in zip(args, in_axes))) for sl, obj in blocks]
        return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *outs)

    return run


def vmap(fn, pop: Population, in_axes, out_axes=0):
    """`jax.vmap` over the member axis, with the member axis on its mesh axes inside."""
    return jax.vmap(fn, in_axes=in_axes, out_axes=out_axes,
                    spmd_axis_name=(pop.axes if len(pop.axes) > 1 else pop.axes[0])
                    if pop.axes else None)


def stacked_shardings(shardings, pop: Population, mesh):
    """Shardings of a member-stacked tree: the member dim on the population's mesh axes, then
    each leaf's own spec."""
    lead = (pop.axes if len(pop.axes) > 1 else pop.axes[0]) if pop.axes else None

    def one(sh):
        return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(lead, *sh.spec))

    return jax.tree.map(one, shardings)


def member(tree, p: int):
    """Member p's slice of a member-stacked tree."""
    return jax.tree.map(lambda x: x[p], tree)


def chunks(size: int, chunk: int) -> list[slice]:
    """The member axis in blocks of `chunk` (0: one block of all), in order."""
    chunk = chunk or size
    return [slice(start, min(start + chunk, size)) for start in range(0, size, chunk)]


def to_global(batch, mesh, rules, pop: Population) -> dict[str, jax.Array]:
    """Each process's [P, rows, ...] member batches as global arrays: the member dim on the
    population's mesh axes, the rows on the batch axes."""
    lead = (pop.axes if len(pop.axes) > 1 else pop.axes[0]) if pop.axes else None
    out = {}
    for k, v in batch.items():
        v = np.asarray(v)
        if v.dtype == object:
            continue  # host-only fields (raw text) never go to devices
        rows = mesh_lib.batch_sharding(mesh, rules, v.ndim - 1).spec
        sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(lead, *rows))
        out[k] = jax.make_array_from_process_local_data(sharding, v)
    return out


def write_members(workdir: str, pop: Population) -> None:
    atomic.write_text(os.path.join(workdir, MEMBERS_FILE),
                      json.dumps({"size": pop.size, "data": pop.data,
                                  "members": pop.members()}, indent=1) + "\n")


def read_members(workdir: str) -> list[dict[str, Any]] | None:
    """The members a population run's workdir describes, or None for a single run."""
    path = os.path.join(workdir, MEMBERS_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)["members"]


class StackedIterator:
    """One data iterator per member (population.data = "split"): each next() is the members'
    batches stacked on a leading [P] axis. Checkpointable like the iterators it holds."""

    def __init__(self, iterators: Sequence):
        self._its = list(iterators)

    def __iter__(self):
        return self

    def __next__(self):
        batches = [next(it) for it in self._its]
        return {k: np.stack([b[k] for b in batches]) for k in batches[0]}

    def get_state(self):
        return {"members": [it.get_state() for it in self._its]}

    def set_state(self, state):
        members = state.get("members") if isinstance(state, dict) else None
        if not isinstance(members, list) or len(members) != len(self._its):
            raise errors.CheckpointError(
                f"the checkpoint's data state is not that of {len(self._its)} members' iterators "
                "(was it written by a run with another population.size or population.data?)")
        for it, s in zip(self._its, members):
            it.set_state(s)


def check_supported(cfg, objective, pop: Population) -> None:
    """Refuses what population training does not cover, naming it. Online members read the
    same prompts (they differ by the seeds of their samples and initialisations), and a sweep
    may not change how rollouts are drawn (the mixture weights, the number of samples)."""
    if not objective.online:
        return
    if pop.data == "split":
        raise config_lib.ConfigError(
            f"population.data=split: the members of online objective {objective.name!r} read "
            "the same prompts (their samples differ by seed); use population.data=shared",
            key="population.data")
    for value, _ in pop.groups() if pop.swept else ():
        spec = member_objective(cfg, pop, value).online
        if spec != objective.online:
            raise config_lib.ConfigError(
                f"population.sweep: objective.{pop.key}={value!r} changes how {objective.name!r} "
                f"draws its rollouts ({spec} vs {objective.online}); a population samples every "
                "member's rollout the same way, so sweep a setting of the loss instead",
                key="population.sweep")
