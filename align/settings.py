"""Typed settings with bounds: dataclass fields that say their range, checked when a settings
value is built (a bad value is a `ConfigError`, from align/errors.py, re-exported here).

Dimension letters: none (this module handles no arrays).

An objective's settings are a frozen dataclass of `Settings` whose fields come from `setting`
(a default plus its bounds or choices). The config schema is read from it (`schema`), and
building it (`Settings.of(section)`) checks every value, naming `objective.<field>`. A float
field may also hold a traced value (a population's swept setting inside the step, see
align/train/population.py); its numbers were checked one by one before that.

    @dataclasses.dataclass(frozen=True)
    class DpoSettings(Settings):
        beta: float = setting(0.1, gt=0)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax

from align.errors import ConfigError

__all__ = ["Bound", "ConfigError", "Settings", "bounds", "schema", "setting"]


@dataclasses.dataclass(frozen=True)
class Bound:
    """What a numeric value may be (gt / ge / lt / le; None = unbounded) or the strings allowed."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    choices: tuple | None = None

    def describe(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(map(str, self.choices))
        parts = [f"{op} {v:g}" for op, v in ((">", self.gt), (">=", self.ge), ("<", self.lt),
                                              ("<=", self.le)) if v is not None]
        return " and ".join(parts) if parts else "finite"

    def check(self, key: str, value: Any) -> None:
        """Raises a ConfigError naming `key` when `value` is outside the bound."""
        if self.choices is not None:
            if value not in self.choices:
                raise ConfigError(f"config key '{key}' must be {self.describe()}; got {value!r}",
                                  key=key)
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return  # the type check, elsewhere, names non-numbers (and passes traced values)
        ok = (math.isfinite(value)
              and (self.gt is None or value > self.gt) and (self.ge is None or value >= self.ge)
              and (self.lt is None or value < self.lt) and (self.le is None or value <= self.le))
        if not ok:
            raise ConfigError(f"config key {key} = {value:g} is out of range: must be finite "
                              f"and {self.describe()}", key=key)


def setting(default: Any, *, gt: float | None = None, ge: float | None = None,
            lt: float | None = None, le: float | None = None, choices: tuple | None = None):
    """A settings field: its default (whose type is the field's type) and its bound."""
    bound = Bound(gt=gt, ge=ge, lt=lt, le=le, choices=tuple(choices) if choices else None)
    bound.check("default", default)
    return dataclasses.field(default=default, metadata={"bound": bound})


class Settings:
    """Mixin for frozen settings dataclasses: bounds checked at construction."""

    SECTION = "objective"  # the config section whose keys these are, for messages

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            expected = type(f.default)
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, f.name, float(value))
                value = float(value)
            key = f"{self.SECTION}.{f.name}"
            if expected is float and isinstance(value, jax.core.Tracer):
                # A population member's swept value inside the jitted step: each value was
                # built (and checked) as a number when the population was made.
                continue
            if not _same_type(value, expected):
                raise ConfigError(f"config key '{key}' expects {expected.__name__}, got "
                                  f"{type(value).__name__} {value!r}", key=key)
            bound = f.metadata.get("bound")
            if bound is not None:
                bound.check(key, value)

    @classmethod
    def of(cls, section: Mapping[str, Any] | "Settings"):
        """Settings from a config section (its other keys, such as `name`, are ignored)."""
        if isinstance(section, cls):
            return section
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: section[k] for k in names if k in section})


def _same_type(value: Any, expected: type) -> bool:
    if expected is bool:
        return isinstance(value, bool)
    if expected in (int, float):
        return isinstance(value, expected) and not isinstance(value, bool)
    return isinstance(value, expected)


def schema(cls) -> dict[str, Any]:
    """Field -> default of a settings dataclass (the config schema of its section)."""
    return {f.name: f.default for f in dataclasses.fields(cls)}


def bounds(cls) -> dict[str, Bound]:
    """Field -> bound of a settings dataclass."""
    return {f.name: f.metadata["bound"] for f in dataclasses.fields(cls) if "bound" in f.metadata}
