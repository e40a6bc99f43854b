"""`build(cfg, workdir) -> Setup`: everything a run needs, as one plain value.

A Setup holds the mesh and rules, the objective, the model definitions, the train state's
spec, the data, the frozen parameters (the reference), and the jitted step, eval, reference
and sampling functions, each jitted once. Training (`loop.train`), evaluation
(`evaluation`), benchmarks, experiments and `runs.final_params` all start from it.

With `population.size > 1` (align/train/population.py) the state, the steps and their metrics
carry a leading member axis: the steps are the single-run ones under `jax.vmap`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable

import jax

from align import atomic
from align import config as config_lib
from align import errors
from align import mesh as mesh_lib
from align import objectives
from align import samples as samples_lib
from align.data import pipeline, sources, token_report
from align.models import hf_checkpoint, specs, transformer
from align.objectives.base import Objective
from align.train import checkpoint as ckpt_lib
from align.train import metrics as metrics_lib
from align.train import online as online_lib
from align.train import population as population_lib
from align.train import runs
from align.train import state as state_lib
from align.train import step as step_lib

DATA_REPORT_FILE = "data_report.json"


@dataclasses.dataclass(frozen=True)
class Steps:
    """The jitted functions of a run (compiled on first call)."""

    train: Callable  # (state, global batch, frozen) -> (state, metrics)
    eval: Callable  # (state, global batch, frozen) -> {loss_sum, weight, parts}
    reference_fields: Callable | None  # (reference params, global batch) -> fields
    sample: Callable  # (params, prompt batch, key) -> {tokens, mask}
    sample_reference: Callable  # the same for the reference
    kl: Callable  # (params, reference params, prompt batch, samples) -> KL per sample
    prepare_rollout: Callable | None  # online: (params, obj state, rollout, frozen, key)
    gather: Callable  # (rollout, row indices) -> a minibatch, batch-sharded


@dataclasses.dataclass(frozen=True)
class Setup:
    cfg: Any
    workdir: str
    mesh: Any
    rules: Any
    objective: Objective
    model_cfg: transformer.TransformerConfig
    model_def: state_lib.ModelDef  # the module the objective trains
    lm_def: state_lib.ModelDef  # the language model (the reference, evaluation samples)
    spec: state_lib.StateSpec
    optimizer: Any
    lr_fn: Callable
    data: sources.RunData
    pad_id: int
    batch_size: int  # per process
    eval_batch_size: int  # per process
    parent: runs.Run | None  # the run this one starts from (init.workdir)
    start: tuple | None  # (ModelSpec, params) of init.workdir / init.pretrained, or None
    reference: Any  # frozen reference parameters (also used by evaluation), or None
    frozen: dict  # what the train step gets besides the state ({"reference": ...} in_step)
    eval_frozen: dict
    steps: Steps
    checkpointer: ckpt_lib.Checkpointer
    writer: metrics_lib.MetricWriter
    rollouts: Any = None  # online.Rollouts for online objectives
    population: population_lib.Population | None = None  # None: a single run
    reference_stacked: bool = False  # population: one reference per member (no start point)
    start_stacked: bool = False  # population started from a population: member p from member p
    memo: dict = dataclasses.field(default_factory=dict)  # values computed once per run

    @property
    def primary(self) -> bool:
        return jax.process_index() == 0

    @property
    def is_policy(self) -> bool:
        return self.objective.model.is_policy

    def close(self) -> None:
        """Closes the checkpointer and the metric writer (both, even if the first fails)."""
        try:
            self.checkpointer.close()
        finally:
            self.writer.close()


def model_config(cfg, vocab_size: int) -> transformer.TransformerConfig:
    model = dict(cfg.model)
    if not model["vocab_size"]:
        model["vocab_size"] = vocab_size
    elif model["vocab_size"] < vocab_size:
        raise config_lib.ConfigError(f"model.vocab_size={model['vocab_size']} is smaller than "
                                     f"the tokenizer's {vocab_size}")
    return transformer.transformer_config(model)


def check_lengths(cfg, objective: Objective) -> None:
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
    if (objective.model.is_policy and cfg.eval.num_samples
            and c.max_prompt_len + cfg.eval.max_new_tokens > model_len):
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


def per_process(global_batch: int, divisor: int, what: str) -> int:
    if global_batch % divisor:
        raise config_lib.ConfigError(f"{what}={global_batch} must be a multiple of {divisor} "
                                     "(the devices the batch is split over)")
    if global_batch % jax.process_count():
        raise config_lib.ConfigError(f"{what}={global_batch} must be a multiple of the "
                                     f"{jax.process_count()} processes")
    return global_batch // jax.process_count()


def kind_settings(cfg, kind: str) -> dict:
    """The data kind's own settings (e.g. lists: list_size) from the config's data section."""
    return {k: cfg.data[k] for k in pipeline.get_kind(kind).settings if k in cfg.data}


def report_data(cfg, workdir: str, objective: Objective, data: sources.RunData) -> None:
    """What tokenization does to the training split (truncations, drops), once per workdir:
    printed and written to WORKDIR/data_report.json."""
    path = os.path.join(workdir, DATA_REPORT_FILE)
    if os.path.exists(path):
        return
    c, kind = cfg.data, objective.data
    source = data.sources.get(kind, {}).get("train")
    if source is None:
        return
    report = token_report.token_report(source, data.tokenizer, kind, c.max_len,
                                       c.max_prompt_len, **kind_settings(cfg, kind))
    text = token_report.format_token_report(report)
    if report["dropped"]:
        # The pipeline raises on such records: stop now, before any compute, not midway.
        raise errors.DataError(f"{report['dropped']} training records cannot become examples; "
                               f"data (train split) {text}")
    print("data (train split) " + text, flush=True)
    os.makedirs(workdir, exist_ok=True)
    atomic.write_text(path, json.dumps(report, indent=1) + "\n")


def _start(cfg, mesh, rules, parent, tokenizer, pop=None):
    """(model config, (ModelSpec, params) to start from or None, whether those params are
    member-stacked: a population that starts from a population, member p from member p)."""
    pretrained = runs.pretrained_dir(cfg)
    if parent is not None:
        model_cfg = runs.inherit_model(cfg.model, parent.model_cfg)
        if runs.is_population(parent):
            size = runs.population_size(parent)
            if pop is None or pop.size != size:
                raise config_lib.ConfigError(
                    f"init.workdir {parent.workdir} is a population of {size} members; a run "
                    f"that starts from it must be one too, member p from member p "
                    f"(population.size={size}; now {pop.size if pop else 1})",
                    key="population.size")
            spec, params, _ = runs.final_params(parent, mesh, rules, stacked=True)
            return model_cfg, (spec, params), True
        spec, params, _ = runs.final_params(parent, mesh, rules)
        return model_cfg, (spec, params), False
    if pretrained:
        model_cfg, params = hf_checkpoint.load_pretrained(
            pretrained, mesh, rules,
            overrides={k: cfg.model[k] for k in runs.EXECUTION_FIELDS + ("scan_layers",)})
        if tokenizer.vocab_size > model_cfg.vocab_size:
            raise config_lib.ConfigError(
                f"the tokenizer's {tokenizer.vocab_size} ids exceed the vocabulary of the "
                f"checkpoint in {pretrained} ({model_cfg.vocab_size})")
        return model_cfg, (specs.language_model(), params), False
    return model_config(cfg, tokenizer.vocab_size), None, False


def make_steps(cfg, trained: runs.Trained, lm_def, mesh, rules, *, reference_sh,
               in_step: bool, eos_id: int, population=None, reference_stacked: bool = False
               ) -> Steps:
    """The jitted functions of a run that trains `trained` (benchmarks build them this way too).

    reference_sh: the reference parameters' shardings; in_step: whether the train step gets
    the reference (reference.mode=in_step) or reads its fields from the batch. population: the
    steps take and give member-stacked states (`population_steps`).
    """
    if population is not None:
        return population_steps(cfg, trained, lm_def, mesh, rules, population,
                                reference_sh=reference_sh, in_step=in_step, eos_id=eos_id,
                                reference_stacked=reference_stacked)
    objective, model_def = trained.objective, trained.model_def
    traced = lambda fn: mesh_lib.traced_under(fn, mesh, rules)
    common = dict(model_def=model_def, objective=objective, ref_def=lm_def)

    def kl(p, r, b, s):
        return samples_lib.sequence_kl(state_lib.bind(model_def, p), state_lib.bind(lm_def, r),
                                       b, s, chunk_size=cfg.logprobs.chunk_size)

    reference_fields = prepare_rollout = None
    if objective.reference_fields is not None:
        reference_fields = jax.jit(traced(lambda r, b: objective.reference_fields(
            state_lib.bind(lm_def, r), b)))
    if objective.online:
        prepare_rollout = jax.jit(traced(lambda *a: step_lib.prepare_rollout(*a, **common)))
    uses_reference = objective.uses_reference
    return Steps(
        train=step_lib.jit_train_step(
            trained.spec.shardings, {"reference": reference_sh} if in_step else {}, mesh,
            rules, optimizer=trained.optimizer, lr_fn=trained.lr_fn,
            accum=cfg.optim.accum_steps, online=bool(objective.online), **common),
        eval=step_lib.jit_eval_step(trained.spec.shardings,
                                    {"reference": reference_sh} if uses_reference else {},
                                    mesh, rules, **common),
        reference_fields=reference_fields,
        sample=jax.jit(traced(_sampler(cfg, model_def, eos_id))),
        sample_reference=jax.jit(traced(_sampler(cfg, lm_def, eos_id))),
        kl=jax.jit(traced(kl)),
        prepare_rollout=prepare_rollout,
        gather=jax.jit(lambda tree, idx: jax.tree.map(lambda x: x[idx], tree),
                       out_shardings=mesh_lib.batch_sharding(mesh, rules)))


def _sampler(cfg, model_def, eos_id: int):
    """(params, prompt batch, key) -> samples, with the eval.* settings."""
    e = cfg.eval

    def fn(p, b, k):
        return samples_lib.sample_fn(
            state_lib.bind(model_def, p), b, k, max_new_tokens=e.max_new_tokens,
            temperature=e.temperature, top_k=e.top_k, eos_id=eos_id)
    return fn


def population_steps(cfg, trained: runs.Trained, lm_def, mesh, rules, pop, *, reference_sh,
                     in_step: bool, eos_id: int, reference_stacked: bool) -> Steps:
    """The single-run steps under `jax.vmap` over the member axis, jitted once.

    train / eval take (member-stacked state, batch, frozen) as in a single run, the batch
    shared by all members ([B, ...]) or, with population.data = "split", one per member
    ([P, B, ...]); sample / kl take member-stacked parameters and [P] keys. A swept float
    enters the step as a traced number (population.member_objective); any other swept setting
    runs each block of members with its own objective (population.by_groups).
    """
    objective, model_def = trained.objective, trained.model_def
    traced = lambda fn: mesh_lib.traced_under(fn, mesh, rules)
    vmap = lambda fn, axes: population_lib.vmap(fn, pop, axes)
    stack_sh = lambda sh: population_lib.stacked_shardings(sh, pop, mesh)
    repl = mesh_lib.replicated(mesh)
    state_sh = trained.spec.shardings
    values, values_sh = pop.value_array(), stack_sh(repl)
    ref_axis = 0 if reference_stacked else None
    ref_sh = stack_sh(reference_sh) if reference_stacked else reference_sh
    online = bool(objective.online)
    split = pop.data == "split" or online  # an online step trains each member on its rollout
    batch_sh = mesh_lib.batch_sharding(mesh, rules)
    train_batch_sh = stack_sh(batch_sh) if split else batch_sh

    def member_objective(value):
        return population_lib.member_objective(cfg, pop, value) if pop.swept else objective

    def train_of(obj):
        def train(state, batch, frozen, value):
            return step_lib.train_step(
                state, batch, frozen, model_def=model_def,
                objective=obj if obj is not None else member_objective(value),
                optimizer=trained.optimizer, lr_fn=trained.lr_fn, accum=cfg.optim.accum_steps,
                ref_def=lm_def, online=online)
        return train

    def evaluate_of(obj):
        def evaluate(state, batch, frozen, value):
            return step_lib.eval_step(
                state, batch, frozen, model_def=model_def,
                objective=obj if obj is not None else member_objective(value), ref_def=lm_def)
        return evaluate

    if pop.grouped:  # each block of members with its own objective, one jit for all
        objs = population_lib.group_objectives(cfg, pop)
        members = lambda fn_of, axes: population_lib.by_groups(fn_of, pop, objs, axes)
    else:
        members = lambda fn_of, axes: vmap(fn_of(None), axes)
    train_frozen = {"reference": ref_axis} if in_step else {}
    eval_frozen = {"reference": ref_axis} if objective.uses_reference else {}
    train_jit = jax.jit(
        traced(members(train_of, (0, 0 if split else None, train_frozen, 0))),
        in_shardings=(state_sh, train_batch_sh, {"reference": ref_sh} if in_step else {},
                      values_sh),
        out_shardings=(state_sh, repl), donate_argnums=0)
    eval_jit = jax.jit(
        traced(members(evaluate_of, (0, None, eval_frozen, 0))),
        in_shardings=(state_sh, batch_sh, {"reference": ref_sh} if eval_frozen else {},
                      values_sh),
        out_shardings=repl)

    def kl(p, r, b, s):
        return samples_lib.sequence_kl(state_lib.bind(model_def, p), state_lib.bind(lm_def, r),
                                       b, s, chunk_size=cfg.logprobs.chunk_size)

    def prepare_of(obj):
        def prepare(params, obj_state, rollout, frozen, key, value):
            return step_lib.prepare_rollout(
                params, obj_state, rollout, frozen, key, model_def=model_def,
                objective=obj if obj is not None else member_objective(value), ref_def=lm_def)
        return prepare

    prepare_rollout = None
    if online:
        prepare_jit = jax.jit(traced(members(prepare_of, (0, 0, 0, train_frozen, 0, 0))))
        prepare_rollout = lambda p, o, r, f, k: prepare_jit(p, o, r, f, k, values)

    reference_fields = None
    if objective.reference_fields is not None:
        reference_fields = jax.jit(traced(lambda r, b: objective.reference_fields(
            state_lib.bind(lm_def, r), b)))
    def population_sampler(model_def_):
        e = cfg.eval

        def fn(params, b, keys):
            return samples_lib.population_sample_fn(
                lambda p: state_lib.bind(model_def_, p), params, b, keys,
                max_new_tokens=e.max_new_tokens, temperature=e.temperature, top_k=e.top_k,
                eos_id=eos_id, vmap=lambda f, **kw: population_lib.vmap(f, pop, kw["in_axes"],
                                                                         kw.get("out_axes", 0)))
        return jax.jit(traced(fn))

    return Steps(
        train=lambda state, batch, frozen: train_jit(state, batch, frozen, values),
        eval=lambda state, batch, frozen: eval_jit(state, batch, frozen, values),
        reference_fields=reference_fields,
        sample=population_sampler(model_def),
        sample_reference=(population_sampler(lm_def) if reference_stacked
                          else jax.jit(traced(_sampler(cfg, lm_def, eos_id)))),
        kl=jax.jit(traced(vmap(kl, (0, ref_axis, None, 0)))),
        prepare_rollout=prepare_rollout,
        # Rows of every member's rollout ([P, rows, ...]).
        gather=jax.jit(lambda tree, idx: jax.tree.map(lambda x: x[:, idx], tree),
                       out_shardings=stack_sh(batch_sh)))


def reference_shardings(trained: runs.Trained, lm_def, mesh, rules):
    """Shardings of one reference (a language model) beside the trained module (one member's,
    in a population)."""
    del trained
    return mesh_lib.tree_shardings(lm_def.abstract_params, lm_def.names, rules, mesh)


def language_model_def(trained: runs.Trained, model_cfg):
    """The definition of the language model (the reference, evaluation samples): the trained
    module's own when it is one."""
    lm_spec = specs.language_model()
    if trained.objective.model.name == lm_spec.name:
        return trained.model_def
    return state_lib.describe(lm_spec.make_fn(model_cfg))


