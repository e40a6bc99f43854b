"""A newcomer's first runs: relative paths, the `align` command, finished runs, plain progress
lines, metrics without repeated steps, readable files, sequence lengths refused by name."""

import json
import os
import stat
from collections import Counter

import pytest

from align import config as config_lib
from align import main as main_lib
from align.train import metrics as metrics_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config.data.num_train=256", "--config.data.num_test=64",
        "--config.data.num_prompts=64", "--config.data.batch_size=16",
        "--config.data.eval_batch_size=16", "--config.eval.num_samples=8",
        "--config.eval.max_new_tokens=8", "--config.eval.num_batches=1",
        "--config.train.log_every=2", "--config.train.eval_every=4",
        "--config.train.checkpoint_every=4"]
SPEC = "configs/sft.py:size=tiny,steps=6"


def _repeated(workdir):
    """(step, key) pairs that metrics.jsonl holds more than once."""
    seen = Counter((r["step"], k) for r in metrics_lib.read_metrics(workdir)
                   for k in r if k != "step")
    return [key for key, n in seen.items() if n > 1]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A tiny SFT run made from a temporary current directory with a relative workdir."""
    cwd = tmp_path_factory.mktemp("cwd")
    old = os.getcwd()
    os.chdir(cwd)
    old_mask = os.umask(0o022)
    try:
        code = main_lib.cli(["train", "--config", os.path.join(ROOT, SPEC),
                             "--workdir", "runs/sft", *TINY])
    finally:
        os.umask(old_mask)
        os.chdir(old)
    assert code == 0
    return cwd


def test_a_relative_workdir_is_taken_from_the_current_directory(finished):
    workdir = finished / "runs" / "sft"
    assert sorted(p for p in os.listdir(workdir / "checkpoints") if p.isdigit()) == ["4", "6"]
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["train"]["steps"] == 6
    assert (workdir / "report.md").exists()


def test_written_files_get_the_umask_permissions(finished):
    # mkstemp alone would leave them 0600, unreadable by teammates on a shared cluster.
    for name in ("config.json", "config.txt", "model.json", "data_report.json", "report.md"):
        mode = stat.S_IMODE(os.stat(finished / "runs" / "sft" / name).st_mode)
        assert mode == 0o644, (name, oct(mode))


def test_a_finished_run_does_nothing_and_says_where_its_report_is(finished, capsys,
                                                                  monkeypatch):
    monkeypatch.chdir(finished)
    workdir = finished / "runs" / "sft"
    before = (workdir / "metrics.jsonl").read_text()
    code = main_lib.main(["--config", os.path.join(ROOT, SPEC), "--workdir", "runs/sft", *TINY])
    out = capsys.readouterr().out
    assert code == 0
    assert "finished (6 steps); nothing to do" in out and str(workdir / "report.md") in out
    assert (workdir / "metrics.jsonl").read_text() == before
    assert not _repeated(str(workdir))


def test_plain_progress_lines_without_a_terminal(tmp_path, capsys):
    # Under pytest stderr is no TTY: the run prints lines instead of a bar.
    code = main_lib.main(["--config", os.path.join(ROOT, SPEC), "--workdir",
                          str(tmp_path / "w"), *TINY])
    assert code == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["2/6", "4/6", "6/6"]
    for word in ("loss", "lr", "tok/s", "eta"):
        assert all(f" {word} " in f" {line} " for line in lines), (word, lines)
    assert "eval step 0:" in err and "eval step 4:" in err and "sample:" in err
    rows = [r for r in metrics_lib.read_metrics(str(tmp_path / "w")) if "train/loss" in r]
    # The first window holds the compiling step: its throughput is left out, not averaged in.
    assert [r["step"] for r in rows] == [2, 4, 6]
    assert all(r["train/tokens_per_s"] > 0 for r in rows)


def test_the_first_step_is_left_out_of_tokens_per_second(tmp_path):
    code = main_lib.main(["--config", os.path.join(ROOT, SPEC), "--workdir",
                          str(tmp_path / "w"), *TINY, "--config.train.log_every=1",
                          "--config.train.progress=False"])
    assert code == 0
    rows = [r for r in metrics_lib.read_metrics(str(tmp_path / "w")) if "train/loss" in r]
    assert "train/tokens_per_s" not in rows[0] and all("train/tokens_per_s" in r
                                                       for r in rows[1:])


def test_no_step_is_logged_twice_after_a_kill_before_the_first_checkpoint(tmp_path):
    workdir = tmp_path / "w"
    os.makedirs(workdir)
    # What a run killed at step 3 (before its first checkpoint) left behind.
    with open(workdir / "metrics.jsonl", "w") as f:
        for step in range(4):
            f.write(json.dumps({"step": step, "train/loss": 9.0}) + "\n")
        f.write(json.dumps({"step": 0, "eval/loss": 9.0}) + "\n")
    code = main_lib.main(["--config", os.path.join(ROOT, SPEC), "--workdir", str(workdir),
                          *TINY, "--config.train.progress=False"])
    assert code == 0
    assert not _repeated(str(workdir))
    assert all(r.get("train/loss") != 9.0 for r in metrics_lib.read_metrics(str(workdir)))


def test_a_run_finished_without_its_report_writes_the_final_evaluation_once(tmp_path):
    workdir = tmp_path / "w"
    args = ["--config", os.path.join(ROOT, SPEC), "--workdir", str(workdir), *TINY,
            "--config.train.progress=False"]
    assert main_lib.main(args) == 0
    os.remove(workdir / "report.md")  # killed after the last checkpoint, before the report
    assert main_lib.main(args) == 0
    assert (workdir / "report.md").exists()
    assert not _repeated(str(workdir))
    evals = [r["step"] for r in metrics_lib.read_metrics(str(workdir)) if "eval/loss" in r]
    assert evals == [0, 4, 6]


def test_relative_init_workdir_is_taken_from_the_current_directory(tmp_path, capsys,
                                                                    monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main_lib.main(["--config", os.path.join(ROOT, "configs/preference.py"),
                          "--workdir", "runs/dpo", "--config.init.workdir=runs/nowhere",
                          "--config.init.config="])
    err = capsys.readouterr().err
    # Before, a relative init.workdir was looked up inside the new workdir (runs/dpo/...).
    assert code == 2 and f"init.workdir {tmp_path / 'runs' / 'nowhere'} has no run" in err


@pytest.mark.parametrize("overrides, named", [
    (["--config.model.max_len=48"], "data.max_len=64 exceeds model.max_len=48"),
    (["--config.data.max_prompt_len=64"], "data.max_prompt_len=64 leaves no room"),
    (["--config.model.max_len=64", "--config.eval.max_new_tokens=60"],
     "data.max_prompt_len + eval.max_new_tokens = 16 + 60 exceeds model.max_len=64"),
])
def test_inconsistent_lengths_are_refused_by_name_before_anything_is_written(
        tmp_path, capsys, overrides, named):
    code = main_lib.main(["--config", os.path.join(ROOT, SPEC), "--workdir",
                          str(tmp_path / "w"), *overrides])
    assert code == 2 and named in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "w")


def test_online_rollouts_must_fit_the_data_and_model_lengths(tmp_path, capsys):
    code = main_lib.main(["--config", os.path.join(ROOT, "configs/online.py:objective=ppo"),
                          "--workdir", str(tmp_path / "w"), "--config.online.max_new_tokens=60"])
    err = capsys.readouterr().err
    assert code == 2 and "16 + 60 exceeds data.max_len=64: rollouts would not fit" in err
    assert not os.path.exists(tmp_path / "w")


def test_every_shipped_config_has_consistent_lengths():
    from align import objectives
    from align.train import setup as setup_lib
    from configs import online, preference
    specs = ["configs/sft.py", "configs/quickstart.py", "configs/quickstart.py:stage=sft",
             "configs/reward_model.py", "configs/reward_model.py:objective=preference_model"]
    specs += [f"configs/preference.py:objective={n}" for n in preference.names()]
    specs += [f"configs/online.py:objective={n}" for n in online.NAMES]
    specs += [f"configs/quickstart.py:objective={n}" for n in online.NAMES + ("ipo",)]
    for spec in specs:
        cfg = config_lib.resolve(os.path.join(ROOT, spec))
        setup_lib.check_lengths(cfg, objectives.make(cfg.objective))


def test_paths_are_made_absolute_from_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = config_lib.resolve(os.path.join(ROOT, "configs/preference.py"), [
        "--config.data.manual_dir=raw", "--config.data.tokenizer_path=~/tok.model",
        "--config.online.scorer_workdir=../rm"])
    out = config_lib.absolute_paths(cfg, "runs/dpo")
    assert out.init.workdir == str(tmp_path / "runs" / "dpo" / "sft")  # "{workdir}/sft"
    assert out.data.manual_dir == str(tmp_path / "raw")
    assert out.data.tokenizer_path == os.path.expanduser("~/tok.model")
    assert out.online.scorer_workdir == str(tmp_path.parent / "rm")
    assert out.data.data_dir == ""  # unset stays unset (the workdir's own)
    assert config_lib.absolute_paths(out, "elsewhere") == out  # already absolute: unchanged
    with pytest.raises(config_lib.ConfigError, match="'data.data_dir'.*may only start a path"):
        config_lib.absolute_paths(config_lib.resolve(
            os.path.join(ROOT, SPEC), ["--config.data.data_dir=x/{workdir}"]), "w")


def test_the_align_command_lists_its_commands(capsys):
    assert main_lib.cli([]) == 2
    assert "train" in capsys.readouterr().err
    assert main_lib.cli(["--help"]) == 0
    assert "best-of-n" in capsys.readouterr().out
    assert main_lib.cli(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main_lib.cli(["best-of-n", "--help"])
    assert e.value.code == 0 and "align best-of-n" in capsys.readouterr().out


def test_the_python_api_loads_a_finished_run_and_generates(finished, monkeypatch):
    from align import api
    monkeypatch.chdir(finished)
    # Training a finished run through the API does nothing and returns its report.
    report = api.train(os.path.join(ROOT, SPEC), "runs/sft", TINY)
    assert report == (finished / "runs" / "sft" / "report.md").read_text()
    run = api.load("runs/sft")
    assert run.step == 6 and run.cfg.objective.name == "sft" and run.kind == "lm"
    prompts = ["review the kettle :", "review the lamp , mainly the switch :", "review the fan :"]
    texts = run.generate(prompts, max_new_tokens=8, seed=1)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    assert run.generate(prompts, max_new_tokens=8, seed=1) == texts  # same seed, same texts
    assert run.generate(prompts, max_new_tokens=8, seed=2) != texts
    with pytest.raises(config_lib.ConfigError, match="max_new_tokens"):
        run.generate(prompts, max_new_tokens=1000)
    with pytest.raises(TypeError, match="list of prompts"):
        run.generate("review the kettle :")
    with pytest.raises(FileNotFoundError, match="no run"):
        api.load("runs/none")
