"""Tests of the SentencePiece tokenizer wrapper."""
import os
import random

import pytest

from align.data import tokenizer as tokenizer_lib
from align.data.tokenizer import Tokenizer, get_or_train_tokenizer

WORDS = ("the food was great terrible service slow fast pizza pasta friendly rude staff "
         "cheap expensive loved hated kettle lid handle spout quite very not").split()
# Made-up words give the corpus enough distinct pieces for a vocabulary of ~100.
WORDS += [a + b for a in ("ka", "mo", "ri", "zu", "te", "lo") for b in ("ban", "dor", "fis", "gul", "pem")]


def _lines(n=300, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) + " ."
            for _ in range(n)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    prefix = str(tmp_path_factory.mktemp("tok") / "spm")
    return Tokenizer.train(_lines(), prefix, vocab_size=60), prefix


def test_train_writes_model_with_fixed_special_ids(trained):
    tok, prefix = trained
    assert os.path.isfile(prefix + ".model")
    assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.unk_id) == (0, 1, 2, 3)
    assert tok.vocab_size == 60
    # Only the finished model remains: no temp files beside it.
    assert os.listdir(os.path.dirname(prefix)) == ["spm.model"]


def test_load_round_trip(trained):
    tok, prefix = trained
    loaded = Tokenizer.load(prefix + ".model")
    assert loaded.vocab_size == tok.vocab_size
    for line in _lines(20, seed=1):
        ids = loaded.encode(line)
        assert ids == tok.encode(line)
        assert all(i >= 4 for i in ids)  # no special ids inside encoded text
        assert loaded.decode(ids) == line


def test_decode_does_not_stop_at_eos(trained):
    tok, _ = trained
    a, b = tok.encode("great pizza ."), tok.encode("rude staff .")
    text = tok.decode([tok.bos_id] + a + [tok.eos_id] + b)
    assert "great pizza" in text and "rude staff" in text


def test_training_is_deterministic(tmp_path):
    Tokenizer.train(_lines(), str(tmp_path / "a"), vocab_size=50)
    Tokenizer.train(_lines(), str(tmp_path / "b"), vocab_size=50)
    assert (tmp_path / "a.model").read_bytes() == (tmp_path / "b.model").read_bytes()


def test_killed_write_leaves_no_model(tmp_path, monkeypatch):
    def boom(src, dst):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(tokenizer_lib.os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        Tokenizer.train(_lines(), str(tmp_path / "spm"), vocab_size=50)
    assert os.listdir(tmp_path) == []


def test_missing_and_corrupt_files_name_the_path(tmp_path, trained):
    missing = str(tmp_path / "nope.model")
    with pytest.raises(FileNotFoundError, match="nope.model"):
        Tokenizer.load(missing)
    corrupt = tmp_path / "corrupt.model"
    corrupt.write_bytes(b"\x00\x01 this is not a sentencepiece model \xff" * 10)
    with pytest.raises(ValueError, match="corrupt.model"):
        Tokenizer.load(str(corrupt))
    truncated = tmp_path / "truncated.model"
    truncated.write_bytes(open(trained[1] + ".model", "rb").read()[:100])
    with pytest.raises(ValueError, match="truncated.model"):
        Tokenizer.load(str(truncated))


def test_too_large_vocab_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="vocab_size=5000"):
        Tokenizer.train(_lines(50), str(tmp_path / "big"), vocab_size=5000)


def test_get_or_train_reuses_existing_model(tmp_path):
    calls = []

    def lines_fn():
        calls.append(1)
        return _lines()

    path = str(tmp_path / "sub" / "spm.model")
    first = get_or_train_tokenizer(path, lines_fn, vocab_size=50, model_type="unigram")
    second = get_or_train_tokenizer(path, lines_fn, vocab_size=50, model_type="unigram")
    assert len(calls) == 1
    assert first.encode("great pizza .") == second.encode("great pizza .")
    with pytest.raises(ValueError, match="vocab_size 50"):
        get_or_train_tokenizer(path, lines_fn, vocab_size=70, model_type="unigram")
    with pytest.raises(ValueError, match=".model"):
        get_or_train_tokenizer(str(tmp_path / "spm"), lines_fn, vocab_size=50, model_type="unigram")


def test_bpe_model_type(tmp_path):
    tok = Tokenizer.train(_lines(), str(tmp_path / "bpe"), vocab_size=60, model_type="bpe")
    assert tok.decode(tok.encode("cheap pasta .")) == "cheap pasta ."
    with pytest.raises(ValueError, match="model_type"):
        Tokenizer.train(_lines(), str(tmp_path / "x"), vocab_size=60, model_type="wordpiece")
