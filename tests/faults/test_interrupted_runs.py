"""Runs interrupted by kill -9, SIGTERM or a full disk resume to bit-identical final states; a
config change on resume is refused.

One chain per objective family (offline DPO, listwise LiPO-lambda, online RLOO): an
uninterrupted reference run, then a run killed at random moments (during steps and during
saves alike) and rerun until it finishes. "Bit-identical" compares the checksums that every
checkpoint's manifest records of every array (64 bits per array, computed from its bits).
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 60
TINY = ["--config.model.d_model=32", "--config.model.n_layers=1", "--config.model.n_heads=2",
        "--config.model.n_kv_heads=1", "--config.model.d_ff=64",
        "--config.data.num_train=64", "--config.data.num_test=16",
        "--config.data.num_prompts=16", "--config.data.batch_size=8",
        "--config.data.eval_batch_size=8", "--config.data.list_size=3",
        "--config.eval.num_samples=0", "--config.eval.num_batches=1",
        "--config.online.max_new_tokens=6", "--config.train.progress=False",
        "--config.train.eval_every=0", "--config.train.checkpoint_every=3",
        "--config.train.log_every=1", "--config.init.workdir=", "--config.init.config="]
FAMILIES = {
    "offline": f"configs/preference.py:objective=dpo,size=tiny,steps={STEPS}",
    "listwise": f"configs/preference.py:objective=lipo_lambda,size=tiny,steps={STEPS}",
    "online": f"configs/online.py:objective=rloo,size=tiny,steps={STEPS}",
}
KILLS = 2  # kill -9 per family


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


def _command(config, workdir, data_dir, *extra):
    return [sys.executable, "-m", "align.main", "--config", config, "--workdir", str(workdir),
            f"--config.data.data_dir={data_dir}", *TINY, *extra]


def _env():
    return dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
                JAX_PLATFORMS="cpu")


def _run(config, workdir, data_dir, *extra):
    return subprocess.run(_command(config, workdir, data_dir, *extra), cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=600)


def _start(config, workdir, data_dir, *extra):
    return subprocess.Popen(_command(config, workdir, data_dir, *extra), cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _steps(workdir):
    ckpts = os.path.join(workdir, "checkpoints")
    return sorted(int(n) for n in os.listdir(ckpts) if n.isdigit()) if os.path.isdir(ckpts) else []


def _trained_steps(workdir):
    """The newest step in metrics.jsonl (written as training goes)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return 0
    steps = [0]
    for line in open(path).read().splitlines():
        try:
            steps.append(int(json.loads(line).get("step", 0)))
        except ValueError:
            pass  # a line being written
    return max(steps)


