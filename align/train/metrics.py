"""Metric writers: JSON lines and TensorBoard in the workdir, and a progress bar.

Dimension letters: P population members.

`workdir/metrics.jsonl` holds one JSON object per write, `{"step": 10, "train/loss": 2.3}`;
non-finite values are the strings "nan", "inf", "-inf" so every line stays valid JSON.
A population run (align/train/population.py) writes [P] vectors: their means go to
metrics.jsonl and TensorBoard as for one run, the vectors to `workdir/population.jsonl`,
`{"step": 10, "train/loss": [2.3, 2.4, ...]}` (member p at index p).
Only the primary process writes. On resume, lines after the resumed step are dropped
(`MetricWriter.truncate_after`) and TensorBoard is told to purge them too.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Mapping, TextIO

import numpy as np
import tensorboardX
import tqdm

from align import atomic
from align import errors

METRICS_FILE = "metrics.jsonl"
MEMBERS_FILE = "population.jsonl"
TB_DIR = "tb"
_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _to_float(name: str, value: Any) -> float:
    """Python, NumPy or JAX scalar (or one-element array) -> float."""
    try:
        array = np.asarray(value)
    except Exception as e:  # e.g. a jax array still being computed on a dead device
        raise ValueError(f"metric {name!r}: cannot read value {value!r}: {e}") from e
    if array.size != 1 or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise ValueError(f"metric {name!r} must be a number or one-element array, got "
                         f"{type(value).__name__} with shape {array.shape} and dtype {array.dtype}")
    return float(array.reshape(()))


def _json_number(x: float) -> float | str:
    if math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def _read_records(path: str) -> list[dict]:
    """Parses a metrics file; a broken last line (a run killed mid-write) is skipped."""
    with open(path) as f:
        lines = f.read().split("\n")
    # A complete file ends with "\n", so the final split piece is "" unless a write was cut.
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                break
            raise errors.DataError(f"{path}:{i + 1}: not a JSON line ({e}): {line[:80]!r}") from None
        if not isinstance(record, dict):
            raise errors.DataError(f"{path}:{i + 1}: expected a JSON object, got {line[:80]!r}")
        records.append(record)
    return records


def _decode(v):
    if isinstance(v, list):
        return [_decode(x) for x in v]
    return _NON_FINITE.get(v, v) if isinstance(v, str) else v


def read_metrics(workdir: str, *, members: bool = False) -> list[dict]:
    """All records of workdir/metrics.jsonl (members: of population.jsonl, each value a list
    over members), with "nan"/"inf"/"-inf" turned back into floats."""
    path = os.path.join(workdir, MEMBERS_FILE if members else METRICS_FILE)
    if not os.path.exists(path):
        return []
    return [{k: _decode(v) for k, v in r.items()} for r in _read_records(path)]


def truncate_after(workdir: str, step: int, *, train_only_at_step: bool = False) -> int:
    """Drops metric lines with step > `step` (atomic rewrite, in metrics.jsonl and
    population.jsonl); returns how many were dropped from metrics.jsonl.

    train_only_at_step: also drop the lines at `step` itself that hold no train/ metric (an
    evaluation written after that step's checkpoint, to be written again).
    """
    _truncate(os.path.join(workdir, MEMBERS_FILE), step, train_only_at_step)
    return _truncate(os.path.join(workdir, METRICS_FILE), step, train_only_at_step)


def _truncate(path: str, step: int, train_only_at_step: bool) -> int:
    if not os.path.exists(path):
        return 0
    records = _read_records(path)

    def keep(record):
        at = record.get("step", -1)
        if at == step and train_only_at_step:
            return any(k.startswith("train/") for k in record)
        return at <= step

    kept = [r for r in records if keep(r)]
    with open(path) as f:
        clean = f.read().endswith("\n") or os.path.getsize(path) == 0
    if len(kept) == len(records) and clean:
        return 0
    atomic.write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
    return len(records) - len(kept)


class MetricWriter:
    """Appends scalars to workdir/metrics.jsonl and TensorBoard; a no-op off the primary process.

    members = P > 0 (a population): a metric may be a [P] vector; its mean is written as the
    scalar and the vector to population.jsonl.
    """

    def __init__(self, workdir: str, *, is_primary: bool = True, resume_step: int | None = None,
                 members: int = 0):
        """`resume_step`: drop what an earlier run logged after this step (jsonl and TensorBoard)."""
        self.workdir = workdir
        self.is_primary = is_primary
        self.members = int(members)
        self._file: TextIO | None = None
        self._members_file: TextIO | None = None
        self._tb = None
        self._purge_step: int | None = None
        if not is_primary:
            return
        os.makedirs(workdir, exist_ok=True)
        if resume_step is not None:
            self.truncate_after(resume_step)

    def truncate_after(self, step: int, *, train_only_at_step: bool = False) -> int:
        """At resume: drops jsonl lines after `step` and hides later TensorBoard events."""
        if not self.is_primary:
            return 0
        # Both files are reopened on the next write: the jsonl file is replaced under us, and
        # TensorBoard is told, through purge_step, to hide earlier events at steps > `step`.
        self.close()
        self._purge_step = max(int(step) + 1, 0)
        return truncate_after(self.workdir, step, train_only_at_step=train_only_at_step)

    def _tb_writer(self) -> tensorboardX.SummaryWriter:
        if self._tb is None:
            self._tb = tensorboardX.SummaryWriter(
                os.path.join(self.workdir, TB_DIR), purge_step=self._purge_step, flush_secs=30)
            self._purge_step = None
        return self._tb

    def _append(self, record: Mapping[str, Any]) -> None:
        if self._file is None:
            # Opened on first write, so truncate_after may run any time before it. A line cut
            # by a killed run is dropped first, or our next line would be glued onto it.
            truncate_after(self.workdir, sys.maxsize)
            self._file = open(os.path.join(self.workdir, METRICS_FILE), "a")
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()

    def write(self, step: int, metrics: Mapping[str, Any], *, prefix: str = "train") -> None:
        """One JSON line {"step": step, "prefix/name": value, ...} and one scalar per metric
        (for a population, per-member vectors also to population.jsonl)."""
        if not self.is_primary:
            return
        step = int(step)
        values, vectors = {}, {}
        for k, v in metrics.items():
            tag = f"{prefix}/{k}" if prefix else k
            if self.members and np.ndim(v) == 1 and np.shape(v)[0] == self.members:
                vectors[tag] = np.asarray(v, np.float64)
                values[tag] = float(np.mean(vectors[tag]))
            else:
                values[tag] = _to_float(k, v)
        self._append({"step": step, **{k: _json_number(v) for k, v in values.items()}})
        if vectors:
            if self._members_file is None:
                self._members_file = open(os.path.join(self.workdir, MEMBERS_FILE), "a")
            record = {k: [_json_number(float(x)) for x in v] for k, v in vectors.items()}
            self._members_file.write(json.dumps({"step": step, **record}, allow_nan=False) + "\n")
            self._members_file.flush()
        for tag, value in values.items():
            self._tb_writer().add_scalar(tag, value, step)

    def write_text(self, step: int, name: str, text: str) -> None:
        """Text (e.g. samples) as a TensorBoard text summary and a JSON line {"step", name: text}."""
        if not self.is_primary:
            return
        self._append({"step": int(step), name: str(text)})
        self._tb_writer().add_text(name, str(text), int(step))

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        """Closes every file, even when one fails to flush (e.g. a full disk); then raises the
        first failure."""
        failures = []
        for name in ("_file", "_members_file"):
            handle = getattr(self, name)
            setattr(self, name, None)
            if handle is not None:
                try:
                    handle.close()
                except OSError as e:
                    failures.append(e)
        tb, self._tb = self._tb, None
        if tb is not None:
            try:
                tb.close()
            except OSError as e:
                failures.append(e)
                _abandon(tb)
        if failures:
            raise failures[0]

    def __enter__(self) -> "MetricWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _abandon(tb) -> None:
    """Marks the event files of a TensorBoard writer whose close failed as closed and stops
    their threads: otherwise tensorboardX retries the close at exit and prints a second
    traceback of the same failure (private attributes of tensorboardX 2.x; best effort)."""
    for file_writer in list((getattr(tb, "all_writers", None) or {}).values()):
        events = getattr(file_writer, "event_writer", None)
        if events is None:
            continue
        try:
            events._worker.stop()  # pylint: disable=protected-access
        except Exception:  # pylint: disable=broad-except
            pass  # it is being abandoned; its own error was already reported
        events._closed = True  # pylint: disable=protected-access


def _short(x: float) -> str:
    if not math.isfinite(x):
        return str(x)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.4g}"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """Progress of a run: a tqdm bar on a TTY; otherwise (pipes, nohup, a scheduler's log) a
    plain line every `log_every` steps with step, loss, lr, tokens/s and ETA.

    The ETA starts counting at the first update, so it leaves out the compilation of the first
    step; `write` prints a line (evaluation results) without breaking the bar.
    """

    def __init__(self, total: int, initial: int = 0, *, enabled: bool = True,
                 file: TextIO | None = None, log_every: int = 10):
        self._stream = sys.stderr if file is None else file
        is_tty = bool(getattr(self._stream, "isatty", lambda: False)())
        self._total, self._log_every = int(total), max(int(log_every), 1)
        self._bar = None
        self._lines = enabled and not is_tty
        self._start: tuple[float, int] | None = None
        if enabled and is_tty:
            self._bar = tqdm.tqdm(total=total, initial=initial, file=self._stream, unit="step",
                                  dynamic_ncols=True, smoothing=0.1)

    @property
    def enabled(self) -> bool:
        """Whether a bar is shown (plain lines are shown instead when the stream is no TTY)."""
        return self._bar is not None

    def eta(self, step: int) -> float:
        """Seconds left, from the pace since the first update (nan before two updates)."""
        now = time.perf_counter()
        if self._start is None:
            self._start = (now, int(step))
            return math.nan
        elapsed, done = now - self._start[0], int(step) - self._start[1]
        return elapsed / done * (self._total - int(step)) if done > 0 else math.nan

    def update(self, step: int, *, loss: float, tokens_per_s: float, **extra: float) -> None:
        """Moves to `step` and shows the latest loss, throughput and any extras."""
        eta = self.eta(step)
        if self._bar is not None:
            self._bar.update(int(step) - self._bar.n)
            postfix = {"loss": f"{float(loss):.4f}", "tok/s": _short(float(tokens_per_s))}
            postfix.update({k: _short(float(v)) for k, v in extra.items()})
            self._bar.set_postfix(postfix, refresh=True)
        elif self._lines and (step % self._log_every == 0 or step == self._total):
            parts = [f"step {int(step)}/{self._total}", f"loss {float(loss):.4f}"]
            parts += [f"{k} {_short(float(v))}" for k, v in extra.items()]
            parts.append(f"tok/s {_short(float(tokens_per_s))}")
            parts.append(f"eta {_duration(eta)}" if math.isfinite(eta) else "eta -")
            self.write("  ".join(parts))

    def write(self, text: str) -> None:
        """A line above the bar, or a plain line (flushed at once, for logs read live)."""
        if self._bar is not None:
            self._bar.write(text, file=self._stream)
        elif self._lines:
            print(text, file=self._stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._lines = False
