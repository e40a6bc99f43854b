"""When a process of a multi-process run dies (kill -9), the survivors' supervisors
(align/supervise.py) exit in bounded time with code 4 and one message of ours naming the dead
process, and the checkpoints already written are kept; a normal run and SIGTERM go through the
supervisor unchanged."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from align import supervise

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["--config.model.d_model=32", "--config.model.n_layers=1", "--config.model.n_heads=2",
        "--config.model.n_kv_heads=1", "--config.model.d_ff=64",
        "--config.data.num_train=256", "--config.data.num_test=16",
        "--config.data.num_prompts=16", "--config.data.batch_size=8",
        "--config.data.eval_batch_size=8", "--config.eval.num_samples=0",
        "--config.eval.num_batches=1", "--config.train.progress=False",
        "--config.train.eval_every=0", "--config.train.keep_checkpoints=1000"]
HEARTBEAT_S = 5
BOUND_S = 60  # how long a survivor may take to stop once its peer is dead
# A test-only entry: the supervisor that align.main's main() starts, run on the same argv.
WRAPPER = ("import sys; from align import supervise; "
           "code = supervise.run_supervised(sys.argv[4:], num_processes=int(sys.argv[1]), "
           "process_id=int(sys.argv[2]), workdir=sys.argv[3], prog='align train'); "
           "sys.exit(-1 if code is None else code)")

# What a surviving process's stderr ends with (shortened from real runs of jax 0.10.2).
PEER_DIED = """\
E1203 17:18:17.839576   31837 coordination_service.cc:1549] [525638423321010802] Use error \
polling to propagate the following error to all tasks: UNAVAILABLE: The following tasks are \
unhealthy (stopped sending heartbeats):
1
The tasks have crashed. Check the task logs for an earlier error, or scheduler events (e.g. \
preemption, eviction) to debug further. [type.googleapis.com/tensorflow.CoordinationServiceError='']
E1203 17:18:17.839998   31848 coordination_service_agent.cc:289] Polled an error from \
coordination service (this can be an error from this or another task).
F1203 17:18:17.840275   31848 client.h:80] Terminating process because the JAX distributed \
service detected fatal errors. This most likely indicates that another task died; see the other \
task logs for more details. absl::Status: INTERNAL: Shutdown barrier has failed.
Barrier result: 'INTERNAL: Barrier failed because: task is set to ERROR: UNAVAILABLE: Task 1 \
heartbeat timeout. This indicates that the remote task has failed, got preempted, or crashed \
unexpectedly.
*** Check failure stack trace: ***
    @     0x7f66f0140634  absl::lts_20260107::log_internal::LogMessage::SendToLog()
"""
COORDINATOR_DIED = """\
W1203 17:19:30.104113     434 preemption_sync_manager.cc:147] Failed to retrieve preemption \
notice from coordination service: UNAVAILABLE: Socket closed
Additional GRPC error information from remote target coordination_service while calling \
/xla.coordination.CoordinationService/GetKeyValue:
:UNKNOWN:Error received from peer  {grpc_status:14, grpc_message:"Socket closed"}. This is only \
expected if one of the tasks is unhealthy. Check the logs for the actual root cause.
E1203 17:19:30.104274     434 coordination_service_agent.cc:289] Polled an error from \
coordination service (this can be an error from this or another task).
F1203 17:19:30.104285     434 client.h:80] Terminating process because the JAX distributed \
service detected fatal errors. absl::Status: UNAVAILABLE: Failed to send RPC to coordination \
service. Either the leader task was preempted/died/restarted unexpectedly or this task is \
experiencing network issues.
*** Check failure stack trace: ***
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=1")
    env.pop(supervise.ENV, None)
    return env


def _supervisor(num: int, pid: int, workdir, args, out):
    return subprocess.Popen(
        [sys.executable, "-c", WRAPPER, str(num), str(pid), str(workdir), *args,
         "--workdir", str(workdir)],
        cwd=ROOT, env=_env(), stdout=out, stderr=out, start_new_session=True)


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(name))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_for(predicate, timeout: float, procs, what: str):
    deadline = time.monotonic() + timeout
    while not predicate():
        for p in procs:
            assert p.poll() is None, f"a supervisor exited with {p.returncode} before {what}"
        assert time.monotonic() < deadline, f"no {what} after {timeout:.0f} s"
        time.sleep(0.2)


def _stop(procs):
    for p in procs:
        if p.poll() is None:
            for child in _children(p.pid):
                os.kill(child, signal.SIGKILL)
            p.kill()
            p.wait()


