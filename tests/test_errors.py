"""Input errors end a run with one line naming the problem; any other exception is a bug and
keeps its traceback."""

import ast
import os

import pytest

from align import errors
from align import main as main_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "sft.py")


def _main(tmp_path, *args):
    return main_lib.main(["--config", CONFIG, "--workdir", str(tmp_path / "w"), *args])


def _raising(error):
    def run(cfg, workdir, **kwargs):
        raise error
    return run


def test_a_bad_config_key_is_one_line_and_a_nonzero_exit(tmp_path, capsys):
    code = _main(tmp_path, "--config.optim.learning_rte=3e-4")
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [err.strip()] and "optim.learning_rte" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("error", [
    errors.DataError("row 3 of x.jsonl has no 'prompt'"),
    errors.CheckpointError("no readable checkpoint in w"),
    errors.InputError("w holds a 'dpo' run"),
    FileNotFoundError("no config.json at x"),
    PermissionError("cannot write w"),
    IsADirectoryError("w is a directory"),
    NotADirectoryError("w is a file"),
])
def test_input_errors_raised_in_the_run_are_one_line(tmp_path, capsys, monkeypatch, error):
    monkeypatch.delenv("ALIGN_TRACEBACK", raising=False)
    monkeypatch.setattr(main_lib, "run", _raising(error))
    assert _main(tmp_path) == 2
    err = capsys.readouterr().err
    assert err == f"error ({type(error).__name__}): {error}\n"


def test_a_config_error_raised_in_the_run_is_a_config_error_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(main_lib, "run", _raising(errors.ConfigError("data.max_len=64 too long")))
    assert _main(tmp_path) == 2
    assert capsys.readouterr().err == "config error: data.max_len=64 too long\n"


def test_align_traceback_shows_where_an_input_error_was_raised(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGN_TRACEBACK", "1")
    monkeypatch.setattr(main_lib, "run", _raising(errors.DataError("bad row")))
    with pytest.raises(errors.DataError, match="bad row"):
        _main(tmp_path)


def test_a_value_error_that_is_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    def shape_bug(cfg, workdir, **kwargs):
        raise ValueError("shape bug: [8, 16] vs [8, 15]")

    monkeypatch.delenv("ALIGN_TRACEBACK", raising=False)
    monkeypatch.setattr(main_lib, "run", shape_bug)
    with pytest.raises(ValueError, match="shape bug") as e:
        _main(tmp_path)
    assert not isinstance(e.value, errors.InputError)
    assert e.traceback[-1].name == "shape_bug"  # the frame that raised it, not main's


def test_the_input_errors_keep_their_old_bases():
    from align import config, settings
    from align.train import checkpoint
    assert config.ConfigError is settings.ConfigError is errors.ConfigError
    assert checkpoint.CheckpointError is errors.CheckpointError
    for cls in (errors.ConfigError, errors.DataError, errors.CheckpointError):
        assert issubclass(cls, errors.InputError) and issubclass(cls, ValueError)
    assert errors.ConfigError("x", key="a.b").key == "a.b"


def test_the_errors_module_imports_nothing_from_align():
    with open(errors.__file__) as f:
        tree = ast.parse(f.read())
    imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    imported += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [m for m in imported if m == "align" or m.startswith("align.")]
