"""Config files a run writes and reads back (config.json, config.txt), its summary
(`describe`), and the path keys made absolute where a run starts.

Dimension letters: none (this module handles no arrays).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

import ml_collections

from align import atomic
from align.config_schema import full_schema, plain, validate
from align.errors import ConfigError

ConfigDict = ml_collections.ConfigDict

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
    return plain(cfg)


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
    defaults = _flat(full_schema(v))
    changed = [f"{k}={_fmt(x)}" for k, x in sorted(_flat(v).items())
               if k not in defaults or defaults[k] != x]
    lines.append(f"changed    {', '.join(changed) if changed else '(all defaults)'}")
    return "\n".join(lines)
