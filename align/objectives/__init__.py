"""Objectives by name. A module here lists what it provides in `OBJECTIVES = {name: make}` and
the settings dataclass of each in `SETTINGS = {name: cls}` (see align/settings.py); importing
this package registers every one's settings as the config schema of `objective.name = name`."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Callable

from align import config as config_lib
from align.objectives.base import LossOut, Models, Objective

__all__ = ["LossOut", "Models", "Objective", "make", "names", "registry"]

def registry() -> dict[str, Callable[..., Objective]]:
    """name -> factory, over every objective module in this package (settings registered)."""
    found: dict[str, Callable[..., Objective]] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        settings = getattr(module, "SETTINGS", {})
        for name, factory in getattr(module, "OBJECTIVES", {}).items():
            if name in found:
                raise ValueError(f"objective {name!r} is defined twice (in {info.name})")
            found[name] = factory
            if name in settings:
                config_lib.register_objective_settings(name, settings[name])
            elif name not in config_lib.OBJECTIVE_SCHEMAS:
                config_lib.register_objective_schema(name, {})
    return found


def names() -> list[str]:
    """The objective names a config can use."""
    return sorted(registry())


def make(objective_cfg, **kwargs) -> Objective:
    """Builds the objective the config names (kwargs: shared settings such as chunk_size)."""
    known = registry()
    if objective_cfg.name not in known:
        raise ValueError(f"unknown objective {objective_cfg.name!r}; valid: {', '.join(sorted(known))}")
    return known[objective_cfg.name](objective_cfg, **kwargs)


registry()  # every objective's settings become config schema when this package is imported
