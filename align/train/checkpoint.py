"""Checkpoints of the train state and of JSON host state, written atomically with Orbax.

Step = number of optimizer steps completed. Saves are synchronous (simpler than Orbax's async
mode; `save` returns once the step is on disk). Orbax writes each step into
`<step>.orbax-checkpoint-tmp*` and renames it to `<step>` only when complete, so a process killed
mid-save leaves a temporary directory that is never listed as a step (and is removed when the next
Checkpointer opens the directory). An unreadable newest step is reported, renamed to
`<step>.unreadable` and replaced by the previous one. Every process calls every method; Orbax lets
only process 0 write shared files.
"""
# Dimensions: none; state leaves keep whatever shapes and shardings the trainer gives them.
from __future__ import annotations

import base64
import logging
import operator
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from align.errors import CheckpointError  # re-exported: no checkpoint in a directory is readable

log = logging.getLogger(__name__)

# JSON has no bytes or tuples; grain's DataLoader state is bytes, so both are tagged.
_BYTES_TAG = "__bytes__"
_TUPLE_TAG = "__tuple__"
_UNREADABLE_SUFFIX = ".unreadable"


class _DropOrbaxChatter(logging.Filter):
    """Drops Orbax's below-warning records, which it emits several times per save."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        return f"{os.sep}orbax{os.sep}" not in record.pathname


def _quiet_orbax() -> None:
    # Orbax logs through absl's logger, shared with other libraries, so filter by source file
    # rather than lowering the whole logger's level.
    absl_logger = logging.getLogger("absl")
    if not any(isinstance(f, _DropOrbaxChatter) for f in absl_logger.filters):
        absl_logger.addFilter(_DropOrbaxChatter())


def _encode(value: Any, where: str) -> Any:
    """Returns `value` as plain JSON, with bytes and tuples tagged so they round-trip."""
    if value is None or isinstance(value, (bool, str, int, float)):
        return value
    if isinstance(value, (bytes, bytearray)):
        return {_BYTES_TAG: base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, tuple):
        return {_TUPLE_TAG: [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out = {}
        for key, v in value.items():
            if not isinstance(key, str):
                raise TypeError(
                    f"extra{where}: dict keys must be str, got {key!r} ({type(key).__name__})")
            if key in (_BYTES_TAG, _TUPLE_TAG):
                raise ValueError(
                    f"extra{where}: the key {key!r} is reserved for encoding bytes and tuples")
            out[key] = _encode(v, f"{where}[{key!r}]")
        return out
    if isinstance(value, np.generic) or getattr(value, "shape", None) == ():
        # numpy / jax scalars, e.g. a metric or a grain position.
        return _encode(value.item(), where)
    raise TypeError(
        f"extra{where}: {type(value).__name__} is not JSON-serialisable; use dict (str keys), "
        "list, tuple, str, int, float, bool, None or bytes")


def _decode(value: Any) -> Any:
    """Inverse of `_encode`."""
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, dict):
        if len(value) == 1 and _BYTES_TAG in value:
            return base64.b64decode(value[_BYTES_TAG].encode("ascii"), validate=True)
        if len(value) == 1 and _TUPLE_TAG in value:
            return tuple(_decode(v) for v in value[_TUPLE_TAG])
        return {k: _decode(v) for k, v in value.items()}
    return value


def _abstract(abstract_state: Any) -> Any:
    """Returns `abstract_state` as ShapeDtypeStructs; every leaf must carry a sharding."""

    def to_struct(path, leaf):
        sharding = getattr(leaf, "sharding", None)
        if sharding is None or not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
            raise ValueError(
                f"restore: abstract_state{jax.tree_util.keystr(path)} must be a "
                f"jax.ShapeDtypeStruct (or array) with a .sharding, got {leaf!r}")
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)

    return jax.tree_util.tree_map_with_path(to_struct, abstract_state)


def _everywhere(ok: bool) -> bool:
    """Returns whether `ok` holds on every process, so that all of them pick the same step."""
    if jax.process_count() == 1:
        return ok
    flags = multihost_utils.process_allgather(np.array([ok], dtype=np.int32))
    return bool(np.all(flags))


def _short(error: BaseException) -> str:
    """Returns the error's type and message on one bounded line, for log messages."""
    text = " ".join(str(error).split())
    if len(text) > 600:
        text = text[:600] + " ..."
    return f"{type(error).__name__}: {text}"


