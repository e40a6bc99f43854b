"""The experiments' shared harness: head-to-head win rates, cached runs, tables and plots."""

import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "experiments"))
import harness  # noqa: E402


def test_head_to_head_averages_per_prompt_then_over_prompts():
    prompts = ["p", "q"]
    a = [["long answer", "x"], ["yy", "zzz"]]
    b = [["short", "xx"], ["y", "z"]]
    longer = lambda prompt, u, v: 1.0 if len(u) > len(v) else 0.0 if len(u) < len(v) else 0.5
    mean, se = harness.head_to_head(prompts, a, b, longer)
    # p: (1 + 0) / 2 = 0.5; q: (1 + 1) / 2 = 1.0.
    assert mean == pytest.approx(0.75)
    assert se == pytest.approx(np.std([0.5, 1.0], ddof=1) / np.sqrt(2))
    swapped, _ = harness.head_to_head(prompts, b, a, longer)
    assert swapped == pytest.approx(1 - mean)
    with pytest.raises(ValueError, match="shapes"):
        harness.head_to_head(prompts, a, [["a"], ["b"]], longer)


def test_train_reads_a_finished_run_back(tmp_path):
    cached = {"step": 3, "eval": {"win_rate": 0.6}, "seconds": 1.0}
    (tmp_path / harness.RESULT).write_text(json.dumps(cached))
    # A config that does not exist proves nothing is trained.
    assert harness.train("configs/missing.py", str(tmp_path)) == cached


def test_tables_and_plots(tmp_path):
    table = harness.markdown_table(["a", "b"], [[1, "x"], [2, "y"]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1 | x |", "| 2 | y |"]
    assert harness.seeds_summary([1.0, 2.0, 3.0]).startswith("2.000 ± ")
    harness.write_outputs(str(tmp_path), {"x": np.float64(1.5)}, table)
    assert json.loads((tmp_path / "results.json").read_text()) == {"x": 1.5}
    assert (tmp_path / "results.md").read_text() == table + "\n"
    path = tmp_path / "p.png"
    harness.plot(str(path), lambda ax: ax.plot([0, 1], [0, 1], label="line"), title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
