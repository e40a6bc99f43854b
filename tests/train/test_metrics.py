"""Metric writers: JSON lines, TensorBoard events, resume truncation, progress bar."""

import glob
import io
import json
import math
import os
import struct

import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from align.train import metrics as M


def _events(tb_dir):
    """Every Event in the TFRecord-framed event files under `tb_dir`."""
    out = []
    for path in sorted(glob.glob(os.path.join(tb_dir, "events.out.tfevents.*"))):
        data = open(path, "rb").read()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            payload = data[pos + 12:pos + 12 + length]  # skip length and its CRC
            pos += 12 + length + 4  # payload CRC
            out.append(event_pb2.Event.FromString(payload))
    return out


def _scalars(tb_dir):
    return [(e.step, v.tag, v.simple_value) for e in _events(tb_dir)
            for v in e.summary.value if v.HasField("simple_value")]


def test_jsonl_and_tensorboard(tmp_path):
    import jax.numpy as jnp

    w = M.MetricWriter(str(tmp_path))
    w.write(1, {"loss": jnp.float32(2.5), "acc": np.float64(0.25), "n": 3})
    w.write(2, {"loss": float("nan"), "grad": np.array([float("inf")])}, prefix="eval")
    w.write_text(2, "samples/0", "hello world")
    # Each write is flushed: a reader sees it before close.
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"step": 1, "train/loss": 2.5, "train/acc": 0.25, "train/n": 3.0},
        {"step": 2, "eval/loss": "nan", "eval/grad": "inf"},
        {"step": 2, "samples/0": "hello world"},
    ]
    w.close()
    recs = M.read_metrics(str(tmp_path))
    assert math.isnan(recs[1]["eval/loss"]) and recs[1]["eval/grad"] == math.inf
    scalars = _scalars(str(tmp_path / "tb"))
    assert (1, "train/loss", 2.5) in scalars and (1, "train/n", 3.0) in scalars
    assert any(step == 2 and tag == "eval/loss" and math.isnan(v) for step, tag, v in scalars)
    tags = {v.tag for e in _events(str(tmp_path / "tb")) for v in e.summary.value}
    assert any(t.startswith("samples/0") for t in tags)


def test_bad_metric_value_is_named(tmp_path):
    with M.MetricWriter(str(tmp_path)) as w:
        with pytest.raises(ValueError, match=r"metric 'vec'.*shape \(3,\)"):
            w.write(1, {"vec": np.zeros(3)})
        with pytest.raises(ValueError, match=r"metric 'txt'"):
            w.write(1, {"txt": "abc"})


def test_non_primary_writes_nothing(tmp_path):
    w = M.MetricWriter(str(tmp_path / "w"), is_primary=False)
    w.write(1, {"loss": 1.0})
    w.write_text(1, "t", "x")
    w.close()
    assert not os.path.exists(tmp_path / "w")


def test_truncated_last_line_skipped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "train/loss": 1.0}\n{"step": 2, "train/loss": 0.5}\n{"step": 3, "tr')
    assert [r["step"] for r in M.read_metrics(str(tmp_path))] == [1, 2]
    # A writer continuing the file drops the fragment instead of gluing onto it.
    with M.MetricWriter(str(tmp_path)) as w:
        w.write(3, {"loss": 0.25})
    assert [r["step"] for r in M.read_metrics(str(tmp_path))] == [1, 2, 3]
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2"):
        M.read_metrics(str(tmp_path))


def test_truncate_after(tmp_path):
    with M.MetricWriter(str(tmp_path)) as w:
        for step in range(1, 6):
            w.write(step, {"loss": 1.0 / step})
    assert M.truncate_after(str(tmp_path), 3) == 2
    assert [r["step"] for r in M.read_metrics(str(tmp_path))] == [1, 2, 3]
    assert M.truncate_after(str(tmp_path), 3) == 0
    assert M.truncate_after(str(tmp_path / "missing"), 3) == 0
    # Resuming at step 2 drops steps after it and continues from there, without duplicates.
    with M.MetricWriter(str(tmp_path), resume_step=2) as w:
        w.write(3, {"loss": 9.0})
    recs = M.read_metrics(str(tmp_path))
    assert [(r["step"], r["train/loss"]) for r in recs] == [(1, 1.0), (2, 0.5), (3, 9.0)]
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]
    purge = [e.step for e in _events(str(tmp_path / "tb")) if e.HasField("session_log")]
    assert purge == [3]
    # The method form works on a writer that has already written (its file is reopened).
    w = M.MetricWriter(str(tmp_path))
    w.write(4, {"loss": 4.0})
    assert w.truncate_after(1) == 3
    w.write(2, {"loss": 2.0})
    w.close()
    assert [r["step"] for r in M.read_metrics(str(tmp_path))] == [1, 2]


class _FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar():
    stream = _FakeTTY()
    bar = M.Progress(100, 10, enabled=True, file=stream)
    assert bar.enabled
    bar.update(20, loss=1.23456, tokens_per_s=12345.0, kl=0.5)
    bar.close()
    out = stream.getvalue()
    assert "20/100" in out and "loss=1.2346" in out and "12.3k" in out and "kl=0.5" in out
    quiet = io.StringIO()  # not a TTY
    off = M.Progress(100, 0, enabled=True, file=quiet)
    off.update(5, loss=1.0, tokens_per_s=1.0)
    off.close()
    assert not off.enabled and quiet.getvalue() == ""
    assert not M.Progress(100, 0, enabled=False, file=_FakeTTY()).enabled


def test_plain_progress_lines_every_log_every_steps_with_eta():
    stream = io.StringIO()  # not a TTY: a pipe, nohup or a scheduler's log
    lines = M.Progress(10, 0, enabled=True, file=stream, log_every=3)
    for step in range(1, 11):
        lines.update(step, loss=0.5, tokens_per_s=2000.0, lr=1e-3)
    lines.write("eval step 10: loss 0.5")
    lines.close()
    out = stream.getvalue().splitlines()
    assert [line.split()[1] for line in out[:-1]] == ["3/10", "6/10", "9/10", "10/10"]
    assert out[0].startswith("step 3/10  loss 0.5000  lr 0.001  tok/s 2k  eta ")
    # The ETA counts from the first update (after compilation), so it exists from the 2nd on.
    assert all("eta -" not in line for line in out[:-1]) and out[-1] == "eval step 10: loss 0.5"
    off = io.StringIO()
    M.Progress(10, 0, enabled=False, file=off, log_every=1).update(1, loss=1.0, tokens_per_s=1.0)
    assert off.getvalue() == ""


def test_truncate_keeps_only_train_lines_at_a_final_step(tmp_path):
    with M.MetricWriter(str(tmp_path)) as w:
        w.write(4, {"loss": 1.0})
        w.write(4, {"loss": 2.0}, prefix="eval")
        w.write_text(4, "samples", "a -> b")
        w.write(5, {"loss": 3.0})
    assert M.truncate_after(str(tmp_path), 4, train_only_at_step=True) == 3
    assert M.read_metrics(str(tmp_path)) == [{"step": 4, "train/loss": 1.0}]
    assert M.truncate_after(str(tmp_path), -1) == 1
    assert M.read_metrics(str(tmp_path)) == []
