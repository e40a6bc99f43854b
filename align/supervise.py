"""A thin supervisor for multi-process runs: when a peer process dies, the survivors exit with
one line of ours naming it, instead of a C++ log and stack dump.

Why a supervisor. When one process of a jax.distributed run dies, the coordination service
notices the missed heartbeats (after `distributed.heartbeat_timeout_s`, or at once when the
coordinator, process 0, is the one that died) and every survivor aborts from a C++ thread
(`LOG(FATAL)` / `std::terminate`, i.e. SIGABRT). Python never gets control back: no exception,
no `finally`, no atexit. jaxlib's `missed_heartbeat_callback` would be the in-process hook, but a
Python callback cannot take its absl::Status argument (it fails with std::bad_cast). So the
command runs itself again as a child (`python -m align.main ARGV` with ALIGN_SUPERVISED=1), and
this parent, which never imports jax, reads how the child ended:

- a deliberate exit (any non-negative code but 134, i.e. 0, 2 for bad input, 3 for a non-finite
  loss, 128 + N after a preemption signal) is returned as it is;
- a death by a signal the parent forwarded (SIGTERM, SIGINT) returns 128 + N;
- an abort (a negative code, or 134) is explained from the child's last stderr lines: the
  coordination service names the task that stopped sending heartbeats, or says the coordinator
  is unreachable. The parent then prints one message as the last line of stderr, naming the
  process, the newest checkpoint (checkpoints already written are never touched; a half-written
  save is an Orbax tmp directory that resuming ignores) and WORKDIR/debug.log, where the stderr
  tail is appended, and returns PEER_FAULT_EXIT. An abort it cannot explain keeps the shell's
  code (128 + N) and points at the log.

The child's stdout is the parent's (unchanged); its stderr goes through the parent line by line
(so the progress bar, which needs a terminal, becomes plain lines). The child runs in its own
process group, so that a Ctrl-C on the terminal reaches it once, through the parent: a second
SIGINT would skip the checkpoint that align/train/preemption.py writes on the first.

Dimension letters: none (this module handles no arrays).

This module imports nothing from align and not jax: the parent stays light.
"""

from __future__ import annotations

import collections
import datetime
import os
import re
import signal
import subprocess
import sys
import threading

ENV = "ALIGN_SUPERVISED"  # set to "1" in the child: it runs the command itself
PEER_FAULT_EXIT = 4  # a peer process died or hung, or the coordinator is unreachable
DEBUG_LOG = "debug.log"
TAIL_LINES = 400  # stderr lines kept for the diagnosis and the debug log
_LINE_CHARS = 4000  # characters kept of one stderr line
_ABORT_CODE = 128 + signal.SIGABRT  # a shell's code for a child that aborted
_FORWARDED = (signal.SIGTERM, signal.SIGINT)

# "The following tasks are unhealthy (stopped sending heartbeats):\n1\n3\nThe tasks have ..."
_UNHEALTHY = re.compile(r"tasks are unhealthy \(stopped sending heartbeats\):\s*\n"
                        r"((?:[ \t]*(?:/job:[^/\s]+/replica:\d+/task:)?\d+[ \t]*\n)+)")
_TASK_ID = re.compile(r"(\d+)\s*$")
_HEARTBEAT_TIMEOUT = re.compile(r"\bTask (\d+) heartbeat timeout")
# What a task sees when the coordination service (in process 0) has gone.
_COORDINATOR_GONE = re.compile(
    r"Failed to send RPC to coordination service|Socket closed|failed to connect to all addresses"
    r"|Connection refused|Connection reset by peer|coordination service.*(?:UNAVAILABLE|unavailable)"
    r"|UNAVAILABLE.*(?:PollForError|Heartbeat)", re.IGNORECASE)


def dead_processes(text: str) -> list[int]:
    """The process ids that the coordination service says stopped sending heartbeats."""
    ids: list[int] = []
    for match in _UNHEALTHY.finditer(text):
        ids += [int(_TASK_ID.search(line).group(1))
                for line in match.group(1).splitlines() if line.strip()]
    if not ids:
        ids = [int(m.group(1)) for m in _HEARTBEAT_TIMEOUT.finditer(text)]
    return sorted(set(ids))


def diagnose(text: str, process_id: int = -1) -> str | None:
    """What the child's stderr says about a peer's fault, as a clause of our message, or None
    when it says nothing we recognise."""
    dead = [i for i in dead_processes(text) if i != process_id]
    if dead:
        if len(dead) == 1:
            return f"process {dead[0]} stopped sending heartbeats (it died or hung)"
        names = ", ".join(str(i) for i in dead)
        return f"processes {names} stopped sending heartbeats (they died or hung)"
    if process_id != 0 and _COORDINATOR_GONE.search(text):
        return "the coordinator (process 0) is unreachable (it died or its host is down)"
    return None