def build(cfg, workdir: str, *, devices=None) -> Setup:
    """Everything one run needs, from a validated config; refuses bad input before compute."""
    workdir = os.path.abspath(workdir)
    cfg = config_lib.absolute_paths(cfg, workdir)
    objective = objectives.make(cfg.objective, chunk_size=cfg.logprobs.chunk_size)
    check_lengths(cfg, objective)
    if cfg.init.workdir and cfg.init.pretrained:
        raise config_lib.ConfigError(
            "set init.workdir (start from a run) or init.pretrained (start from a Hugging Face "
            "checkpoint), not both")
    if objective.online and cfg.reference.mode != "in_step":
        raise config_lib.ConfigError("online objectives score fresh samples each step: "
                                     "reference.mode must be 'in_step'")
    mesh_lib.initialize_distributed(cfg.distributed)
    mesh = mesh_lib.make_mesh(cfg.mesh, devices)
    rules = mesh_lib.logical_rules(cfg.mesh.rules)
    pop = population_lib.from_config(cfg, mesh)
    if pop is not None:
        population_lib.check_supported(cfg, objective, pop)
        rules = population_lib.member_rules(rules, pop)
    parent = runs.require_finished(cfg.init.workdir, workdir) if cfg.init.workdir else None

    is_policy = objective.model.is_policy
    kinds = {objective.data, "sft"} | ({"prompts"} if is_policy else set())
    data = sources.prepare(
        cfg, workdir, kinds=sorted(kinds),
        data_dir=parent.data_dir if parent and not cfg.data.data_dir else "",
        tokenizer_path=parent.tokenizer_path if parent else runs.tokenizer_path(cfg))
    tok = data.tokenizer
    pad_id = tok.pad_id if cfg.data.pad_id < 0 else int(cfg.data.pad_id)
    if jax.process_index() == 0:
        report_data(cfg, workdir, objective, data)
    model_cfg, start, start_stacked = _start(cfg, mesh, rules, parent, tok, pop)

    trained = runs.trained(cfg, model_cfg, mesh, rules, objective, population=pop)
    model_def, optimizer, lr_fn, spec = trained[1:]
    lm_def = language_model_def(trained, model_cfg)

    divisor = mesh_lib.batch_divisor(mesh, rules)
    batch_size = per_process(cfg.data.batch_size, divisor, "data.batch_size")
    if cfg.data.batch_size % (divisor * cfg.optim.accum_steps):
        raise config_lib.ConfigError(
            f"data.batch_size={cfg.data.batch_size} must split into optim.accum_steps="
            f"{cfg.optim.accum_steps} microbatches of a multiple of {divisor} rows")
    eval_batch_size = per_process(cfg.data.eval_batch_size, divisor, "data.eval_batch_size")

    reference = None
    if is_policy and (objective.uses_reference or start is not None):
        # The language model inside the starting point (or the freshly initialised policy).
        src_spec, src_params = start if start is not None else (
            objective.model, spec.init_fn()["params"])
        if src_spec.language_model is None:
            raise config_lib.ConfigError(
                f"init.workdir holds a {src_spec.name!r} model, which has no language model to "
                f"start the {objective.name!r} policy from")
        reference = src_spec.language_model(src_params)
    # A population without a start point has one reference per member (its own initial
    # parameters), as has one that starts from a population; with one start point, all
    # members share the reference.
    reference_stacked = (pop is not None and reference is not None
                         and (start is None or start_stacked))
    if reference_stacked and cfg.reference.mode == "cached":
        raise config_lib.ConfigError(
            "population.size > 1 with reference.mode=cached needs one reference for all members: "
            "start them from a run (init.workdir) or a checkpoint (init.pretrained), or use "
            "reference.mode=in_step", key="reference.mode")
    in_step = objective.uses_reference and cfg.reference.mode == "in_step"
    frozen = {"reference": reference} if in_step else {}
    eval_frozen = {"reference": reference} if objective.uses_reference else {}
    steps = make_steps(cfg, trained, lm_def, mesh, rules, in_step=in_step, eos_id=tok.eos_id,
                       reference_sh=reference_shardings(trained, lm_def, mesh, rules),
                       population=pop, reference_stacked=reference_stacked)

    checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                                         keep=cfg.train.keep_checkpoints)
    writer = metrics_lib.MetricWriter(workdir, is_primary=jax.process_index() == 0,
                                      members=pop.size if pop is not None else 0)
    if jax.process_index() == 0:
        runs.write_model_config(workdir, model_cfg)
        if pop is not None:
            population_lib.write_members(workdir, pop)
    setup = Setup(
        cfg=cfg, workdir=workdir, mesh=mesh, rules=rules, objective=objective,
        model_cfg=model_cfg, model_def=model_def, lm_def=lm_def, spec=spec, optimizer=optimizer,
        lr_fn=lr_fn, data=data, pad_id=pad_id, batch_size=batch_size,
        eval_batch_size=eval_batch_size, parent=parent, start=start, reference=reference,
        frozen=frozen, eval_frozen=eval_frozen, steps=steps, checkpointer=checkpointer,
        writer=writer, population=pop, reference_stacked=reference_stacked,
        start_stacked=start_stacked)
    if objective.online:
        setup = dataclasses.replace(setup, rollouts=online_lib.Rollouts(setup))
    return setup