def _two_process_args(tmp_path, steps: int, every: int):
    port = _free_port()
    return [["--config", f"configs/sft.py:size=tiny,steps={steps}", *TINY,
             f"--config.train.checkpoint_every={every}",
             f"--config.data.data_dir={tmp_path / 'data'}",
             f"--config.distributed.coordinator_address=localhost:{port}",
             "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}",
             f"--config.distributed.heartbeat_timeout_s={HEARTBEAT_S}"] for i in range(2)]


def test_the_parser_names_the_dead_process_or_the_coordinator_and_nothing_else():
    assert supervise.dead_processes(PEER_DIED) == [1]
    assert supervise.diagnose(PEER_DIED, 0) == \
        "process 1 stopped sending heartbeats (it died or hung)"
    # The coordinator may abort on a failed barrier before it lists the unhealthy tasks.
    assert supervise.dead_processes(PEER_DIED.split("The tasks have crashed")[1]) == [1]
    assert supervise.dead_processes("tasks are unhealthy (stopped sending heartbeats):\n"
                                    "/job:jax_worker/replica:0/task:2\n3\nThe tasks") == [2, 3]
    assert supervise.diagnose(COORDINATOR_DIED, 1) == \
        "the coordinator (process 0) is unreachable (it died or its host is down)"
    for unknown in ("", "Segmentation fault\n", "terminate called after throwing an instance "
                    "of 'std::bad_alloc'\n  what():  std::bad_alloc\n"):
        assert supervise.diagnose(unknown, 1) is None
    # The coordinator does not report itself unreachable.
    assert supervise.diagnose(COORDINATOR_DIED, 0) is None


def test_the_message_names_the_newest_checkpoint_and_the_log(tmp_path):
    for name in ("3", "12", "15.orbax-checkpoint-tmp", "notes"):
        (tmp_path / "checkpoints" / name).mkdir(parents=True)
    text = supervise.message(num_processes=2, process_id=0, workdir=str(tmp_path),
                             prog="align train", returncode=-6, log="/x/debug.log",
                             cause=supervise.diagnose(PEER_DIED, 0))
    assert text == (f"error: process 0 of 2 stopped: process 1 stopped sending heartbeats (it "
                    f"died or hung); checkpoints already written in {tmp_path}/checkpoints are "
                    f"kept (newest: step 12); the last lines of its log are in /x/debug.log; "
                    f"rerun every process's `align train` command to resume.")
    unknown = supervise.message(num_processes=2, process_id=1, workdir=str(tmp_path / "new"),
                                prog="align train", returncode=-11, log=None, cause=None)
    assert "aborted (signal SIGSEGV) for a reason not recognised" in unknown
    assert "no checkpoint had been written yet" in unknown


def test_one_process_and_the_child_itself_are_not_supervised(monkeypatch):
    monkeypatch.delenv(supervise.ENV, raising=False)
    monkeypatch.delenv("ALIGN_NUM_PROCESSES", raising=False)
    assert supervise.run_supervised(["--x"], num_processes=1, process_id=0, workdir="w",
                                    prog="p") is None
    assert supervise.run_supervised(["--x"], num_processes=0, process_id=-1, workdir="w",
                                    prog="p") is None
    monkeypatch.setenv(supervise.ENV, "1")
    assert supervise.run_supervised(["--x"], num_processes=2, process_id=0, workdir="w",
                                    prog="p") is None


def _run_two(tmp_path, workdir, args, name):
    logs = [open(tmp_path / f"{name}{i}", "w+") for i in range(2)]
    procs = [_supervisor(2, i, workdir, a, logs[i]) for i, a in enumerate(args)]
    return procs, logs


def _texts(logs):
    out = []
    for log in logs:
        log.seek(0)
        out.append(log.read())
    return out


def _finish_two(tmp_path, workdir, args, name):
    """Runs both processes to the end; each must exit 0 without a message of the supervisor."""
    procs, logs = _run_two(tmp_path, workdir, args, name)
    try:
        codes = [p.wait(timeout=400) for p in procs]
    finally:
        _stop(procs)
    for code, text in zip(codes, _texts(logs)):
        assert code == 0, text[-3000:]
        assert "error: process" not in text


def _manifest(workdir, step):
    path = os.path.join(workdir, "checkpoints", str(step), "manifest", "metadata")
    with open(path) as f:
        return json.load(f)["arrays"]


