"""Objectives, found by module name: `objective.name = "sft"` loads `align.objectives.sft`."""

from __future__ import annotations

import importlib
import pkgutil

from align.objectives.base import LossOut, Objective

__all__ = ["LossOut", "Objective", "make", "names"]


def names() -> list[str]:
    """The objective modules that can be named in a config."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name != "base")


def make(objective_cfg, **kwargs) -> Objective:
    """Builds the objective the config names."""
    name = objective_cfg.name
    if name not in names():
        raise ValueError(f"unknown objective {name!r}; valid: {', '.join(names())}")
    return importlib.import_module(f"align.objectives.{name}").make(objective_cfg, **kwargs)
