"""Checkpoints of the train state and of JSON host state, written atomically with Orbax.

Step = number of optimizer steps completed. Saves are synchronous (simpler than Orbax's async
mode; `save` returns once the step is on disk). Orbax writes each step into
`<step>.orbax-checkpoint-tmp*` and renames it to `<step>` only when complete, so a process killed
mid-save leaves a temporary directory that is never listed as a step (and is removed when the next
Checkpointer opens the directory). Every process calls every method; Orbax lets only process 0
write shared files.

Verified restore. Beside the state and the JSON host state ("extra"), each step holds a
manifest (align/train/manifest.py): every array's shape, dtype and checksum, and the host
state's digest. On restore the manifest is read first:

- a step whose manifest, arrays or host state do not match (flipped bytes, truncated or
  deleted files), or whose host state the caller rejects (`accept`), is unreadable: it is
  reported, renamed to `<step>.unreadable` once an older step restores, and the previous step is
  tried;
- a manifest whose array names, shapes or dtypes differ from the requested state means that the
  checkpoints belong to another model or objective: a `CheckpointError` in one sentence, and
  nothing is renamed;
- a step written before manifests existed restores unverified, with a warning.

Errors are one sentence; the full exception of each failed step goes to `debug.log` beside the
checkpoint directory.
"""
# Dimensions: none; state leaves keep whatever shapes and shardings the trainer gives them.
from __future__ import annotations

import base64
import datetime
import errno
import logging
import operator
import os
import traceback
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from align.errors import CheckpointError  # re-exported: no checkpoint in a directory is readable
from align.train import manifest as manifest_lib
from align.train.manifest import DamagedCheckpoint

log = logging.getLogger(__name__)

# JSON has no bytes or tuples; grain's DataLoader state is bytes, so both are tagged.
_BYTES_TAG = "__bytes__"
_TUPLE_TAG = "__tuple__"
_UNREADABLE_SUFFIX = ".unreadable"
DEBUG_LOG = "debug.log"  # beside the checkpoint directory, i.e. in the run's workdir


class _OrbaxToDebugLog(logging.Filter):
    """Keeps Orbax's records off the console: its warnings and errors (which come with
    tracebacks and TensorStore specs, several per failed read or write) go to the debug log of
    the newest Checkpointer, and the rest (several info lines per save) nowhere. What went
    wrong reaches the console as one sentence of ours."""

    def __init__(self):
        super().__init__()
        self.path: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if f"{os.sep}orbax{os.sep}" not in record.pathname:
            return True
        if record.levelno >= logging.WARNING and self.path:
            text = logging.Formatter("%(asctime)s %(levelname)s orbax: %(message)s").format(record)
            try:
                with open(self.path, "a") as f:
                    f.write(text + "\n")
            except OSError:
                pass
        return False


def _quiet_orbax(debug_log: str) -> None:
    # Orbax logs through absl's logger, shared with other libraries, so filter by source file
    # rather than lowering the whole logger's level.
    absl_logger = logging.getLogger("absl")
    mine = [f for f in absl_logger.filters if isinstance(f, _OrbaxToDebugLog)]
    if not mine:
        mine = [_OrbaxToDebugLog()]
        absl_logger.addFilter(mine[0])
    mine[0].path = debug_log


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


_WRITE_FAILURES = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                   errno.EFBIG: "file too large", errno.EROFS: "read-only file system",
                   errno.EACCES: "permission denied"}


def _write_failure(error: BaseException) -> str | None:
    """The cause of a failed write in a few words when it is the file system's (no space, quota,
    permissions), else None. TensorStore reports these as text, not as OSError."""
    for e in (error, error.__cause__, error.__context__):
        if isinstance(e, OSError) and e.errno in _WRITE_FAILURES:
            return _WRITE_FAILURES[e.errno]
    text = str(error).lower()
    for code, words in _WRITE_FAILURES.items():
        if words in text or os.strerror(code).lower() in text:
            return words
    return None


def _cause(error: BaseException) -> str:
    """One short sentence of why a step is unreadable (the whole error goes to the debug log)."""
    if isinstance(error, DamagedCheckpoint):
        return str(error)
    text = " ".join(str(error).split())
    if isinstance(error, FileNotFoundError) or "not found" in text.lower() or "NOT_FOUND" in text:
        return "some of its files are missing"
    if len(text) > 160:
        text = text[:160] + " ..."
    return f"{type(error).__name__}: {text}"


