"""Experiment configs: loading `get_config(arg)` files, the schema, validation, overrides, writing.

Dimension letters: none (this module handles no arrays).

A config file is a Python file with `get_config(arg=None)` returning an
`ml_collections.ConfigDict`. `default_config()` is the schema: every key, its default and
(through the default's type) its type. Unknown keys, wrong types and values outside
`CHOICES` are errors that name the key, before any compute. The `objective` section is
open: its keys beyond `name` come from the schema registered for that objective name.
`mesh.rules` is open too: any logical axis name may be mapped to mesh axes.
"""

from __future__ import annotations

import ast
import copy
import difflib
import importlib
import importlib.util
import inspect
import json
import math
import os
import sys
from typing import Any, Mapping, Sequence

import ml_collections
import numpy as np

from align import atomic
from align import settings as settings_lib
from align.settings import Bound, ConfigError

__all__ = ["Bound", "ConfigError"]

ConfigDict = ml_collections.ConfigDict

# The repository root, where `configs/` lives; config paths are also tried relative to it.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- schema

CHOICES: dict[str, tuple] = {
    "model.dtype": ("float32", "bfloat16"),
    "model.remat": ("none", "full", "dots"),
    "model.mlp_activation": ("silu", "gelu_tanh"),
    "model.rope_scaling": ("none", "llama3"),
    "data.source": ("reviews", "tfds", "hh_rlhf", "tldr", "ultrafeedback"),
    "data.tokenizer_type": ("unigram", "bpe"),
    "data.bad_rows": ("error", "skip"),
    "data.tokenize": ("auto", "separate", "joint"),
    "reference.mode": ("in_step", "cached"),
    "online.scorer": ("gold", "reward_model", "preference_model"),
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
    "task.filler_bias": Bound(), "task.intransitive": _NONNEG,
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
    "logprobs.chunk_size": _NONNEG,
}

# Sections whose keys are not fixed: path -> the type every value must have.
_OPEN_SECTIONS: dict[str, type] = {"mesh.rules": str}

OBJECTIVE_SCHEMAS: dict[str, ConfigDict] = {}
_OBJECTIVE_CHOICES: dict[str, dict[str, tuple]] = {}
_OBJECTIVE_BOUNDS: dict[str, dict[str, Bound]] = {}


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
        seed=0, temperature=1.0, length_bias=0.0, filler_bias=0.0, intransitive=0.0))
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
        # except dtype, remat and scan_layers, and its tokenizer is used unless
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
        coordinator_address="", num_processes=0, process_id=-1))
    c.logprobs = ConfigDict(dict(chunk_size=0))
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
    _OBJECTIVE_CHOICES[name] = {k: tuple(v) for k, v in (choices or {}).items()}
    _OBJECTIVE_BOUNDS[name] = {}


def register_objective_settings(name: str, settings_cls) -> None:
    """Declares `objective.name = name`'s settings from its settings dataclass: the keys and
    defaults, choices and numeric bounds of its fields (see align/settings.py)."""
    bounds = settings_lib.bounds(settings_cls)
    choices = {k: b.choices for k, b in bounds.items() if b.choices is not None}
    register_objective_schema(name, settings_lib.schema(settings_cls), choices=choices)
    _OBJECTIVE_BOUNDS[name] = {k: b for k, b in bounds.items() if b.choices is None}


register_objective_schema("sft", {})


def objective_config(name: str, **settings: Any) -> ConfigDict:
    """An `objective` section: the named objective's defaults with `settings` applied, checked."""
    return ConfigDict(validate({"objective": {"name": name, **settings}}).objective.to_dict())


def _objective_schema(name: Any) -> dict:
    """The registered defaults for an objective (a ConfigError naming the valid ones if none)."""
    if not isinstance(name, str):
        raise ConfigError(f"config key 'objective.name' expects str, got {_show(name)}",
                          key="objective.name")
    if name not in OBJECTIVE_SCHEMAS:
        # Objectives register their settings here when `align.objectives` is imported (the
        # configs, the trainer and the CLI import it); this module imports no objective.
        known = sorted(OBJECTIVE_SCHEMAS)
        raise ConfigError(f"unknown objective {name!r} (config key 'objective.name')"
                          f"{_did_you_mean(name, known)}; valid: {', '.join(known)}",
                          key="objective.name")
    return OBJECTIVE_SCHEMAS[name].to_dict()


