"""Failures caused by what the user gave (records, files, data settings) raise align.errors
input errors, so the command line reports them as one line; internal checks stay ValueError."""
import gzip
import types

import pytest

from align import errors
from align import main as main_lib
from align.data import chat, hh_rlhf, pipeline, sources, tldr, ultrafeedback
from align.data.hf_tokenizer import load_tokenizer
from align.data.rows import BadRowError, RowLog
from align.data.tokenizer import Tokenizer, get_or_train_tokenizer


class CharTokenizer:
    pad_id, eos_id, bos_id = 0, 1, 2

    def encode(self, text):
        return [ord(c) for c in text]


TOK = CharTokenizer()


def _rows(n):
    return [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(n)]


def _batches(rows, kind="sft", **settings):
    settings = {"batch_size": len(rows), "max_len": 8, "max_prompt_len": 4, "seed": 0,
                "process_index": 0, "process_count": 1, **settings}
    return pipeline.batches(kind, rows, TOK, **settings)


def test_a_malformed_row_through_the_iterator_is_a_data_error():
    rows = _rows(4)
    rows[2] = {"prompt": "ab", "completion": 3}
    with pytest.raises(errors.DataError, match="record 2: field 'completion' must be text"):
        next(_batches(rows))


@pytest.mark.parametrize("row, message", [
    ({"prompt": "a"}, "missing field 'completion'"),
    ({"prompt": b"\xff", "completion": "b"}, "not valid UTF-8"),
    ({"prompt": "a", "completion": "  "}, "'completion' is empty"),
    ({"prompt": "a", "completion": "b", "gold_reward": "high"}, "must be a number"),
])
def test_bad_record_fields_are_data_errors(row, message):
    with pytest.raises(errors.DataError, match=message):
        pipeline.sft_example(0, row, TOK, max_len=8, max_prompt_len=4)


def test_records_with_different_fields_or_bad_list_sizes_are_data_errors():
    rows = _rows(2)
    rows[1]["gold_reward"] = 1.0
    with pytest.raises(errors.DataError, match="have different fields"):
        next(_batches(rows, shuffle=False))
    with pytest.raises(errors.DataError, match="'labels' has 1 items"):
        pipeline.list_example(0, {"prompt": "a", "completions": ["b", "c"], "labels": [1.0]}, TOK,
                              max_len=8, max_prompt_len=4, list_size=2)


def test_bad_lengths_and_batch_settings_are_config_errors():
    with pytest.raises(errors.ConfigError, match="must exceed max_prompt_len") as e:
        _batches(_rows(4), max_len=4)
    assert e.value.key == "data.max_len"
    with pytest.raises(errors.ConfigError, match="batch_size 8"):
        _batches(_rows(4), batch_size=8, num_epochs=1)
    with pytest.raises(errors.ConfigError, match="list_size must be >= 1") as e:
        _batches([{"prompt": "a", "completions": ["b"], "labels": [1.0]}], kind="lists",
                 list_size=0)
    assert e.value.key == "data.list_size"


def test_bad_tokenizer_files_are_data_errors(tmp_path):
    (tmp_path / "tokenizer.json").write_text('{"model": {"type": "BPE"')
    with pytest.raises(errors.DataError, match="tokenizer.json is corrupt"):
        load_tokenizer(str(tmp_path))
    (tmp_path / "bad.model").write_bytes(b"not a sentencepiece model")
    with pytest.raises(errors.DataError, match="bad.model"):
        Tokenizer.load(str(tmp_path / "bad.model"))
    with pytest.raises(errors.DataError, match="no non-empty lines"):
        Tokenizer.train(["", "  "], str(tmp_path / "empty"), vocab_size=40)


def test_bad_tokenizer_settings_are_config_errors(tmp_path):
    with pytest.raises(errors.ConfigError, match="must end in '.model'") as e:
        get_or_train_tokenizer(str(tmp_path / "tok.spm"), lambda: ["a b"], vocab_size=40)
    assert e.value.key == "data.tokenizer_path"
    lines = [f"the {w} pizza was {v} ." for w in ("great", "cold", "fine") for v in ("ok", "bad")]
    path = str(tmp_path / "tok.model")
    get_or_train_tokenizer(path, lambda: lines, vocab_size=26)
    with pytest.raises(errors.ConfigError, match="vocab_size 26 but 25") as e:
        get_or_train_tokenizer(path, lambda: lines, vocab_size=25)
    assert e.value.key == "data.vocab_size"


@pytest.mark.parametrize("files, subsets", [
    (hh_rlhf.files, ("helpful-base", "nope")),
    (ultrafeedback.files, ("nope",)),
    (tldr.files, ("nope",)),
])
def test_bad_subsets_are_config_errors_naming_data_subsets(files, subsets):
    with pytest.raises(errors.ConfigError, match="subsets") as e:
        files("pairs", subsets)
    assert e.value.key == "data.subsets"


def test_bad_rows_and_row_settings():
    log = RowLog("error")
    with pytest.raises(BadRowError, match="x.jsonl:3: bad row") as e:
        log.bad("x.jsonl:3", "not_json", "not JSON")
    assert isinstance(e.value, errors.DataError)
    with pytest.raises(errors.ConfigError, match="bad_rows must be one of"):
        RowLog("ignore")
    with pytest.raises(errors.ConfigError, match="unknown chat template 'llama'"):
        chat.get_template("llama")


def test_missing_tfds_settings_are_config_errors(tmp_path):
    data = types.SimpleNamespace(source="tfds", tfds_name="", tokenizer_path="", data_dir="")
    cfg = types.SimpleNamespace(data=data)
    with pytest.raises(errors.ConfigError, match="needs data.tfds_name") as e:
        sources.prepare(cfg, str(tmp_path))
    assert e.value.key == "data.tfds_name"
    data.tfds_name = "mine"
    with pytest.raises(errors.ConfigError, match="needs data.tokenizer_path"):
        sources.prepare(cfg, str(tmp_path))


def test_internal_checks_stay_plain_value_errors():
    for call in (lambda: pipeline.left_pad([1, 2, 3], length=2, pad_id=0),
                 lambda: pipeline.register_kind("sft", pipeline.sft_example)):
        with pytest.raises(ValueError) as e:
            call()
        assert not isinstance(e.value, errors.InputError)


def test_the_command_line_shows_a_bad_row_as_one_line(tmp_path, capsys, monkeypatch):
    def run(cfg, workdir, **kwargs):
        rows = _rows(2)
        rows[1] = {"prompt": "p", "completion": None}
        next(_batches(rows, shuffle=False))

    monkeypatch.delenv("ALIGN_TRACEBACK", raising=False)
    monkeypatch.setattr(main_lib, "run", run)
    config = main_lib.__file__.replace("align/main.py", "configs/sft.py")
    assert main_lib.main(["--config", config, "--workdir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert err == "error (DataError): record 1: field 'completion' must be text, got NoneType\n"


def test_the_command_line_shows_a_damaged_data_file_as_one_line(tmp_path, capsys, monkeypatch):
    path = tmp_path / "train.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"prompt": "p", "completion": "c"}\n' * 50)[:-20])

    def run(cfg, workdir, **kwargs):
        list(RowLog("skip").lines(str(path), str(path)))

    monkeypatch.delenv("ALIGN_TRACEBACK", raising=False)
    monkeypatch.setattr(main_lib, "run", run)
    config = main_lib.__file__.replace("align/main.py", "configs/sft.py")
    assert main_lib.main(["--config", config, "--workdir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error (DataError): {path}: damaged file: truncated gzip stream (")
    assert err.count("\n") == 1 and "data.bad_rows=skip does not apply" in err
