"""Config files a run writes and reads back (config.json, config.txt), its summary
(`describe`), and the path keys made absolute where a run starts.

Dimension letters: none (this module handles no arrays).
"""

from __future__ import annotations

import datetime
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


# ----------------------------------------------------------------------------- resuming

# Settings that cannot change what a run computes, only how it is laid out, logged or shown:
# they may differ when a run resumes (the difference is reported). Keys, or sections ending in
# ".". The mesh may change because checkpoints are resharded on restore; the remat and chunk
# settings trade memory for time.
RESUMABLE_CHANGES = ("mesh.", "distributed.", "train.log_every", "train.eval_every",
                     "train.progress", "train.checkpoint_every", "train.keep_checkpoints",
                     "eval.show_samples", "model.remat", "logprobs.chunk_size",
                     "population.eval_chunk")


def differences(old: ConfigDict | Mapping, new: ConfigDict | Mapping) -> dict[str, tuple]:
    """{dotted key: (old value, new value)} for every key whose value differs (a key present in
    one config only counts, with None for the other)."""
    a, b = flat(config_to_dict(old)), flat(config_to_dict(new))
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if _tuples(a.get(k)) != _tuples(b.get(k))}


def resumable(key: str) -> bool:
    """Whether `key` may change when a run resumes (see RESUMABLE_CHANGES)."""
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUMABLE_CHANGES)


def fmt_changes(changes: Mapping[str, tuple], limit: int = 6) -> str:
    """"key old -> new, ..." on one line (at most `limit` keys, then a count)."""
    items = [f"{k} {_fmt(o)!s} -> {_fmt(n)!s}" for k, (o, n) in changes.items()]
    more = f", and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


HISTORY_FILE = "config_history.jsonl"


def record_change(workdir: str, step: int, changes: Mapping[str, tuple], kind: str) -> str:
    """Appends one line to workdir/config_history.jsonl: the step a run resumed from, the kind of
    change ("settings": resumable keys only; "continued": a deliberate continuation) and each
    key's old and new value. Returns the file's path."""
    path = os.path.join(workdir, HISTORY_FILE)
    line = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "resumed_from_step": step, "kind": kind,
            "changes": {k: [o, n] for k, (o, n) in changes.items()}}
    with open(path, "a") as f:
        f.write(json.dumps(line, sort_keys=True) + "\n")
    return path


# ----------------------------------------------------------------------------- writing

def config_to_dict(cfg: ConfigDict | Mapping) -> dict:
    """Nested plain dicts (references resolved), ready for JSON."""
    return plain(cfg)


def flat(values: Mapping, prefix: str = "") -> dict[str, Any]:
    """{dotted key: value} of nested mappings."""
    out = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def write_config(cfg: ConfigDict | Mapping, workdir: str) -> str:
    """Writes workdir/config.json and a readable workdir/config.txt; returns the JSON path."""
    os.makedirs(workdir, exist_ok=True)
    values = config_to_dict(cfg)
    path = os.path.join(workdir, "config.json")
    atomic.write_text(path, json.dumps(values, indent=2, sort_keys=True) + "\n")
    lines = [f"{k} = {v!r}" for k, v in sorted(flat(values).items())]
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
    defaults = flat(full_schema(v))
    changed = [f"{k}={_fmt(x)}" for k, x in sorted(flat(v).items())
               if k not in defaults or defaults[k] != x]
    lines.append(f"changed    {', '.join(changed) if changed else '(all defaults)'}")
    return "\n".join(lines)
