"""The config schema: every key's default, type, choices and bounds, the objective sections
registered by objectives, and checking a config against them (`validate`).

Dimension letters: none (this module handles no arrays).

`default_config()` is the schema: every key, its default and (through the default's type) its
type. Unknown keys, wrong types and values outside `CHOICES` or `BOUNDS` are errors that name
the key, before any compute. The `objective` section is open: its keys beyond `name` come from
the schema registered for that objective name. `mesh.rules` is open too: any logical axis name
may be mapped to mesh axes. Loading files and overrides is align/config.py's job.
"""

from __future__ import annotations

import copy
import importlib
import difflib
from typing import Any, Mapping, Sequence

import ml_collections
import numpy as np

from align import settings as settings_lib
from align.errors import ConfigError
from align.settings import Bound

ConfigDict = ml_collections.ConfigDict

# ----------------------------------------------------------------------------- schema

CHOICES: dict[str, tuple] = {
    "model.dtype": ("float32", "bfloat16"),
    "model.remat": ("none", "full", "dots"),
    "model.mlp_activation": ("silu", "gelu_tanh"),
    "model.rope_scaling": ("none", "llama3"),
    "model.attention": ("einsum", "dot_product_attention"),
    "data.source": ("reviews", "tfds", "hh_rlhf", "tldr", "ultrafeedback"),
    "data.tokenizer_type": ("unigram", "bpe"),
    "data.bad_rows": ("error", "skip"),
    "data.tokenize": ("auto", "separate", "joint"),
    "reference.mode": ("in_step", "cached"),
    "online.scorer": ("gold", "reward_model", "preference_model"),
    "population.data": ("shared", "split"),
}

# Numeric ranges: every number in the schema outside `objective` has one (the objective's come
# from its settings dataclass). A value outside fails before any compute, naming the key.
_POS, _NONNEG, _COUNT, _UNIT = Bound(gt=0), Bound(ge=0), Bound(ge=1), Bound(ge=0, le=1)
BOUNDS: dict[str, Bound] = {
    "seed": _NONNEG,
    "model.vocab_size": _NONNEG, "model.d_model": _COUNT, "model.n_layers": _COUNT,
    "model.n_heads": _COUNT, "model.n_kv_heads": _COUNT, "model.d_ff": _COUNT,
    "model.head_dim": _NONNEG, "model.max_len": _COUNT, "model.rope_theta": _POS,
    "model.norm_eps": _POS, "model.init_std": _POS, "model.rope_scaling_factor": _POS,
    "model.rope_low_freq_factor": _POS, "model.rope_high_freq_factor": _POS,
    "model.rope_original_max_len": _COUNT,
    "data.max_len": Bound(ge=2), "data.max_prompt_len": _COUNT, "data.batch_size": _COUNT,
    "data.eval_batch_size": _COUNT, "data.vocab_size": Bound(ge=8), "data.pad_id": Bound(ge=-1),
    "data.num_train": _COUNT, "data.num_test": _COUNT, "data.num_prompts": _COUNT,
    "data.list_size": Bound(ge=2),
    "task.seed": _NONNEG, "task.temperature": _NONNEG, "task.length_bias": Bound(),
    "task.filler_bias": Bound(), "task.intransitive": _NONNEG, "task.min_sentences": _NONNEG,
    "task.filler_penalty": _NONNEG,
    "online.epochs": _COUNT, "online.minibatches": _COUNT, "online.max_new_tokens": _COUNT,
    "online.temperature": _POS,
    "optim.lr": _POS, "optim.warmup_steps": _NONNEG, "optim.decay_steps": _NONNEG,
    "optim.min_lr_ratio": _UNIT, "optim.b1": Bound(ge=0, lt=1), "optim.b2": Bound(ge=0, lt=1),
    "optim.eps": _POS, "optim.weight_decay": _NONNEG, "optim.grad_clip": _NONNEG,
    "optim.accum_steps": _COUNT,
    "train.steps": _COUNT, "train.log_every": _COUNT, "train.eval_every": _NONNEG,
    "train.checkpoint_every": _COUNT, "train.keep_checkpoints": _COUNT,
    "eval.num_batches": _COUNT, "eval.num_samples": _NONNEG, "eval.max_new_tokens": _COUNT,
    "eval.temperature": _POS, "eval.top_k": _NONNEG, "eval.show_samples": _NONNEG,
    "mesh.data": Bound(ge=-1), "mesh.fsdp": Bound(ge=-1), "mesh.tensor": Bound(ge=-1),
    "distributed.num_processes": _NONNEG, "distributed.process_id": Bound(ge=-1),
    "distributed.heartbeat_timeout_s": _COUNT,
    "logprobs.chunk_size": _NONNEG,
    "population.size": _COUNT, "population.eval_chunk": _NONNEG,
}