def _wait_for(proc, condition, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None and not condition():
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be interrupted: " + \
        proc.communicate()[1][-2000:]


def _checksums(workdir, step):
    path = os.path.join(workdir, "checkpoints", str(step), "manifest", "metadata")
    return json.load(open(path))["arrays"]


def _assert_identical(ref, other):
    assert _steps(ref)[-1] == _steps(other)[-1] == STEPS
    assert _checksums(ref, STEPS) == _checksums(other, STEPS)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_kill_9_at_random_points_then_resume_is_bit_identical(family, data_dir, tmp_path):
    config = FAMILIES[family]
    ref = _run(config, tmp_path / "ref", data_dir)
    assert ref.returncode == 0, ref.stderr[-3000:]
    rng = random.Random(family)
    run = tmp_path / "killed"
    for kill in range(KILLS):
        before = _steps(run)
        proc = _start(config, run, data_dir)
        # Once it has saved a step beyond where it started, at a random moment: inside a step,
        # a metrics write or a checkpoint save.
        start = before[-1] if before else 0
        _wait_for(proc, lambda: _trained_steps(run) > start + 3)
        time.sleep(rng.uniform(0.0, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        assert _steps(run)[-1] > start, f"kill {kill}: no new checkpoint"
        assert _steps(run)[-1] < STEPS, f"kill {kill} came too late"
    done = _run(config, run, data_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from the checkpoint of step" in done.stdout
    _assert_identical(tmp_path / "ref", run)


ONLY_AT_THE_END = "--config.train.checkpoint_every=1000"  # so a rerun resumes from the emergency one


@pytest.fixture(scope="module")
def uninterrupted(data_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted") / "run"
    ref = _run(FAMILIES["offline"], workdir, data_dir, ONLY_AT_THE_END)
    assert ref.returncode == 0, ref.stderr[-3000:]
    return workdir


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_writes_a_checkpoint_and_resume_is_bit_identical(sig, data_dir, tmp_path,
                                                                  uninterrupted):
    config = FAMILIES["offline"]
    run = tmp_path / "run"
    proc = _start(config, run, data_dir, ONLY_AT_THE_END)
    _wait_for(proc, lambda: _trained_steps(run) >= 5)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err[-3000:]
    [step] = _steps(run)
    assert 5 <= step < STEPS
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"stopped by {signal.Signals(sig).name} after step {step} of "
                           f"{STEPS}: wrote the checkpoint of step {step}"), last
    done = _run(config, run, data_dir, ONLY_AT_THE_END)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resumed from the checkpoint of step {step}" in done.stdout
    _assert_identical(uninterrupted, run)


def test_config_change_on_resume_is_refused_and_nothing_is_overwritten(data_dir, tmp_path):
    config = FAMILIES["offline"]
    run = tmp_path / "run"
    first = _run(config, run, data_dir, "--config.train.steps=6")
    assert first.returncode == 0, first.stderr[-3000:]
    stored = open(run / "config.json").read()
    for change in (["--config.optim.lr=0.001", "--config.seed=7"], ["--config.data.num_train=96"],
                   ["--config.model.d_model=64"]):
        out = _run(config, run, data_dir, "--config.train.steps=6", *change)
        assert out.returncode == 2, out.stderr[-2000:]
        message = out.stderr.strip().splitlines()[-1]
        for item in change:
            key, value = item[len("--config."):].split("=")
            assert key in message and value in message, message
        assert "--continue-with-changes" in message
        assert open(run / "config.json").read() == stored
    # Settings that cannot change a result are reported, not refused.
    out = _run(config, run, data_dir, "--config.train.steps=6", "--config.train.log_every=2")
    assert out.returncode == 0 and "nothing to do" in out.stdout, out.stderr[-2000:]
    # A deliberate continuation trains on and records the change.
    out = _run(config, run, data_dir, "--config.train.steps=9", "--continue-with-changes")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "continuing with new values: train.steps 6 -> 9" in out.stdout
    history = [json.loads(line) for line in open(run / "config_history.jsonl")]
    assert history[-1]["kind"] == "continued" and history[-1]["resumed_from_step"] == 6
    assert history[-1]["changes"] == {"train.steps": [6, 9]}
    assert json.load(open(run / "config.json"))["train"]["steps"] == 9
    assert _steps(run)[-1] == 9


def _mount_tmpfs(path, size):
    os.makedirs(path, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


# Where no tmpfs can be mounted: the same command, with every checkpoint write counted and
# failing with ENOSPC once N bytes of arrays have been written.
_FILLING_DISK = """
import errno, sys
import numpy as np, jax, orbax.checkpoint as ocp
from align import main
budget = int(sys.argv[1])
save = ocp.CheckpointManager.save
def filling(self, step, *args, **kwargs):
    global budget
    state = kwargs["args"]["state"].item
    budget -= sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(state))
    if budget < 0:
        raise OSError(errno.ENOSPC, "No space left on device", str(self.directory))
    return save(self, step, *args, **kwargs)
ocp.CheckpointManager.save = filling
sys.exit(main.main(sys.argv[2:]))
"""


def test_full_disk_keeps_the_checkpoints_and_resumes_bit_identically(data_dir, tmp_path):
    """The workdir on a small tmpfs where the machine allows mounting one, else a write wrapper
    that fails once N bytes are written. The run stops with one line, keeps every checkpoint it
    wrote, and once there is space the rerun finishes as if nothing had happened."""
    config = FAMILIES["offline"]
    keep = ["--config.train.keep_checkpoints=100"]
    ref = _run(config, tmp_path / "ref", data_dir, *keep)
    assert ref.returncode == 0, ref.stderr[-3000:]
    disk = tmp_path / "disk"
    per_step = sum(os.path.getsize(os.path.join(d, f))
                   for d, _, fs in os.walk(tmp_path / "ref" / "checkpoints" / "3") for f in fs)
    # ALIGN_FAULTS_NO_TMPFS=1 takes the wrapper's path on a machine that could mount one.
    mounted = (not os.environ.get("ALIGN_FAULTS_NO_TMPFS")
               and _mount_tmpfs(disk, f"{8 * per_step // 1024 + 64}k"))
    os.makedirs(disk, exist_ok=True)
    try:
        run = disk / "run"
        if mounted:
            full = _run(config, run, data_dir, *keep)
        else:
            cmd = _command(config, run, data_dir, *keep)
            full = subprocess.run([sys.executable, "-c", _FILLING_DISK, str(6 * per_step),
                                   *cmd[3:]], cwd=ROOT, env=_env(), capture_output=True,
                                  text=True, timeout=600)
        assert full.returncode == 2, full.stderr[-3000:]
        message = full.stderr.strip().splitlines()[-1]
        assert "no space left on device" in message.lower() and "checkpoint" in message, message
        saved = _steps(run)
        assert saved and saved[-1] < STEPS
        assert f"step {saved[-1] + 3}" in message, message
        if mounted:  # space comes back
            subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        done = _run(config, run, data_dir, *keep)
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"resumed from the checkpoint of step {saved[-1]}" in done.stdout
        _assert_identical(tmp_path / "ref", run)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(disk)], check=False)