def batches(setup: Setup, kind: str, split: str, *, train: bool, drop_remainder: bool = True,
            batch_size: int | None = None, seed: int | None = None):
    """This process's batches of a data kind and split: shuffled (by `seed`, default the
    config's) and endless when `train`."""
    c = setup.cfg.data
    return pipeline.batches(
        kind, setup.data.sources[kind][split], setup.data.tokenizer,
        batch_size=batch_size or (setup.batch_size if train else setup.eval_batch_size),
        max_len=c.max_len, max_prompt_len=c.max_prompt_len,
        seed=setup.cfg.seed if seed is None else seed, shuffle=train,
        num_epochs=None if train else 1, drop_remainder=drop_remainder, pad_id=setup.pad_id,
        **kind_settings(setup.cfg, kind))


def prompt_batches(setup: Setup, split: str, *, batch_size: int, train: bool):
    """Global prompt batches, the same on every process (samples are gathered on every host)."""
    c = setup.cfg.data
    return pipeline.batches(
        "prompts", setup.data.prompts[split], setup.data.tokenizer, batch_size=batch_size,
        max_len=c.max_len, max_prompt_len=c.max_prompt_len, seed=setup.cfg.seed, shuffle=train,
        num_epochs=None if train else 1, drop_remainder=True, pad_id=setup.pad_id,
        process_index=0, process_count=1)