# Sections whose keys are not fixed: path -> the type every value must have.
OPEN_SECTIONS: dict[str, type] = {"mesh.rules": str}

OBJECTIVE_SCHEMAS: dict[str, ConfigDict] = {}
OBJECTIVE_CHOICES: dict[str, dict[str, tuple]] = {}
OBJECTIVE_BOUNDS: dict[str, dict[str, Bound]] = {}


def default_config() -> ConfigDict:
    """Every known key with its default; the default's type is the key's type."""
    c = ConfigDict()
    c.seed = 0
    c.model = ConfigDict(dict(
        vocab_size=0,  # 0 = take from the tokenizer
        d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=192,
        head_dim=0,  # 0 = d_model // n_heads
        max_len=128, rope_theta=10000.0, norm_eps=1e-6, tie_embeddings=True,
        dtype="float32", remat="none", scan_layers=False, init_std=0.02,
        attention="einsum",  # or "dot_product_attention" (jax.nn's; cuDNN on GPU)
        # Families beyond LLaMA (set by a Hugging Face import; see third_party/hf_layouts.py):
        qkv_bias=False,  # Qwen2
        mlp_activation="silu",  # "gelu_tanh": Gemma's GeGLU
        norm_plus_one=False, embed_scale=False,  # Gemma: (1 + scale) norms, √d embeddings
        rope_scaling="none",  # "llama3": Llama 3.1's frequency scaling, with:
        rope_scaling_factor=8.0, rope_low_freq_factor=1.0, rope_high_freq_factor=4.0,
        rope_original_max_len=8192))
    c.data = ConfigDict(dict(
        source="reviews", tfds_name="",
        data_dir="",  # "" = <workdir>/data
        max_len=64, max_prompt_len=16,
        batch_size=32,  # global, over all processes
        eval_batch_size=64,
        tokenizer_path="",  # "" = train one into the workdir
        vocab_size=128, tokenizer_type="unigram",
        pad_id=-1,  # -1 = the tokenizer's pad id
        num_train=20000, num_test=512, num_prompts=512,
        list_size=4,  # K responses per prompt for listwise objectives
        # Public sources (hh_rlhf, tldr, ultrafeedback; see align/data/public.py):
        manual_dir="",  # "" = download the original files; else a directory holding them
        subsets="",  # comma-separated subsets ("" = the source's default set)
        bad_rows="error",  # "error": stop at the first bad row; "skip": skip and count them
        template="hh",  # chat template: "hh", "chatml", or a JSON object (align/data/chat.py)
        tokenize="auto"))  # prompt + completion encoded "separate" or "joint"; auto = separate
                           # for reviews / tfds (as their results were made), joint for public
    c.task = ConfigDict(dict(
        seed=0, temperature=1.0, length_bias=0.0, filler_bias=0.0, intransitive=0.0,
        # > 0: the gold reward divides a completion's sentiment by at least this many
        # sentences (align/tasks/reviews.py), so short completions cannot win on length.
        min_sentences=0,
        # The gold reward's cost per filler phrase; 0 makes filler a pure spoiler, so that
        # adding one leaves gold unchanged (the SEAL rewrites, align/analysis/seal.py).
        filler_penalty=0.1))
    c.objective = ConfigDict(dict(name="sft"))
    c.init = ConfigDict(dict(
        # Start from another run's final parameters (the policy, and the reference):
        # workdir = that run's workdir; "" = random initialisation. Relative to the current
        # directory; "{workdir}/sft" is inside this run's workdir. If `config` is set and that
        # run has not finished, it is run first (so one command can chain SFT -> preference
        # training).
        workdir="", config="", overrides="",  # overrides: "a.b=v;c=w" for the config above
        # Or start from a Hugging Face checkpoint directory (config.json, *.safetensors and a
        # tokenizer.json or tokenizer.model): its architecture replaces the model section
        # except dtype, remat, attention and scan_layers, and its tokenizer is used unless
        # data.tokenizer_path says otherwise.
        pretrained=""))
    c.online = ConfigDict(dict(
        # Online objectives: who scores the samples (the synthetic world's gold reward and
        # labeler, or a finished reward / preference model run in scorer_workdir), and how
        # each rollout is used: epochs x minibatches optimizer steps.
        scorer="gold", scorer_workdir="", epochs=1, minibatches=1,
        max_new_tokens=48, temperature=1.0))
    c.reference = ConfigDict(dict(
        # in_step: frozen reference parameters evaluated inside the jitted step;
        # cached: its log-probs precomputed once into the workdir, keyed by a fingerprint.
        mode="in_step"))
    c.optim = ConfigDict(dict(
        lr=1e-3, warmup_steps=50,
        decay_steps=0,  # 0 = train.steps
        min_lr_ratio=0.1, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.01, grad_clip=1.0,
        accum_steps=1))
    c.train = ConfigDict(dict(
        steps=300, log_every=10, eval_every=100, checkpoint_every=100, keep_checkpoints=3,
        progress=True))
    c.eval = ConfigDict(dict(
        num_batches=2,
        num_samples=64,  # prompts sampled at each evaluation; 0 = no sampling evaluation
        max_new_tokens=48, temperature=1.0, top_k=0,
        show_samples=4))
    c.mesh = ConfigDict(dict(
        data=-1,  # -1 = all devices not taken by the other axes
        fsdp=1, tensor=1,
        # logical axis -> mesh axes: "" = replicated, "a,b" = split over several mesh axes.
        rules=dict(embed="fsdp", mlp="tensor", heads="tensor", kv_heads="tensor",
                   vocab="tensor", head_dim="", norm="", layers="", pref="",
                   batch="data,fsdp")))
    c.distributed = ConfigDict(dict(
        # ""/0/-1 = take from the environment, or run as a single process.
        coordinator_address="", num_processes=0, process_id=-1,
        # Seconds without a heartbeat after which a process counts as dead and every other
        # process stops (with align/supervise.py's message naming it).
        heartbeat_timeout_s=100))
    c.logprobs = ConfigDict(dict(chunk_size=0))
    c.population = ConfigDict(dict(
        # P members trained in one jit (align/train/population.py): size = P; sweep =
        # "objective.KEY=v1,v2,..." gives each value P / (number of values) members, seeds
        # seed, seed + 1, ... in every value's block; data = "shared" (one data order for all)
        # or "split" (member with seed s reads the order of seed s); eval_chunk = members
        # sampled and scored at once in evaluation (0 = all; smaller bounds its memory).
        size=1, sweep="", data="shared", eval_chunk=16))
    return c


