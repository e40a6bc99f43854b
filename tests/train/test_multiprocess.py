"""Two processes joined by jax.distributed on localhost train like one process with all devices."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np

from align import config as config_lib
from align.train import loop

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARGS = ["--config", "configs/sft.py:size=tiny,steps=5",
        "--config.data.num_train=512", "--config.data.num_test=64",
        "--config.data.num_prompts=64", "--config.data.batch_size=16",
        "--config.data.eval_batch_size=16", "--config.eval.num_samples=8",
        "--config.eval.max_new_tokens=8", "--config.eval.num_batches=1",
        "--config.train.progress=False", "--config.train.eval_every=0",
        "--config.train.checkpoint_every=5", "--config.mesh.fsdp=2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict:
    return dict(os.environ, JAX_PLATFORMS="cpu",
                XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def _final_params(workdir):
    cfg = config_lib.config_from_json(os.path.join(workdir, "config.json"))
    cfg.distributed.update(coordinator_address="", num_processes=0, process_id=-1)
    setup = loop.build(cfg, str(workdir), devices=jax.devices()[:4])
    state, _, step = setup.checkpointer.restore(setup.spec.abstract)
    setup.close()
    return step, [np.asarray(x) for x in jax.tree.leaves(state["params"])]


def test_two_processes_match_one_process(tmp_path):
    data = f"--config.data.data_dir={tmp_path / 'data'}"
    single = subprocess.run(
        [sys.executable, "-m", "align.main", *ARGS, data, "--workdir", str(tmp_path / "one")],
        cwd=ROOT, env=_env(4), capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]

    port = _free_port()
    procs = [subprocess.Popen(
        [sys.executable, "-m", "align.main", *ARGS, data, "--workdir", str(tmp_path / "two"),
         f"--config.distributed.coordinator_address=localhost:{port}",
         "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}"],
        cwd=ROOT, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]

    step_one, params_one = _final_params(tmp_path / "one")
    step_two, params_two = _final_params(tmp_path / "two")
    assert step_one == step_two == 5
    for a, b in zip(params_one, params_two):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