def _short(error: BaseException) -> str:
    """Returns the error's type and message on one bounded line, for log messages."""
    text = " ".join(str(error).split())
    if len(text) > 600:
        text = text[:600] + " ..."
    return f"{type(error).__name__}: {text}"


def steps_in(directory: str) -> list[int]:
    """The complete checkpoint steps in `directory`, by their names alone (no Orbax, no JAX: a
    multi-process run may call this before jax.distributed starts). A step being written, or
    one set aside as unreadable, has another name."""
    if not os.path.isdir(directory):
        return []
    return sorted(int(n) for n in os.listdir(directory)
                  if n.isdigit() and os.path.isdir(os.path.join(directory, n)))


class Checkpointer:
    """Saves and restores (train state, JSON host state) per step; keeps the `keep` newest."""

    def __init__(self, directory: str, *, keep: int = 3, primary: bool | None = None,
                 debug_log: str | None = None):
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"Checkpointer: keep must be an int >= 1, got {keep!r}")
        # Orbax refuses relative paths (0.12.8 and later), so the directory is made absolute here.
        self.directory = epath.Path(os.path.abspath(os.fspath(directory)))
        self.keep = keep
        # Only the primary process reports fallbacks, so a pod prints each message once.
        self._primary = jax.process_index() == 0 if primary is None else bool(primary)
        self.debug_log = debug_log or os.path.join(os.path.dirname(os.fspath(self.directory)),
                                                   DEBUG_LOG)
        _quiet_orbax(self.debug_log if self._primary else None)
        # How each step this object saved or restored is known to be good: "saved" (written
        # here with its manifest), "verified" (restored and matched its manifest) or
        # "unverified" (restored from a step written without a manifest).
        self.provenance: dict[int, str] = {}
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=False,
            preservation_policy=ocp.checkpoint_managers.LatestN(n=keep),
            cleanup_tmp_directories=True,
            create=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, state: Any, *, extra: Mapping[str, Any]) -> None:
        """Writes `state` (pytree of arrays), `extra` (JSON host state) and their manifest as
        checkpoint `step`."""
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
        try:
            self._manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), extra=ocp.args.JsonSave(encoded),
                    manifest=ocp.args.JsonSave(manifest_lib.make(state, encoded))),
                force=True,  # which steps to save is the caller's decision, not a save policy's
            )
        except Exception as e:  # pylint: disable=broad-except
            cause = _write_failure(e)
            if cause is None:
                raise
            self._debug(f"writing checkpoint step {step} in {self.directory} failed", e)
            newest = max(steps) if steps else None
            kept = (f"the earlier checkpoints are intact (newest: step {newest})"
                    if newest is not None else "there is no earlier checkpoint")
            raise CheckpointError(
                f"could not write the checkpoint of step {step} in {self.directory}: {cause}; "
                f"{kept}. Free space (or fix the cause) and rerun the same command to resume "
                f"(details in {self.debug_log})") from None
        self.provenance[step] = "saved"

    def latest_step(self) -> int | None:
        """Returns the newest complete checkpoint step (it may still prove unreadable), or None."""
        return self._manager.latest_step()

    def describe_latest(self) -> str:
        """The newest step and how it is known to be good, for messages."""
        step = self.latest_step()
        if step is None:
            return f"there is no checkpoint in {self.directory}"
        how = {"saved": "written by this run with checksums of every array; a rerun verifies "
                        "them and falls back to an older step on a mismatch",
               "verified": "restored by this run and verified against its checksums",
               "unverified": "restored by this run without verification: it was written "
                             "without checksums"}.get(
            self.provenance.get(step),
            "not yet verified; a rerun verifies it against its checksums and falls back to an "
            "older step on a mismatch")
        return f"the newest checkpoint is step {step} in {self.directory} ({how})"

    def restore(self, abstract_state: Any, *, accept=None) -> tuple[Any, dict, int] | None:
        """Returns the newest readable (state, extra, step) in the given shardings, or None.

        A step is readable when its arrays and host state match its manifest and
        `accept(extra)`, if given, returns without raising (it raises ValueError, TypeError or
        KeyError for host state it cannot use, e.g. a data-loader state of another format).
        """
        abstract = _abstract(abstract_state)
        self._manager.reload()
        steps = sorted(self._manager.all_steps(), reverse=True)
        if not steps:
            return None
        failures: list[tuple[int, str]] = []
        for step in steps:
            restored, error = None, None
            try:
                restored = self._read(step, abstract, accept)
            except CheckpointError:
                raise  # the checkpoints do not fit this run: no older step would either
            except Exception as e:  # pylint: disable=broad-except
                # Any read error (missing, truncated, garbled files) means this step is unusable.
                error = e
                self._debug(f"checkpoint step {step} in {self.directory} is unreadable", e)
            if not _everywhere(error is None):
                reason = _cause(error) if error is not None else "unreadable on another process"
                failures.append((step, reason))
                if self._primary:
                    log.warning("checkpoint step %d in %s is unreadable (%s); trying an older step",
                                step, self.directory, reason)
                continue
            state, extra, verified = restored
            self.provenance[step] = "verified" if verified else "unverified"
            if not verified and self._primary:
                log.warning("checkpoint step %d in %s was written without checksums; restored "
                            "it unverified", step, self.directory)
            if failures:
                bad = [s for s, _ in failures]
                self._set_aside(bad)
                if self._primary:
                    log.warning("restored checkpoint step %d from %s; renamed the unreadable newer "
                                "step(s) %s to <step>%s", step, self.directory, bad,
                                _UNREADABLE_SUFFIX)
            return state, extra, step
        detail = "; ".join(f"step {s}: {reason}" for s, reason in failures)
        raise CheckpointError(f"no readable checkpoint in {self.directory}: {detail} (details "
                              f"in {self.debug_log})")

    def close(self) -> None:
        """Releases Orbax's resources."""
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _step_dir(self, step: int) -> epath.Path:
        return self.directory / str(step)

    def _read(self, step: int, abstract: Any, accept) -> tuple[Any, dict, bool]:
        """Returns (state, extra, verified) of `step`; raises on any missing, malformed or
        mismatched part, and CheckpointError when the step holds another model's state."""
        body = None
        if (self._step_dir(step) / "manifest").exists():
            manifest = self._manager.restore(
                step, args=ocp.args.Composite(manifest=ocp.args.JsonRestore())).manifest
            body = manifest_lib.check(manifest)
            problems = manifest_lib.fit(body["arrays"], abstract)
            if problems:
                self._debug(f"checkpoint step {step} in {self.directory} does not fit the "
                            "requested state:\n" + "\n".join(problems))
                more = f" (and {len(problems) - 1} more difference(s))" if len(problems) > 1 else ""
                raise CheckpointError(
                    f"the checkpoints in {self.directory} hold another model or train state: "
                    f"{problems[0]}{more}; train this config in another workdir (all "
                    f"differences are in {self.debug_log})")
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), extra=ocp.args.JsonRestore()),
        )
        state, extra = restored.state, restored.extra
        if state is None:
            raise DamagedCheckpoint("the 'state' item is missing")
        if not isinstance(extra, dict):
            raise DamagedCheckpoint(f"the 'extra' item is {type(extra).__name__}, expected a dict")
        if body is not None:
            if manifest_lib.digest(extra) != body["extra"]:
                raise DamagedCheckpoint("its host state (extra) does not match its checksum")
            got = manifest_lib.array_checksums(state)
            bad = [path for path, entry in body["arrays"].items() if got[path][2] != entry[2]]
            if bad:
                raise DamagedCheckpoint(
                    f"{len(bad)} array(s) do not match the checksums recorded when they were "
                    f"saved, e.g. {bad[0]} (the files were changed or damaged)")
        extra = _decode(extra)
        if accept is not None:
            try:
                accept(extra)
            except (ValueError, TypeError, KeyError) as e:
                raise DamagedCheckpoint(f"its host state is unusable ({_short(e)})") from e
        return state, extra, body is not None

    def _debug(self, title: str, error: BaseException | None = None) -> None:
        """Appends `title` and the error's traceback to the debug log (best effort)."""
        if not self._primary:
            return
        text = "".join(traceback.format_exception(error)) if error is not None else ""
        stamp = datetime.datetime.now().isoformat(timespec="seconds")
        try:
            with open(self.debug_log, "a") as f:
                f.write(f"== {stamp} {title}\n{text}\n")
        except OSError:
            pass  # the log is a convenience; the message itself names the cause

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
