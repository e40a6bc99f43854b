"""Objectives by name. A module here lists what it provides in `OBJECTIVES = {name: make}` and
the settings dataclass of each in `SETTINGS = {name: cls}` (see align/settings.py); importing
this package registers every one's settings as the config schema of `objective.name = name`.

A module outside this package is named `package.module:name` (e.g.
`objective.name=my_lab.losses:kto`) and laid out the same way: `OBJECTIVES` and `SETTINGS`.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Callable

from align import config as config_lib
from align.objectives.base import LossOut, ModelSpec, Objective, OnlineSpec

__all__ = ["LossOut", "ModelSpec", "Objective", "OnlineSpec", "make", "names", "registry"]


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
    """The objective names a config can use (besides `package.module:name`)."""
    return sorted(registry())


def external_factory(name: str) -> Callable[..., Objective]:
    """The factory of `package.module:name`, from that module's OBJECTIVES."""
    module = config_lib.external_objective_module(name)
    attr = name.partition(":")[2]
    return module.OBJECTIVES[attr]


def make(objective_cfg, **kwargs) -> Objective:
    """Builds the objective the config names (kwargs: shared settings such as chunk_size)."""
    name = objective_cfg.name
    if ":" in name:
        factory = external_factory(name)
    else:
        known = registry()
        if name not in known:
            raise config_lib.ConfigError(
                f"unknown objective {name!r}; valid: {', '.join(sorted(known))}, or "
                "package.module:name for one defined outside align")
        factory = known[name]
    objective = factory(objective_cfg, **kwargs)
    if not isinstance(objective, Objective):
        raise TypeError(f"objective {name!r}: its factory returned {type(objective).__name__}, "
                        "not an align.objectives.Objective")
    return objective


registry()  # every objective's settings become config schema when this package is imported
