"""Tests of the Hugging Face tokenizer.json wrapper and load_tokenizer."""
import json
import random

import pytest
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from align.data.hf_tokenizer import HFTokenizer, load_tokenizer
from align.data.tokenizer import Tokenizer

WORDS = ("the food was great terrible service slow fast pizza pasta friendly rude staff "
         "cheap expensive loved hated kettle lid handle spout quite very not").split()
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]


def lines(n=200, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) + " ."
            for _ in range(n)]


@pytest.fixture(scope="module")
def bpe_file(tmp_path_factory):
    """A byte-level BPE tokenizer.json trained here (bytes make decode exact)."""
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(lines(), trainer)
    path = tmp_path_factory.mktemp("bpe") / "tokenizer.json"
    tok.save(str(path))
    return path


def test_round_trip_and_pad_falls_back_to_eos(bpe_file):
    (bpe_file.parent / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": {"content": "</s>", "special": True},
         "pad_token": None}))
    tok = load_tokenizer(str(bpe_file.parent))
    assert isinstance(tok, HFTokenizer) and tok.path == str(bpe_file)
    assert (tok.unk_id, tok.bos_id, tok.eos_id) == (-1, 1, 2)  # byte-level BPE has no unk
    assert tok.pad_id == tok.eos_id
    assert 200 < tok.vocab_size <= 300
    for line in lines(20, seed=1) + ["Ünïcode ✓ and  two spaces"]:
        ids = tok.encode(line)
        assert ids and all(i >= len(SPECIALS) for i in ids)  # no bos/eos added
        assert tok.decode(ids) == line
    ids = tok.encode("great pizza .")
    assert tok.decode([tok.bos_id] + ids + [tok.eos_id]) == "great pizza ."


def test_special_ids_from_each_source_and_overrides(bpe_file, tmp_path):
    directory = tmp_path / "ckpt"
    directory.mkdir()
    (directory / "tokenizer.json").write_bytes(bpe_file.read_bytes())
    # config.json alone: eos ids may be a list, the first is used.
    (directory / "config.json").write_text(json.dumps({"eos_token_id": [2, 3], "pad_token_id": 3}))
    tok = HFTokenizer.load(str(directory))
    assert (tok.eos_id, tok.pad_id, tok.bos_id, tok.unk_id) == (2, 3, -1, -1)
    # special_tokens_map.json outranks config.json; tokenizer_config.json outranks both.
    (directory / "special_tokens_map.json").write_text(json.dumps(
        {"eos_token": "<pad>", "unk_token": "<unk>"}))
    tok = HFTokenizer.load(str(directory))
    assert (tok.eos_id, tok.unk_id) == (3, 0)
    (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    assert HFTokenizer.load(str(directory)).eos_id == 2
    assert HFTokenizer.load(str(directory), eos="<s>", pad=0).pad_id == 0
    (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|end|>"}))
    with pytest.raises(ValueError, match=r"tokenizer_config.json: eos_token.*'<\|end\|>' is not"):
        HFTokenizer.load(str(directory))


def test_word_level_unk_from_model_and_missing_eos(tmp_path):
    tok = tokenizers.Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(lines(), trainers.WordLevelTrainer(special_tokens=["[UNK]", "[EOS]"]))
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    with pytest.raises(ValueError, match="no eos token for .*tokenizer.json"):
        HFTokenizer.load(str(path))
    loaded = HFTokenizer.load(str(path), eos="[EOS]")
    assert (loaded.unk_id, loaded.eos_id, loaded.pad_id) == (0, 1, 1)
    assert loaded.encode("pizza zebra") == [tok.token_to_id("pizza"), 0]
    assert loaded.decode(loaded.encode("the food was great")) == "the food was great"


def test_sentencepiece_model_and_directory_load(tmp_path):
    sp = Tokenizer.train(lines(), str(tmp_path / "spm" / "tokenizer"), vocab_size=40)
    for path in (tmp_path / "spm" / "tokenizer.model", tmp_path / "spm"):
        tok = load_tokenizer(str(path))
        assert isinstance(tok, Tokenizer) and tok.vocab_size == 40
        assert tok.encode("great pizza .") == sp.encode("great pizza .")
        assert tok.decode(tok.encode("great pizza .")) == "great pizza ."


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer.json or tokenizer.model"):
        load_tokenizer(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_tokenizer(str(tmp_path / "nope.json"))
    (tmp_path / "tokenizer.json").write_text('{"model": {"type": "BPE"')
    with pytest.raises(ValueError, match="tokenizer.json is corrupt"):
        load_tokenizer(str(tmp_path))
    with pytest.raises(ValueError, match="unknown tokenizer file"):
        load_tokenizer(str(tmp_path / "vocab.txt"))