def test_sigterm_to_one_process_stops_all_at_one_step_and_resume_is_bit_identical(tmp_path):
    """A normal two-process run exits 0 through the supervisors; a SIGTERM to one process of
    another makes both save the same step and exit 143; their rerun ends bit-identical."""
    steps = 150
    every_step = ["--config.train.log_every=1"]
    args = [a + every_step for a in _two_process_args(tmp_path, steps=steps, every=1000)]
    _finish_two(tmp_path, tmp_path / "ref", args, "ref")
    assert supervise.checkpoint_steps(str(tmp_path / "ref")) == [steps]

    workdir = tmp_path / "run"
    args = [a + every_step for a in _two_process_args(tmp_path, steps=steps, every=1000)]
    procs, logs = _run_two(tmp_path, workdir, args, "run")
    try:
        metrics = workdir / "metrics.jsonl"
        _wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 2, 400,
                  procs, "training")
        procs[1].send_signal(signal.SIGTERM)  # forwarded to process 1's training child only
        codes = [p.wait(timeout=BOUND_S * 2) for p in procs]
    finally:
        _stop(procs)
    texts = _texts(logs)
    for code, text in zip(codes, texts):
        assert code == 128 + signal.SIGTERM, text[-3000:]
    [saved] = supervise.checkpoint_steps(str(workdir))
    assert 0 < saved < steps
    for text in texts:
        assert f"stopped by SIGTERM after step {saved} of {steps}" in text, text[-2000:]

    args = [a + every_step for a in _two_process_args(tmp_path, steps=steps, every=1000)]
    _finish_two(tmp_path, workdir, args, "resume")
    assert _manifest(tmp_path / "ref", steps) == _manifest(workdir, steps)


@pytest.mark.parametrize("victim", [1, 0])
def test_a_dead_peer_stops_the_survivor_with_our_message(tmp_path, victim):
    workdir = tmp_path / "run"
    survivor = 1 - victim
    logs = [open(tmp_path / f"log{i}", "w+") for i in range(2)]
    procs = [_supervisor(2, i, workdir, a, logs[i])
             for i, a in enumerate(_two_process_args(tmp_path, steps=400, every=1))]
    try:
        _wait_for(lambda: supervise.checkpoint_steps(str(workdir)), 400, procs, "checkpoint")
        before = supervise.checkpoint_steps(str(workdir))
        children = _children(procs[victim].pid)
        assert len(children) == 1, children
        os.kill(children[0], signal.SIGKILL)
        start = time.monotonic()
        code = procs[survivor].wait(timeout=BOUND_S)
        took = time.monotonic() - start
        procs[victim].wait(timeout=BOUND_S)
    finally:
        _stop(procs)
    logs[survivor].seek(0)
    text = logs[survivor].read()
    assert code == supervise.PEER_FAULT_EXIT, text[-3000:]
    cause = ("process 1 stopped sending heartbeats (it died or hung)" if victim == 1 else
             "the coordinator (process 0) is unreachable (it died or its host is down)")
    last = text.rstrip("\n").splitlines()[-1]
    assert last.startswith(f"error: process {survivor} of 2 stopped: {cause}; "), last
    after = supervise.checkpoint_steps(str(workdir))
    assert set(before) <= set(after) and after, (before, after)
    assert f"(newest: step {after[-1]})" in last
    assert f"{workdir / 'debug.log'}" in last and "rerun every process's" in last
    # The checkpointer writes Orbax's errors to the same file; ours is a headed entry.
    debug = (workdir / "debug.log").read_text()
    assert f"process {survivor} of 2: `align train` signal SIGABRT; {cause}; last " in debug
    assert took < BOUND_S
    print(f"victim {victim}: survivor stopped {took:.1f} s after the kill")


def test_sigterm_to_the_supervisor_reaches_the_child(tmp_path):
    # The supervisor believes it is one of two processes; its child trains alone (cheaper).
    workdir = tmp_path / "run"
    log = open(tmp_path / "log", "w+")
    args = ["--config", "configs/sft.py:size=tiny,steps=400", *TINY,
            "--config.train.checkpoint_every=1", f"--config.data.data_dir={tmp_path / 'data'}"]
    proc = _supervisor(2, 0, workdir, args, log)
    try:
        _wait_for(lambda: (workdir / "config.json").exists(), 400, [proc], "config.json")
        children = _children(proc.pid)
        assert len(children) == 1, children
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=BOUND_S)
    finally:
        _stop([proc])
    log.seek(0)
    text = log.read()
    assert code == 128 + signal.SIGTERM, text[-3000:]
    assert not _alive(children[0])
    assert "error: process" not in text
