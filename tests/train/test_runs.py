"""A finished run read back: where a chained run's data and tokenizer are."""

import os

from align import config as config_lib
from align import objectives  # noqa: F401  (registers the objectives' settings)
from align.models import transformer
from align.train import runs


def _fake_run(workdir, **overrides):
    cfg = config_lib.apply_overrides({}, [f"{k}={v}" for k, v in overrides.items()])
    config_lib.write_config(cfg, str(workdir))
    model = dict(cfg.model)
    model["vocab_size"] = 128
    runs.write_model_config(str(workdir), transformer.transformer_config(model))


def test_a_chained_run_reads_the_data_and_tokenizer_of_the_run_it_started_from(tmp_path):
    sft, dpo, ppo = tmp_path / "sft", tmp_path / "dpo", tmp_path / "ppo"
    _fake_run(sft)
    _fake_run(dpo, **{"objective.name": "dpo", "init.workdir": str(sft)})
    _fake_run(ppo, **{"objective.name": "dpo", "init.workdir": str(dpo)})
    for workdir in (sft, dpo, ppo):
        run = runs.read_run(str(workdir))
        # The trainer built every dataset and the tokenizer into the first run's data dir.
        assert run.data_dir == str(sft / "data")
        assert run.tokenizer_path == str(sft / "data" / "tokenizer.model")
    assert runs.read_run(str(ppo)).parent.workdir == str(dpo)


def test_own_settings_win_and_old_relative_init_workdirs_are_read(tmp_path):
    parent, child = tmp_path / "run" / "sft", tmp_path / "run"
    _fake_run(parent, **{"data.tokenizer_path": "/tok/x.model"})
    # Written before paths were made absolute: "sft" meant inside the run's own workdir.
    _fake_run(child, **{"objective.name": "dpo", "init.workdir": "sft"})
    run = runs.read_run(str(child))
    assert run.data_dir == str(parent / "data") and run.tokenizer_path == "/tok/x.model"
    _fake_run(child, **{"objective.name": "dpo", "init.workdir": "sft",
                        "data.data_dir": str(tmp_path / "d")})
    assert runs.read_run(str(child)).data_dir == str(tmp_path / "d")
    assert not os.path.exists(child / "data")