def checkpoint_steps(workdir: str) -> list[int]:
    """The complete checkpoint steps in WORKDIR/checkpoints, by directory name."""
    try:
        names = os.listdir(os.path.join(workdir, "checkpoints"))
    except OSError:
        return []
    return sorted(int(n) for n in names if n.isdigit())


def _write_debug_log(workdir: str, header: str, lines) -> str | None:
    """Appends the header and lines to WORKDIR/debug.log; its path, or None if it failed."""
    path = os.path.join(workdir, DEBUG_LOG)
    try:
        os.makedirs(workdir, exist_ok=True)
        with open(path, "a", encoding="utf-8", errors="replace") as f:
            f.write(f"==== {header}\n")
            f.writelines(line if line.endswith("\n") else line + "\n" for line in lines)
    except OSError:
        return None
    return path


def message(*, num_processes: int, process_id: int, workdir: str, prog: str, cause: str | None,
            returncode: int, log: str | None) -> str:
    """Our one-line report of a child that aborted."""
    who = f"process {process_id} of {num_processes}" if process_id >= 0 else \
        f"a process of {num_processes}"
    steps = checkpoint_steps(workdir)
    ckpt = os.path.join(workdir, "checkpoints")
    kept = (f"checkpoints already written in {ckpt} are kept (newest: step {steps[-1]})" if steps
            else f"no checkpoint had been written yet in {ckpt}")
    where = f"the last lines of its log are in {log}" if log else "its log is above"
    if cause is None:
        return (f"error: {who} aborted ({_how(returncode)}) for a reason not recognised; {where}; "
                f"{kept}; rerun every process's `{prog}` command to resume.")
    return (f"error: {who} stopped: {cause}; {kept}; {where}; rerun every process's `{prog}` "
            f"command to resume.")


def _how(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


def _resolved(value: int, variable: str, unset: int) -> int:
    """A distributed setting, or (when it is `unset`) the environment's, as mesh.py reads it."""
    if value not in (unset, None):
        return int(value)
    try:
        return int(os.environ.get(variable, unset) or unset)
    except ValueError:
        return unset  # the child reports the bad value


def _stream(pipe, tail: collections.deque) -> None:
    """Copies the child's stderr to ours line by line, keeping the last lines."""
    out = getattr(sys.stderr, "buffer", None)
    for raw in iter(pipe.readline, b""):
        try:
            if out is not None:
                out.write(raw)
            else:
                sys.stderr.write(raw.decode("utf-8", "replace"))
            sys.stderr.flush()
        except (OSError, ValueError):
            pass  # our stderr is gone; keep reading so that the child never blocks
        tail.append(raw.decode("utf-8", "replace")[:_LINE_CHARS])
    pipe.close()


def run_supervised(argv: list[str], *, num_processes: int, process_id: int, workdir: str,
                   prog: str) -> int | None:
    """Runs `python -m align.main ARGV` as a supervised child and returns its exit code, or
    PEER_FAULT_EXIT with our message when a peer's death aborted it. None (do nothing) for a
    single process, or in the child itself (ALIGN_SUPERVISED=1).

    num_processes <= 0 and process_id < 0 are taken from ALIGN_NUM_PROCESSES and
    ALIGN_PROCESS_ID, as align/mesh.py does.
    """
    num_processes = _resolved(num_processes, "ALIGN_NUM_PROCESSES", 0)
    process_id = _resolved(process_id, "ALIGN_PROCESS_ID", -1)
    if num_processes <= 1 or os.environ.get(ENV) == "1":
        return None
    sys.stdout.flush()
    sys.stderr.flush()
    child = subprocess.Popen([sys.executable, "-m", "align.main", *argv],
                             env=dict(os.environ, **{ENV: "1"}), stdin=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, process_group=0)
    tail: collections.deque = collections.deque(maxlen=TAIL_LINES)
    reader = threading.Thread(target=_stream, args=(child.stderr, tail), daemon=True)
    reader.start()
    forwarded: set[int] = set()

    def forward(signum, _frame):
        forwarded.add(signum)
        try:
            child.send_signal(signum)
        except OSError:
            pass  # it has just exited

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, forward) for sig in _FORWARDED}
    try:
        returncode = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    reader.join(timeout=10)  # a grandchild may hold the pipe open; do not wait for it
    if returncode >= 0 and returncode != _ABORT_CODE:
        return returncode
    if -returncode in forwarded:
        return 128 - returncode  # stopped on the signal it was sent, as without a supervisor
    lines = list(tail)
    cause = diagnose("".join(lines), process_id)
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    log = _write_debug_log(workdir, f"{stamp} process {process_id} of {num_processes}: "
                           f"`{prog}` {_how(returncode)}; {cause or 'cause not recognised'}; "
                           f"last {len(lines)} lines of stderr:", lines)
    text = message(num_processes=num_processes, process_id=process_id, workdir=workdir,
                   prog=prog, cause=cause, returncode=returncode, log=log)
    print(text, file=sys.stderr, flush=True)
    if cause is None:
        return 128 - returncode if returncode < 0 else returncode
    return PEER_FAULT_EXIT