# ----------------------------------------------------------------------------- validation

def _show(value: Any) -> str:
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return "None" if value is None else f"{type(value).__name__} {text}"


def _did_you_mean(key: str, candidates: Sequence[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else ""


def _check_value(path: str, value: Any, default: Any, choices: tuple | None,
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
        raise ConfigError(f"config key '{path}' expects {expected.__name__}, got {_show(value)}",
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


def _unknown_key(path: str, section: str, valid: Sequence[str], schema: Mapping) -> ConfigError:
    key = path.rsplit(".", 1)[-1]
    # The right key in the wrong section ("train.lr" for "optim.lr") beats a near spelling.
    elsewhere = [p for p in _leaf_paths(schema) if p.rsplit(".", 1)[-1] == key and p != path]
    hint = f" (did you mean '{elsewhere[0]}'?)" if elsewhere else ""
    hint = hint or _did_you_mean(key, valid, f"{section}." if section else "")
    if not hint:
        alias = difflib.get_close_matches(key, list(_ALIASES), n=1, cutoff=0.8)
        hint = f" (did you mean '{_ALIASES[alias[0]]}'?)" if alias else ""
    where = f"under '{section}'" if section else "at the top level"
    if section == "objective":
        where = f"for objective {schema['objective'].get('name')!r}"
    return ConfigError(f"unknown config key '{path}'{hint}; valid keys {where}: "
                       f"{', '.join(valid)}", key=path)


def _plain(cfg: Any) -> Any:
    """Nested plain dicts with field references resolved."""
    if isinstance(cfg, ConfigDict):
        return cfg.to_dict()
    if isinstance(cfg, Mapping):
        return {k: _plain(v) for k, v in cfg.items()}
    return cfg


def _full_schema(values: Mapping) -> dict:
    """The schema with the objective section of the objective `values` names."""
    schema = default_config().to_dict()
    objective = values.get("objective", {})
    name = objective.get("name", "sft") if isinstance(objective, Mapping) else "sft"
    schema["objective"] = {"name": "sft", **_objective_schema(name)}
    schema["objective"]["name"] = name
    return schema


def _choices(path: str, schema: Mapping) -> tuple | None:
    if path.startswith("objective.") and path != "objective.name":
        return _OBJECTIVE_CHOICES.get(schema["objective"]["name"], {}).get(path.split(".", 1)[1])
    return CHOICES.get(path)


def _bound(path: str, schema: Mapping) -> Bound | None:
    if path.startswith("objective.") and path != "objective.name":
        return _OBJECTIVE_BOUNDS.get(schema["objective"]["name"], {}).get(path.split(".", 1)[1])
    return BOUNDS.get(path)


def _merge(values: Mapping, schema: Mapping, full: Mapping, section: str) -> dict:
    out = copy.deepcopy(dict(schema))
    prefix = f"{section}." if section else ""
    for key, value in values.items():
        path = f"{prefix}{key}"
        if not isinstance(key, str):
            raise ConfigError(f"config key {key!r} under '{section}' is not a string", key=path)
        if section in _OPEN_SECTIONS:
            out[key] = _check_value(path, value, _OPEN_SECTIONS[section](), None)
            continue
        if key not in schema:
            raise _unknown_key(path, section, list(schema), full)
        default = schema[key]
        if isinstance(default, Mapping):
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key '{path}' is a section (keys: "
                                  f"{', '.join(default)}), got {_show(value)}", key=path)
            out[key] = _merge(value, default, full, path)
        else:
            out[key] = _check_value(path, value, default, _choices(path, full),
                                    _bound(path, full))
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
    values = _plain(cfg)
    if not isinstance(values, Mapping):
        raise ConfigError(f"a config must be a ConfigDict or dict, got {_show(cfg)}")
    schema = _full_schema(values)
    out = _merge(values, schema, schema, "")
    _check_rules(out["mesh"]["rules"],
                 [k for k, v in out["mesh"].items() if not isinstance(v, Mapping)])
    result = ConfigDict(out)
    result.lock()
    return result


# ----------------------------------------------------------------------------- loading

def parse_value(text: str) -> Any:
    """A Python literal when `text` is one ("3e-4", "True", "(1, 2)"), else the text itself."""
    text = text.strip()
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def _split_top_level(text: str) -> list[str]:
    """Splits on commas outside brackets and quotes, so "k=(1,2),j=3" has two items."""
    items, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [item.strip() for item in items if item.strip()]


def parse_config_arg(arg: str | None, defaults: Mapping[str, Any] | None = None) -> dict:
    """Parses a config file's argument: "k=v,k2=v2" -> {"k": v, ...}; a bare word -> {"name": word}.

    Values are Python literals when `ast.literal_eval` accepts them, else strings. At most
    one bare word is allowed, and it is stored under "name". With `defaults`, the result
    starts from them, other keys are errors, and each value must have its default's type.
    """
    out: dict[str, Any] = {}
    for item in _split_top_level(arg or ""):
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep:
            key, text = "name", item
        if not all(part.isidentifier() for part in key.split(".")):
            raise ConfigError(f"config argument {arg!r}: {key!r} is not a valid key name")
        if key in out:
            what = "more than one bare word" if not sep else f"key {key!r} given twice"
            raise ConfigError(f"config argument {arg!r}: {what}")
        value = parse_value(text)
        if defaults is not None:
            if key not in defaults:
                what = f"bare word {item!r} (a 'name')" if not sep else f"key {key!r}"
                raise ConfigError(f"config argument {arg!r}: unknown {what}"
                                  f"{_did_you_mean(key, list(defaults))}; valid keys: "
                                  f"{', '.join(defaults)}")
            if isinstance(defaults[key], str) and not isinstance(value, str):
                value = text.strip()
            try:
                value = _check_value(key, value, defaults[key], None)
            except ConfigError as e:
                raise ConfigError(f"config argument {arg!r}: {str(e).replace('config key', 'key')}"
                                  ) from None
        out[key] = value
    return {**(defaults or {}), **out}


def _find_config_file(path: str) -> str:
    tried = [os.path.abspath(path)]
    if not os.path.isabs(path):
        tried.append(os.path.join(_ROOT, path))
    for candidate in tried:
        if os.path.isfile(candidate):
            return candidate
    raise ConfigError(f"config file {path!r} not found (looked at {', '.join(dict.fromkeys(tried))})")


def load_config(spec: str) -> ConfigDict:
    """Imports the file in "path.py[:arg]" and returns `get_config(arg)`."""
    path_text, sep, arg = spec.partition(":")
    arg = arg if sep and arg else None
    path = _find_config_file(path_text)
    module_name = "_align_config_" + "".join(
        c if c.isalnum() else "_" for c in os.path.splitext(os.path.relpath(path, _ROOT))[0])
    # Config files import shared fragments (`from configs import common`) from any cwd.
    added_root = _ROOT not in sys.path
    if added_root:
        sys.path.append(_ROOT)
    try:
        try:
            spec_obj = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(spec_obj)
            sys.modules[module_name] = module  # lets dataclasses and pickling in the file work
            spec_obj.loader.exec_module(module)
        except Exception as e:
            sys.modules.pop(module_name, None)
            raise ConfigError(f"config file {path_text!r} failed to import: "
                              f"{type(e).__name__}: {e}") from e
        get_config = getattr(module, "get_config", None)
        if not callable(get_config):
            raise ConfigError(f"config file {path_text!r} defines no get_config() function")
        params = list(inspect.signature(get_config).parameters.values())
        if not params and arg is not None:
            raise ConfigError(f"config file {path_text!r}: get_config() takes no argument, "
                              f"but the spec gives {arg!r}")
        use_default = arg is None and params and params[0].default is not params[0].empty
        try:
            cfg = get_config() if not params or use_default else get_config(arg)
        except ConfigError as e:
            raise ConfigError(f"config file {path_text!r}: {e}", key=e.key) from e
        except Exception as e:
            raise ConfigError(f"config file {path_text!r}: get_config({arg!r}) raised "
                              f"{type(e).__name__}: {e}") from e
    finally:
        if added_root and _ROOT in sys.path:
            sys.path.remove(_ROOT)
    if isinstance(cfg, Mapping) and not isinstance(cfg, ConfigDict):
        cfg = ConfigDict(cfg)
    if not isinstance(cfg, ConfigDict):
        raise ConfigError(f"config file {path_text!r}: get_config() returned {_show(cfg)}, "
                          "expected an ml_collections.ConfigDict")
    return cfg


def _schema_entry(path: str, schema: Mapping) -> Any:
    """The default at a dotted path, or a ConfigError if the path names no key."""
    parts, node = path.split("."), schema
    for i, key in enumerate(parts):
        section = ".".join(parts[:i])
        if section in _OPEN_SECTIONS and i == len(parts) - 1:
            return _OPEN_SECTIONS[section]()
        if not isinstance(node, Mapping) or section in _OPEN_SECTIONS:
            raise ConfigError(f"unknown config key '{path}': '{section}' is not a section",
                              key=path)
        if key not in node:
            raise _unknown_key(".".join(parts[:i + 1]), section, list(node), schema)
        node = node[key]
    if isinstance(node, Mapping):
        raise ConfigError(f"config key '{path}' is a section; override its keys "
                          f"({', '.join(path + '.' + k for k in node)})", key=path)
    return node


def _parse_override(override: str) -> tuple[str, str]:
    text = override
    for prefix in ("--config.", "config."):
        if text.startswith(prefix):
            text = text[len(prefix):]
            break
    path, sep, value = text.partition("=")
    path = path.strip()
    if not sep or not path or not all(p.isidentifier() for p in path.split(".")):
        raise ConfigError(f"override {override!r} must look like --config.section.key=value")
    return path, value


def apply_overrides(cfg: ConfigDict | Mapping, overrides: Sequence[str]) -> ConfigDict:
    """Sets "--config.a.b=v" (or "a.b=v") overrides, then validates the whole config.

    Values are Python literals when `ast.literal_eval` accepts them, else strings; a key
    whose default is a string always takes the text. Overrides act on the config before
    it is resolved, so fields that reference an overridden field follow it.
    """
    cfg = copy.deepcopy(cfg if isinstance(cfg, ConfigDict) else ConfigDict(_plain(cfg)))
    cfg.unlock()
    parsed = [(_parse_override(o), o) for o in overrides]
    source: dict[str, str] = {}
    objective = _plain(cfg).get("objective", {})
    name = objective.get("name", "sft") if isinstance(objective, Mapping) else "sft"
    for (path, text), override in parsed:
        if path == "objective.name":
            # The objective named last decides which objective keys the overrides may set.
            value = parse_value(text)
            name, source[path] = value if isinstance(value, str) else text.strip(), override
    try:
        schema = _full_schema({"objective": {"name": name}})
    except ConfigError as e:
        raise ConfigError(f"{e} (from override {source[e.key]!r})" if e.key in source else str(e),
                          key=e.key, override=source.get(e.key)) from None
    for (path, text), override in parsed:
        try:
            default = _schema_entry(path, schema)
            value = parse_value(text)
            if isinstance(default, str) and not isinstance(value, str):
                value = text.strip()  # "data.tfds_name=123" means the string
            value = _check_value(path, value, default, _choices(path, schema),
                                 _bound(path, schema))
        except ConfigError as e:
            raise ConfigError(f"{e} (from override {override!r})", key=e.key,
                              override=override) from None
        node = cfg
        for key in path.split(".")[:-1]:
            if key not in node or not isinstance(node[key], ConfigDict):
                node[key] = ConfigDict()
            node = node[key]
        with node.ignore_type():  # the schema check above is the type check that counts
            node[path.rsplit(".", 1)[-1]] = value
        source[path] = override
    try:
        return validate(cfg)
    except ConfigError as e:
        if e.key in source:
            raise ConfigError(f"{e} (from override {source[e.key]!r})", key=e.key,
                              override=source[e.key]) from None
        raise


def resolve(spec: str, overrides: Sequence[str] = ()) -> ConfigDict:
    """Loads a config file, applies overrides and validates: every config error, before compute."""
    cfg = load_config(spec)
    try:
        return apply_overrides(cfg, overrides)
    except ConfigError as e:
        if e.override is not None:
            raise
        raise ConfigError(f"config file {spec.partition(':')[0]!r}: {e}", key=e.key) from None


# ----------------------------------------------------------------------------- paths

# Every key that holds a file or directory. They are made absolute once, where a run starts
# (`absolute_paths`): relative to the current directory, as the user typed them, except that a
# leading "{workdir}" stands for the run's own workdir (configs chain runs with "{workdir}/sft").
PATH_KEYS = ("data.data_dir", "data.tokenizer_path", "data.manual_dir", "init.workdir",
             "init.pretrained", "online.scorer_workdir")
WORKDIR_TOKEN = "{workdir}"


def absolute_path(path: str, workdir: str) -> str:
    """`path` made absolute: "~" expanded, "{workdir}" replaced, else against the current dir."""
    if not path:
        return ""
    if path == WORKDIR_TOKEN or path.startswith(WORKDIR_TOKEN + "/"):
        path = os.path.join(os.path.abspath(workdir), path[len(WORKDIR_TOKEN):].lstrip("/"))
    elif WORKDIR_TOKEN in path:
        raise ConfigError(f"{WORKDIR_TOKEN} may only start a path, got {path!r}")
    return os.path.abspath(os.path.expanduser(path))


def absolute_paths(cfg: ConfigDict, workdir: str) -> ConfigDict:
    """A copy of a validated config with every `PATH_KEYS` value absolute (see `absolute_path`)."""
    values = config_to_dict(cfg)
    for key in PATH_KEYS:
        section, name = key.split(".")
        try:
            values[section][name] = absolute_path(values[section][name], workdir)
        except ConfigError as e:
            raise ConfigError(f"config key '{key}': {e}", key=key) from None
    return validate(values)


# ----------------------------------------------------------------------------- writing

def config_to_dict(cfg: ConfigDict | Mapping) -> dict:
    """Nested plain dicts (references resolved), ready for JSON."""
    return _plain(cfg)


def _flat(values: Mapping, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def write_config(cfg: ConfigDict | Mapping, workdir: str) -> str:
    """Writes workdir/config.json and a readable workdir/config.txt; returns the JSON path."""
    os.makedirs(workdir, exist_ok=True)
    values = config_to_dict(cfg)
    path = os.path.join(workdir, "config.json")
    atomic.write_text(path, json.dumps(values, indent=2, sort_keys=True) + "\n")
    lines = [f"{k} = {v!r}" for k, v in sorted(_flat(values).items())]
    atomic.write_text(os.path.join(workdir, "config.txt"), "\n".join(lines) + "\n")
    return path


def _tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def config_from_json(path: str) -> ConfigDict:
    """Reads a config written by `write_config` and validates it."""
    try:
        with open(path) as f:
            values = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path!r} not found") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"config file {path!r} is not valid JSON: {e}") from None
    try:
        return validate(_tuples(values))
    except ConfigError as e:
        raise ConfigError(f"config file {path!r}: {e}", key=e.key) from None


def _fmt(value: Any) -> str:
    if isinstance(value, float) and value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5) \
            and math.isfinite(value):
        return f"{value:.3g}"
    return str(value)


def describe(cfg: ConfigDict | Mapping) -> str:
    """A few lines summarising a validated config, ending with what differs from the defaults."""
    v = config_to_dict(cfg)
    m, d, o, t = v["model"], v["data"], v["optim"], v["train"]
    lines = [
        f"objective  {v['objective']['name']}",
        f"model      d_model={m['d_model']} layers={m['n_layers']} heads={m['n_heads']}/"
        f"{m['n_kv_heads']} d_ff={m['d_ff']} max_len={m['max_len']} dtype={m['dtype']}",
        f"data       {d['source']}{':' + d['tfds_name'] if d['tfds_name'] else ''} "
        f"batch={d['batch_size']} max_len={d['max_len']} vocab={d['vocab_size']}",
        f"optim      lr={_fmt(o['lr'])} warmup={o['warmup_steps']} wd={_fmt(o['weight_decay'])} "
        f"clip={_fmt(o['grad_clip'])} accum={o['accum_steps']}",
        f"train      steps={t['steps']} seed={v['seed']}",
        f"mesh       data={v['mesh']['data']} fsdp={v['mesh']['fsdp']} "
        f"tensor={v['mesh']['tensor']}",
    ]
    defaults = _flat(_full_schema(v))
    changed = [f"{k}={_fmt(x)}" for k, x in sorted(_flat(v).items())
               if k not in defaults or defaults[k] != x]
    lines.append(f"changed    {', '.join(changed) if changed else '(all defaults)'}")
    return "\n".join(lines)
