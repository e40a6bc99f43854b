"""Stopping on a preemption signal: finish the step, write a checkpoint, exit with a message.

TPU and cloud preemption, schedulers and Ctrl-C send SIGTERM or SIGINT before they kill. While
the training loop runs, `Watch` turns the first such signal into a request: the loop finishes
the step it is in, writes a checkpoint of it and raises `Preempted`, whose message says which
step was saved. The rerun resumes from that checkpoint exactly as from any other, so the final
state is bit-identical to an uninterrupted run's. A second signal of the same kind acts as it
would without `Watch` (SIGINT raises KeyboardInterrupt, SIGTERM terminates), for a user who does
not want to wait for the step; one that comes within DUPLICATE_S of the first is taken for the
same signal delivered twice (a scheduler that signals every process of a job, and a supervisor
that forwards it).

Several processes. The signal may reach one process (Ctrl-C in one terminal) or all of them (a
pod's preemption), at different steps. Every process must save the same step, since a save is a
collective, so they agree through the jax.distributed key-value store (host-only RPCs to the
coordinator; the devices are not involved):

- a process that got a signal publishes a request;
- at every step every process looks for a request; the first time it sees one, it publishes the
  step it has reached; after that it reads the steps the others published, without waiting;
- once every process has published one, each stops after the largest of them plus 2. Nobody
  can be past that step by then: a process is at most one step ahead of any other (a step's
  metrics are read one step later, and reading them needs every process's part of that step),
  and each learns the last published step within one more step of its own. No process ever
  blocks on another, so the agreement cannot deadlock with the steps' own collectives.

Dimension letters: none (this module handles no arrays).
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time

import jax
from jax._src import distributed as jax_distributed  # the key-value client has no public accessor

SIGNALS = (signal.SIGTERM, signal.SIGINT)
DUPLICATE_S = 1.0  # a second signal this soon after the first is taken for the same one
_watches = itertools.count()  # one key prefix per Watch; every process counts the same way


class Preempted(Exception):
    """Training stopped on a signal after writing a checkpoint (the message says which)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number."""
        return 128 + self.signum


def _client():
    """The jax.distributed key-value client."""
    client = jax_distributed.global_state.client
    if client is None:
        raise RuntimeError("jax.distributed is not initialized, but jax.process_count() > 1")
    return client


class Watch:
    """Catches SIGTERM and SIGINT while training runs (main thread only; elsewhere it does
    nothing) and says at which step to stop (`stop_step`)."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}
        self._prefix = f"align/preemption/{next(_watches)}"
        self._requested = False
        self._seen = False
        self._stop_at: int | None = None
        self._first = 0.0

    def __enter__(self) -> Watch:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        now = time.monotonic()
        if self.signum is None:
            self.signum, self._first = signum, now
            return
        if now - self._first < DUPLICATE_S:
            return  # one signal delivered twice, e.g. to a process group and by a supervisor
        # A second signal acts as it would have without this watch.
        previous = self._previous.get(signum, signal.SIG_DFL)
        signal.signal(signum, previous)
        if callable(previous):
            previous(signum, frame)  # SIGINT's default: KeyboardInterrupt
        elif previous == signal.SIG_DFL:
            os.kill(os.getpid(), signum)

    def stop_step(self, step: int, total: int) -> int | None:
        """The step to stop after (at most `total`), once a signal has reached any process
        (this one at step `step`, the number of steps completed); None while no process has
        one, or until they agree. Every process must call this at every step."""
        if self._stop_at is not None:
            return self._stop_at
        if jax.process_count() == 1:
            if self.signum is not None:
                self._stop_at = step
            return self._stop_at
        client = _client()
        me, n = jax.process_index(), jax.process_count()
        if self.signum is not None and not self._requested:
            client.key_value_set(f"{self._prefix}/request/{me}", str(self.signum),
                                 allow_overwrite=True)
            self._requested = True
        if not self._seen:
            requests = client.key_value_dir_get(f"{self._prefix}/request/")
            if not requests:
                return None
            if self.signum is None:
                self.signum = int(requests[0][1])  # the signal that stopped the job
            client.key_value_set(f"{self._prefix}/seen/{me}", str(step), allow_overwrite=True)
            self._seen = True
        seen = client.key_value_dir_get(f"{self._prefix}/seen/")
        if len(seen) < n:
            return None  # not every process has seen the request yet; none waits for it
        self._stop_at = min(max(int(v) for _, v in seen) + 2, total)
        return self._stop_at

    def signal_name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else "a signal"
