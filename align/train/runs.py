"""Runs as building blocks: the model a config trains, and a finished run's parameters, tokenizer
and data as the starting point (policy and reference) of the next one."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, NamedTuple

import jax

from align import atomic
from align import config as config_lib
from align import errors
from align import objectives
from align.models import transformer
from align.train import checkpoint as ckpt_lib
from align.train import optim
from align.train import population as population_lib
from align.train import state as state_lib

MODEL_FILE = "model.json"
# Model settings that only change how the computation runs, not the parameters.
EXECUTION_FIELDS = ("dtype", "remat", "attention")


class Trained(NamedTuple):
    """What a config trains, without data: the objective, the module and its state spec."""

    objective: Any
    model_def: state_lib.ModelDef
    optimizer: Any
    lr_fn: Any
    spec: state_lib.StateSpec


def trained(cfg, model_cfg: transformer.TransformerConfig, mesh, rules, objective=None,
            population=None) -> Trained:
    """The objective a config names, its module's definition, optimizer and sharded state spec
    (member-stacked for a population, align/train/population.py)."""
    if objective is None:
        objective = objectives.make(cfg.objective, chunk_size=cfg.logprobs.chunk_size)
    make_fn = objective.model.make_fn(model_cfg)
    model_def = state_lib.describe(make_fn)
    # Online objectives take epochs x minibatches optimizer steps per rollout (= train step).
    updates = cfg.online.epochs * cfg.online.minibatches if objective.online else 1
    optimizer, lr_fn = optim.make(cfg.optim, cfg.train.steps * updates,
                                  decay_mask=optim.decay_mask_from_names(model_def.names))
    spec = state_lib.create(model_def, make_fn, optimizer, objective, seed=cfg.seed, mesh=mesh,
                            rules=rules, population=population)
    return Trained(objective, model_def, optimizer, lr_fn, spec)


def resolve_workdir(path: str, workdir: str) -> str:
    """Another run's workdir named by this run's config (see `config.absolute_path`)."""
    return config_lib.absolute_path(path, workdir)


def write_model_config(workdir: str, model_cfg: transformer.TransformerConfig) -> None:
    atomic.write_text(os.path.join(workdir, MODEL_FILE),
                      json.dumps(dataclasses.asdict(model_cfg), indent=2, sort_keys=True) + "\n")


class Run(NamedTuple):
    """What a finished (or partly finished) run left in its workdir."""

    workdir: str
    cfg: Any
    model_cfg: transformer.TransformerConfig
    latest_step: int | None

    @property
    def finished(self) -> bool:
        return self.latest_step is not None and self.latest_step >= self.cfg.train.steps

    @property
    def parent(self) -> "Run | None":
        """The run this one started from (init.workdir), or None."""
        path = self.cfg.init.workdir
        if not path:
            return None
        # Configs written before paths were made absolute held it relative to this workdir.
        return read_run(path if os.path.isabs(path) else os.path.join(self.workdir, path))

    @property
    def data_dir(self) -> str:
        """Where its datasets are: its own data.data_dir, else those of the run it started from
        (a chained run reads its parent's data), else WORKDIR/data."""
        if self.cfg.data.data_dir:
            return self.cfg.data.data_dir
        parent = self.parent
        return parent.data_dir if parent is not None else os.path.join(self.workdir, "data")

    @property
    def tokenizer_path(self) -> str:
        """Its tokenizer, found the way the trainer found it (through the runs it started from)."""
        own = tokenizer_path(self.cfg)
        if own:
            return own
        parent = self.parent
        if parent is not None:
            return parent.tokenizer_path
        return os.path.join(self.data_dir, "tokenizer.model")


def pretrained_dir(cfg) -> str:
    """The Hugging Face checkpoint a config starts from (absolute), or ""."""
    path = cfg.init.get("pretrained", "")
    if path and not os.path.isdir(path):
        raise FileNotFoundError(f"init.pretrained={path!r} is not a directory (a Hugging Face "
                                "checkpoint: config.json, *.safetensors, a tokenizer)")
    return os.path.abspath(path) if path else ""


def tokenizer_path(cfg) -> str:
    """data.tokenizer_path, else a pretrained checkpoint's tokenizer, else "" (the run's own)."""
    return cfg.data.tokenizer_path or pretrained_dir(cfg)


def read_run(workdir: str) -> Run | None:
    """The run in `workdir`, or None if nothing has been started there."""
    cfg_path = os.path.join(workdir, "config.json")
    model_path = os.path.join(workdir, MODEL_FILE)
    if not (os.path.exists(cfg_path) and os.path.exists(model_path)):
        return None
    cfg = config_lib.config_from_json(cfg_path)
    with open(model_path) as f:
        model_cfg = transformer.TransformerConfig(**json.load(f))
    # By directory names: opening a Checkpointer would start JAX's backend, which a
    # multi-process run must not do before jax.distributed starts.
    steps = ckpt_lib.steps_in(os.path.join(workdir, "checkpoints"))
    return Run(workdir, cfg, model_cfg, steps[-1] if steps else None)


def require_finished(path: str, workdir: str) -> Run:
    run = read_run(resolve_workdir(path, workdir))
    if run is None or not run.finished:
        where = resolve_workdir(path, workdir)
        state = "has no run" if run is None else f"stopped at step {run.latest_step}"
        raise FileNotFoundError(
            f"init.workdir {where} {state}; finish that run first, or set init.config so it "
            "is run before this one")
    return run


def inherit_model(cfg_model, parent: transformer.TransformerConfig) -> transformer.TransformerConfig:
    """The parent's architecture with this config's execution settings; other differences are errors."""
    mine = dict(cfg_model)
    for field in dataclasses.fields(parent):
        name = field.name
        if name in EXECUTION_FIELDS or name not in mine:
            continue
        if name == "vocab_size" and mine[name] == 0:
            continue
        if mine[name] != getattr(parent, name):
            raise errors.ConfigError(
                f"model.{name}={mine[name]!r} differs from the run it starts from "
                f"({getattr(parent, name)!r}); parameters cannot be reused across architectures")
    return dataclasses.replace(parent, **{k: mine[k] for k in EXECUTION_FIELDS})


def is_population(run: Run) -> bool:
    """Whether a run trained a population of members (align/train/population.py)."""
    return run.cfg.population.size > 1 or bool(run.cfg.population.sweep)


def population_size(run: Run) -> int:
    """The number of members of a run (1 for a single run)."""
    return int(run.cfg.population.size) if is_population(run) else 1


def final_params(run: Run, mesh, rules, *, member: int | None = None, stacked: bool = False):
    """(ModelSpec, parameters, step) of a run's newest checkpoint, restored straight into this
    mesh's shardings.

    A population run needs `member` (that member's parameters, as a single run's) or
    `stacked=True` (every member's, with the leading member axis)."""
    if is_population(run):
        size = population_size(run)
        if member is None and not stacked:
            raise errors.ConfigError(
                f"the run in {run.workdir} is a population of {size} members; name one member "
                "(member=p) or take all of them stacked")
        if member is not None and not 0 <= member < size:
            raise errors.ConfigError(f"member={member}: the run in {run.workdir} has members "
                                     f"0..{size - 1}")
        pop = population_lib.from_config(run.cfg, mesh)
        t = trained(run.cfg, run.model_cfg, mesh, population_lib.member_rules(rules, pop),
                    population=pop)
    else:
        if member not in (None, 0):
            raise errors.ConfigError(f"member={member}: the run in {run.workdir} is a single "
                                     "run (member 0 only)")
        t = trained(run.cfg, run.model_cfg, mesh, rules)
    with ckpt_lib.Checkpointer(os.path.join(run.workdir, "checkpoints")) as ckpt:
        restored = ckpt.restore(t.spec.abstract)
    if restored is None:
        raise FileNotFoundError(f"no checkpoint in {run.workdir}/checkpoints")
    state, _, step = restored
    params = state["params"]
    if is_population(run) and member is not None:
        params = jax.tree.map(lambda x: x[member], params)
    return t.objective.model, params, step
