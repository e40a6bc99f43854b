"""Experiment configs: loading `get_config(arg)` files, command-line overrides, and the names
of the config modules re-exported in one place.

Dimension letters: none (this module handles no arrays).

A config file is a Python file with `get_config(arg=None)` returning an
`ml_collections.ConfigDict`. The schema and its checks are in align/config_schema.py; writing,
reading back and describing a run's config, and its paths, in align/config_io.py. Both are
re-exported here, so callers need only `from align import config`.
"""

from __future__ import annotations

import ast
import copy
import importlib
import importlib.util
import inspect
import os
import sys
from typing import Any, Mapping, Sequence

import ml_collections

from align.config_io import (PATH_KEYS, WORKDIR_TOKEN, absolute_path, absolute_paths,
                             config_from_json, config_to_dict, describe, write_config)
from align.config_schema import (BOUNDS, CHOICES, OBJECTIVE_BOUNDS, OBJECTIVE_CHOICES,
                                 OBJECTIVE_SCHEMAS, OPEN_SECTIONS, bound_for, check_value,
                                 choices_for, default_config, did_you_mean,
                                 external_objective_module, full_schema,
                                 objective_config, plain, register_objective_schema,
                                 register_objective_settings, show, unknown_key, validate)
from align.errors import ConfigError
from align.settings import Bound

__all__ = [
    "BOUNDS", "Bound", "CHOICES", "ConfigError", "OBJECTIVE_BOUNDS", "OBJECTIVE_CHOICES",
    "OBJECTIVE_SCHEMAS", "PATH_KEYS", "WORKDIR_TOKEN", "absolute_path", "absolute_paths",
    "apply_overrides", "config_from_json", "config_to_dict", "default_config", "describe",
    "external_objective_module",
    "load_config", "objective_config", "parse_config_arg", "parse_value",
    "register_objective_schema", "register_objective_settings", "resolve", "validate",
    "write_config",
]

ConfigDict = ml_collections.ConfigDict

# The repository root, where `configs/` lives; config paths are also tried relative to it.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
                                  f"{did_you_mean(key, list(defaults))}; valid keys: "
                                  f"{', '.join(defaults)}")
            if isinstance(defaults[key], str) and not isinstance(value, str):
                value = text.strip()
            try:
                value = check_value(key, value, defaults[key], None)
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
        raise ConfigError(f"config file {path_text!r}: get_config() returned {show(cfg)}, "
                          "expected an ml_collections.ConfigDict")
    return cfg


def _schema_entry(path: str, schema: Mapping) -> Any:
    """The default at a dotted path, or a ConfigError if the path names no key."""
    parts, node = path.split("."), schema
    for i, key in enumerate(parts):
        section = ".".join(parts[:i])
        if section in OPEN_SECTIONS and i == len(parts) - 1:
            return OPEN_SECTIONS[section]()
        if not isinstance(node, Mapping) or section in OPEN_SECTIONS:
            raise ConfigError(f"unknown config key '{path}': '{section}' is not a section",
                              key=path)
        if key not in node:
            raise unknown_key(".".join(parts[:i + 1]), section, list(node), schema)
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
    cfg = copy.deepcopy(cfg if isinstance(cfg, ConfigDict) else ConfigDict(plain(cfg)))
    cfg.unlock()
    parsed = [(_parse_override(o), o) for o in overrides]
    source: dict[str, str] = {}
    objective = plain(cfg).get("objective", {})
    name = objective.get("name", "sft") if isinstance(objective, Mapping) else "sft"
    for (path, text), override in parsed:
        if path == "objective.name":
            # The objective named last decides which objective keys the overrides may set.
            value = parse_value(text)
            name, source[path] = value if isinstance(value, str) else text.strip(), override
    try:
        schema = full_schema({"objective": {"name": name}})
    except ConfigError as e:
        raise ConfigError(f"{e} (from override {source[e.key]!r})" if e.key in source else str(e),
                          key=e.key, override=source.get(e.key)) from None
    for (path, text), override in parsed:
        try:
            default = _schema_entry(path, schema)
            value = parse_value(text)
            if isinstance(default, str) and not isinstance(value, str):
                value = text.strip()  # "data.tfds_name=123" means the string
            value = check_value(path, value, default, choices_for(path, schema),
                                 bound_for(path, schema))
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