def register_objective_schema(name: str, defaults: Mapping[str, Any], *,
                              choices: Mapping[str, tuple] | None = None) -> None:
    """Declares the settings (beyond `name`) that `objective.name = name` accepts."""
    defaults = dict(defaults)
    if "name" in defaults:
        raise ConfigError(f"objective schema {name!r}: 'name' is reserved, do not declare it")
    for key, value in defaults.items():
        if value is None:
            raise ConfigError(f"objective schema {name!r}: key {key!r} needs a typed default, "
                              "not None")
    for key, allowed in (choices or {}).items():
        if key not in defaults:
            raise ConfigError(f"objective schema {name!r}: choices given for undeclared key {key!r}")
        if defaults[key] not in allowed:
            raise ConfigError(f"objective schema {name!r}: default {defaults[key]!r} of {key!r} "
                              f"is not among its choices {allowed}")
    OBJECTIVE_SCHEMAS[name] = ConfigDict(defaults)
    OBJECTIVE_CHOICES[name] = {k: tuple(v) for k, v in (choices or {}).items()}
    OBJECTIVE_BOUNDS[name] = {}


def register_objective_settings(name: str, settings_cls) -> None:
    """Declares `objective.name = name`'s settings from its settings dataclass: the keys and
    defaults, choices and numeric bounds of its fields (see align/settings.py)."""
    bounds = settings_lib.bounds(settings_cls)
    choices = {k: b.choices for k, b in bounds.items() if b.choices is not None}
    register_objective_schema(name, settings_lib.schema(settings_cls), choices=choices)
    OBJECTIVE_BOUNDS[name] = {k: b for k, b in bounds.items() if b.choices is None}


register_objective_schema("sft", {})


def objective_config(name: str, **settings: Any) -> ConfigDict:
    """An `objective` section: the named objective's defaults with `settings` applied, checked."""
    return ConfigDict(validate({"objective": {"name": name, **settings}}).objective.to_dict())