class Checkpointer:
    """Saves and restores (train state, JSON host state) per step; keeps the `keep` newest."""

    def __init__(self, directory: str, *, keep: int = 3, primary: bool | None = None):
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"Checkpointer: keep must be an int >= 1, got {keep!r}")
        _quiet_orbax()
        # Orbax refuses relative paths (0.12.8 and later), so the directory is made absolute here.
        self.directory = epath.Path(os.path.abspath(os.fspath(directory)))
        self.keep = keep
        # Only the primary process reports fallbacks, so a pod prints each message once.
        self._primary = jax.process_index() == 0 if primary is None else bool(primary)
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=False,
            preservation_policy=ocp.checkpoint_managers.LatestN(n=keep),
            cleanup_tmp_directories=True,
            create=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, state: Any, *, extra: Mapping[str, Any]) -> None:
        """Writes `state` (pytree of arrays) and `extra` (JSON host state) as checkpoint `step`."""
        step = operator.index(step)
        if step < 0:
            raise ValueError(f"save: step must be >= 0, got {step}")
        if not isinstance(extra, Mapping):
            raise TypeError(f"save: extra must be a dict, got {type(extra).__name__}")
        encoded = _encode(extra, "")
        steps = self._manager.all_steps()
        if step in steps:
            # A deterministic run has one state per step count, e.g. a final save that repeats
            # the last periodic one.
            log.info("checkpoint step %d already exists in %s; not saving it again",
                     step, self.directory)
            return
        if steps and step < max(steps):
            raise ValueError(
                f"save: step {step} is older than the newest checkpoint (step {max(steps)}) in "
                f"{self.directory}; restore from it or use a fresh directory")
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), extra=ocp.args.JsonSave(encoded)),
            force=True,  # which steps to save is the caller's decision, not a save policy's
        )

    def latest_step(self) -> int | None:
        """Returns the newest complete checkpoint step (it may still prove unreadable), or None."""
        return self._manager.latest_step()

    def restore(self, abstract_state: Any) -> tuple[Any, dict, int] | None:
        """Returns the newest readable (state, extra, step) in the given shardings, or None."""
        abstract = _abstract(abstract_state)
        self._manager.reload()
        steps = sorted(self._manager.all_steps(), reverse=True)
        if not steps:
            return None
        failures: list[tuple[int, str]] = []
        for step in steps:
            restored, error = None, None
            try:
                restored = self._read(step, abstract)
            except Exception as e:  # pylint: disable=broad-except
                # Any read error (missing, truncated, garbled files) means this step is unusable.
                error = e
            if not _everywhere(error is None):
                reason = _short(error) if error is not None else "unreadable on another process"
                failures.append((step, reason))
                if self._primary:
                    log.warning("checkpoint step %d in %s is unreadable (%s); trying an older step",
                                step, self.directory, reason)
                continue
            state, extra = restored
            if failures:
                bad = [s for s, _ in failures]
                self._set_aside(bad)
                if self._primary:
                    log.warning("restored checkpoint step %d from %s; renamed the unreadable newer "
                                "step(s) %s to <step>%s", step, self.directory, bad,
                                _UNREADABLE_SUFFIX)
            return state, extra, step
        detail = "; ".join(f"step {s}: {reason}" for s, reason in failures)
        raise CheckpointError(f"no readable checkpoint in {self.directory}: {detail}")

    def close(self) -> None:
        """Releases Orbax's resources."""
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _read(self, step: int, abstract: Any) -> tuple[Any, dict]:
        """Returns (state, extra) of `step`; raises on any missing or malformed part."""
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), extra=ocp.args.JsonRestore()),
        )
        state, extra = restored.state, restored.extra
        if state is None:
            raise ValueError("the 'state' item is missing")
        if not isinstance(extra, dict):
            raise ValueError(f"the 'extra' item is {type(extra).__name__}, expected a dict")
        return state, _decode(extra)

    def _set_aside(self, steps: list[int]) -> None:
        """Renames unreadable step directories so that they are no longer listed as steps."""
        if jax.process_index() == 0:
            for step in steps:
                source = self.directory / str(step)
                target = self.directory / f"{step}{_UNREADABLE_SUFFIX}"
                n = 1
                while target.exists():
                    target = self.directory / f"{step}{_UNREADABLE_SUFFIX}-{n}"
                    n += 1
                if source.exists():
                    source.rename(target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("align.train.checkpoint:set_aside")
        self._manager.reload()
