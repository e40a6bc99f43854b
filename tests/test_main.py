"""The command line: bad input ends the run with a message naming the problem, before compute."""

import os

import pytest

from align import main as main_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "sft.py")


def _run(tmp_path, capsys, *args):
    code = main_lib.main(["--config", CONFIG, "--workdir", str(tmp_path / "w"), *args])
    return code, capsys.readouterr().err


def test_misspelt_override_names_the_key(tmp_path, capsys):
    code, err = _run(tmp_path, capsys, "--config.optim.learning_rte=3e-4")
    assert code == 2 and "optim.learning_rte" in err and "did you mean 'optim.lr'" in err
    assert not os.path.exists(tmp_path / "w")  # nothing written before the config is valid


def test_wrong_type_names_the_key_and_types(tmp_path, capsys):
    code, err = _run(tmp_path, capsys, "--config.train.steps=abc")
    assert code == 2 and "'train.steps' expects int, got str 'abc'" in err


def test_missing_tokenizer_file_is_named(tmp_path, capsys):
    code, err = _run(tmp_path, capsys, "--config.data.source=tfds", "--config.data.tfds_name=x",
                     f"--config.data.tokenizer_path={tmp_path}/none.model")
    assert code == 2 and "tokenizer model not found" in err and "none.model" in err


def test_stray_argument_is_rejected(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main_lib.main(["--config", CONFIG, "--workdir", str(tmp_path), "--lr=3"])
    assert e.value.code == 2
    assert "--config.optim.lr=3e-4" in capsys.readouterr().err


def test_a_workdir_of_another_objective_is_refused(tmp_path, capsys):
    from align import config as config_lib
    other = config_lib.resolve(os.path.join(ROOT, "configs", "preference.py"), [])
    config_lib.write_config(other, str(tmp_path / "w"))
    code, err = _run(tmp_path, capsys)
    assert code == 2 and "holds a 'dpo' run" in err


def test_an_override_may_give_its_value_as_the_next_argument(tmp_path, capsys):
    args, overrides = main_lib.parse_args(["--config", CONFIG, "--workdir", "w",
                                           "--config.optim.lr", "3e-4",
                                           "--config.train.steps=5", "--config.seed", "-1"])
    assert overrides == ["--config.optim.lr=3e-4", "--config.train.steps=5", "--config.seed=-1"]
    with pytest.raises(SystemExit):
        main_lib.parse_args(["--config", CONFIG, "--workdir", "w", "--config.optim.lr"])
    assert "--config.optim.lr has no value" in capsys.readouterr().err
    code, err = _run(tmp_path, capsys, "--config.train.steps", "abc")
    assert code == 2 and "'train.steps' expects int, got str 'abc'" in err


def test_help_lists_the_objectives_and_every_config_key(capsys):
    with pytest.raises(SystemExit) as e:
        main_lib.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in ("dpo", "lipo_lambda", "nash_md", "ppo", "grpo"):
        assert name in out
    for key in ("optim.lr = ", "train.steps = ", "data.bad_rows = 'error'", "mesh.fsdp = ",
                "distributed.heartbeat_timeout_s = 100"):
        assert key in out, key
    assert "--continue-with-changes" in out