def external_objective_module(name: str):
    """The module of an objective named `package.module:name` (defined outside align), with its
    settings registered. The module lists `OBJECTIVES = {name: make}` and, when the objective
    has settings, `SETTINGS = {name: settings dataclass}`, as align's own objective modules do."""
    module_name, _, attr = name.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"objective.name={name!r}: an objective outside align is named "
                          "package.module:name", key="objective.name")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"objective.name={name!r}: cannot import {module_name!r} ({e}); is "
                          "its package on PYTHONPATH or installed?", key="objective.name") from e
    found = getattr(module, "OBJECTIVES", {})
    if attr not in found:
        raise ConfigError(f"objective.name={name!r}: {module_name}.OBJECTIVES has no {attr!r}; "
                          f"it has {sorted(found)}", key="objective.name")
    if name not in OBJECTIVE_SCHEMAS:
        settings_cls = getattr(module, "SETTINGS", {}).get(attr)
        if settings_cls is None:
            register_objective_schema(name, {})
        else:
            register_objective_settings(name, settings_cls)
    return module


def _objective_schema(name: Any) -> dict:
    """The registered defaults for an objective (a ConfigError naming the valid ones if none)."""
    if not isinstance(name, str):
        raise ConfigError(f"config key 'objective.name' expects str, got {show(name)}",
                          key="objective.name")
    if ":" in name:
        external_objective_module(name)
    if name not in OBJECTIVE_SCHEMAS:
        # Objectives register their settings here when `align.objectives` is imported (the
        # configs, the trainer and the CLI import it); this module imports no objective.
        known = sorted(OBJECTIVE_SCHEMAS)
        raise ConfigError(f"unknown objective {name!r} (config key 'objective.name')"
                          f"{did_you_mean(name, known)}; valid: {', '.join(known)}",
                          key="objective.name")
    return OBJECTIVE_SCHEMAS[name].to_dict()


# ----------------------------------------------------------------------------- validation

def show(value: Any) -> str:
    """A value's type and a bounded repr, for error messages."""
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return "None" if value is None else f"{type(value).__name__} {text}"


def did_you_mean(key: str, candidates: Sequence[str], prefix: str = "") -> str:
    """" (did you mean 'x'?)" for the closest candidate, or "" when none is close."""
    close = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else ""


def check_value(path: str, value: Any, default: Any, choices: tuple | None,
                bound: Bound | None = None) -> Any:
    """The value converted to the default's type and within its bound, or a ConfigError."""
    if isinstance(value, np.generic):
        value = value.item()
    expected = type(default)
    ok = True
    if expected is bool:
        ok = isinstance(value, bool)
    elif expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif expected is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif expected in (tuple, list):
        ok = isinstance(value, (tuple, list))
        value = tuple(value) if ok else value
    else:
        ok = isinstance(value, expected)
    if not ok:
        raise ConfigError(f"config key '{path}' expects {expected.__name__}, got {show(value)}",
                          key=path)
    if choices is not None and value not in choices:
        raise ConfigError(f"config key '{path}' must be one of {', '.join(map(str, choices))}; "
                          f"got {value!r}", key=path)
    if bound is not None:
        bound.check(path, value)
    return value


# Names other trainers use for our keys: only used to suggest the right key in errors.
_ALIASES = {
    "learning_rate": "optim.lr", "warmup": "optim.warmup_steps", "beta1": "optim.b1",
    "beta2": "optim.b2", "max_grad_norm": "optim.grad_clip", "clip_grad_norm": "optim.grad_clip",
    "grad_accum_steps": "optim.accum_steps", "gradient_accumulation_steps": "optim.accum_steps",
    "num_steps": "train.steps", "total_steps": "train.steps", "num_train_steps": "train.steps",
    "seq_len": "data.max_len", "hidden_size": "model.d_model", "emb_dim": "model.d_model",
    "num_layers": "model.n_layers", "num_heads": "model.n_heads", "mlp_dim": "model.d_ff",
    "num_kv_heads": "model.n_kv_heads", "vocab": "model.vocab_size", "global_batch_size":
    "data.batch_size", "per_device_batch_size": "data.batch_size",
}


def _leaf_paths(schema: Mapping, prefix: str = "") -> list[str]:
    paths = []
    for key, value in schema.items():
        path = f"{prefix}{key}"
        paths += _leaf_paths(value, path + ".") if isinstance(value, Mapping) else [path]
    return paths


