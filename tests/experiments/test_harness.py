"""The experiments' shared harness: flags, output folders, win rates, cached runs, tables, plots."""

import importlib.util
import json
import os
import pathlib
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


RUN_PYS = sorted(p for p in pathlib.Path(harness.EXPERIMENTS).glob("*/run.py")
                 if p.parent.name != "throughput")  # a benchmark, with its own flags


def _load(path):
    spec = importlib.util.spec_from_file_location(f"{path.parent.name}_run_flags", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _inside(path, folder):
    folder = os.path.abspath(folder)
    return os.path.commonpath([os.path.abspath(path), folder]) == folder


def test_default_out_is_outside_the_repository_and_honours_align_runs(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.delenv(harness.RUNS_ENV, raising=False)
    monkeypatch.setenv("HOME", str(home))
    assert harness.output_dir("", "x") == str(home / "align-runs" / "experiments" / "x")
    monkeypatch.setenv(harness.RUNS_ENV, str(tmp_path / "runs"))
    assert harness.output_dir("", "x") == str(tmp_path / "runs" / "experiments" / "x")
    monkeypatch.setenv(harness.RUNS_ENV, "~/elsewhere")
    assert harness.output_dir("", "x") == str(home / "elsewhere" / "experiments" / "x")
    # An explicit --out wins, made absolute.
    monkeypatch.chdir(tmp_path)
    assert harness.output_dir("rel", "x") == str(tmp_path / "rel")
    assert harness.output_dir("~/o", "x") == str(home / "o")


def test_real_default_out_is_not_in_the_repository(monkeypatch):
    monkeypatch.delenv(harness.RUNS_ENV, raising=False)
    out = harness.output_dir("", "x")
    assert os.path.isabs(out) and not _inside(out, harness.ROOT), out


def test_publish_is_a_flag_and_only_for_a_full_run():
    p = harness.parser("doc")
    full = p.parse_args([])
    assert not full.publish and full.out == "" and harness.mode(p, full) == "full"
    assert harness.mode(p, p.parse_args(["--publish"])) == "full"
    assert harness.mode(p, p.parse_args(["--quick"])) == "quick"
    for argv in (["--quick", "--publish"], ["--tiny", "--publish"]):
        with pytest.raises(SystemExit):
            harness.mode(p, p.parse_args(argv))


def test_publish_copies_only_the_named_files(tmp_path):
    out, here = tmp_path / "out", tmp_path / "here"
    out.mkdir()
    here.mkdir()
    for name in ("results.md", "a.png", "results.json"):
        (out / name).write_text(name)
    harness.publish(str(out), str(here), ["results.md", "a.png"])
    assert sorted(p.name for p in here.iterdir()) == ["a.png", "results.md"]
    assert (here / "a.png").read_text() == "a.png"


@pytest.mark.parametrize("path", RUN_PYS, ids=lambda p: p.parent.name)
def test_every_experiment_takes_the_shared_flags(path, runs_home, capsys):
    run = _load(path)
    # --publish after a short run is refused before anything runs (the fixture checks that
    # nothing under experiments/ changed, and nothing reached the default out either).
    with pytest.raises(SystemExit) as e:
        run.main(["--quick", "--publish"])
    assert e.value.code == 2 and "--publish" in capsys.readouterr().err
    assert not runs_home.exists()
    with pytest.raises(SystemExit) as e:
        run.main(["--help"])
    assert e.value.code == 0
    usage = capsys.readouterr().out
    assert all(flag in usage for flag in ("--quick", "--seeds", "--out", "--publish"))


def test_cached_reruns_only_when_the_spec_changes(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"value": len(calls)}

    path = str(tmp_path / "runs" / "r.json")
    first = harness.cached(path, {"steps": 10}, compute)
    assert first["value"] == 1 and first["seconds"] >= 0
    assert harness.cached(path, {"steps": 10}, compute)["value"] == 1  # read back
    assert harness.cached(path, {"steps": 20}, compute)["value"] == 2  # a new spec reruns
    assert len(calls) == 2


def test_finish_writes_and_publishes_only_when_asked(tmp_path):
    out, here = tmp_path / "out", tmp_path / "here"
    out.mkdir(), here.mkdir()
    (out / "plot.png").write_bytes(b"png")
    assert harness.finish(str(out), {"a": 1}, "# table", results_md="pool_results.md") == 0
    assert json.loads((out / "results.json").read_text()) == {"a": 1}
    assert not any(here.iterdir())
    harness.finish(str(out), {"a": 1}, "# table", publish_to=str(here),
                   results_md="pool_results.md", plots=["plot.png"])
    assert (here / "pool_results.md").read_text() == "# table\n"
    assert (here / "plot.png").read_bytes() == b"png"