def unknown_key(path: str, section: str, valid: Sequence[str], schema: Mapping) -> ConfigError:
    """The error for a key the schema lacks, with the likeliest key meant."""
    key = path.rsplit(".", 1)[-1]
    # The right key in the wrong section ("train.lr" for "optim.lr") beats a near spelling.
    elsewhere = [p for p in _leaf_paths(schema) if p.rsplit(".", 1)[-1] == key and p != path]
    hint = f" (did you mean '{elsewhere[0]}'?)" if elsewhere else ""
    hint = hint or did_you_mean(key, valid, f"{section}." if section else "")
    if not hint:
        alias = difflib.get_close_matches(key, list(_ALIASES), n=1, cutoff=0.8)
        hint = f" (did you mean '{_ALIASES[alias[0]]}'?)" if alias else ""
    where = f"under '{section}'" if section else "at the top level"
    if section == "objective":
        where = f"for objective {schema['objective'].get('name')!r}"
    return ConfigError(f"unknown config key '{path}'{hint}; valid keys {where}: "
                       f"{', '.join(valid)}", key=path)


def plain(cfg: Any) -> Any:
    """Nested plain dicts with field references resolved."""
    if isinstance(cfg, ConfigDict):
        return cfg.to_dict()
    if isinstance(cfg, Mapping):
        return {k: plain(v) for k, v in cfg.items()}
    return cfg


def full_schema(values: Mapping) -> dict:
    """The schema with the objective section of the objective `values` names."""
    schema = default_config().to_dict()
    objective = values.get("objective", {})
    name = objective.get("name", "sft") if isinstance(objective, Mapping) else "sft"
    schema["objective"] = {"name": "sft", **_objective_schema(name)}
    schema["objective"]["name"] = name
    return schema


def choices_for(path: str, schema: Mapping) -> tuple | None:
    """The values a key may take (None = any of its type); `schema` names the objective."""
    if path.startswith("objective.") and path != "objective.name":
        return OBJECTIVE_CHOICES.get(schema["objective"]["name"], {}).get(path.split(".", 1)[1])
    return CHOICES.get(path)


def bound_for(path: str, schema: Mapping) -> Bound | None:
    """A numeric key's range (None = unbounded); `schema` names the objective."""
    if path.startswith("objective.") and path != "objective.name":
        return OBJECTIVE_BOUNDS.get(schema["objective"]["name"], {}).get(path.split(".", 1)[1])
    return BOUNDS.get(path)


def _merge(values: Mapping, schema: Mapping, full: Mapping, section: str) -> dict:
    out = copy.deepcopy(dict(schema))
    prefix = f"{section}." if section else ""
    for key, value in values.items():
        path = f"{prefix}{key}"
        if not isinstance(key, str):
            raise ConfigError(f"config key {key!r} under '{section}' is not a string", key=path)
        if section in OPEN_SECTIONS:
            out[key] = check_value(path, value, OPEN_SECTIONS[section](), None)
            continue
        if key not in schema:
            raise unknown_key(path, section, list(schema), full)
        default = schema[key]
        if isinstance(default, Mapping):
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key '{path}' is a section (keys: "
                                  f"{', '.join(default)}), got {show(value)}", key=path)
            out[key] = _merge(value, default, full, path)
        else:
            out[key] = check_value(path, value, default, choices_for(path, full),
                                   bound_for(path, full))
    return out


def _check_rules(rules: Mapping[str, str], mesh_axes: Sequence[str]) -> None:
    for name, axes in rules.items():
        for axis in (a.strip() for a in axes.split(",") if a.strip()):
            if axis not in mesh_axes:
                raise ConfigError(f"config key 'mesh.rules.{name}': unknown mesh axis {axis!r}; "
                                  f"valid: {', '.join(mesh_axes)} (\"\" = replicated)",
                                  key=f"mesh.rules.{name}")


def validate(cfg: ConfigDict | Mapping) -> ConfigDict:
    """The config completed with defaults and checked against the schema, locked."""
    values = plain(cfg)
    if not isinstance(values, Mapping):
        raise ConfigError(f"a config must be a ConfigDict or dict, got {show(cfg)}")
    schema = full_schema(values)
    out = _merge(values, schema, schema, "")
    _check_rules(out["mesh"]["rules"],
                 [k for k, v in out["mesh"].items() if not isinstance(v, Mapping)])
    result = ConfigDict(out)
    result.lock()
    return result
