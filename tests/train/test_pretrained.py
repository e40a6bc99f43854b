"""A preference run on public-format data from a Hugging Face checkpoint, end to end, offline.

The test writes HH-RLHF files, trains a byte-level BPE tokenizer.json, saves a tiny random
LlamaForCausalLM with `transformers`, and runs configs/public.py: SFT from the imported
checkpoint, then DPO from the SFT run (8 simulated devices).
"""

import gzip
import json
import os

import numpy as np
import pytest

from align import main as main_lib
from align.train import metrics as metrics_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
H, A = "\n\nHuman: ", "\n\nAssistant: "
WORDS = "the a kettle lamp mug is good bad fine very not it works please review".split()


def _hh_files(root):
    for split, n in (("train", 32), ("test", 16)):
        path = root / "helpful-base" / f"{split}.jsonl.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = [{"chosen": f"{H}review {WORDS[i % 15]} please{A}it is {WORDS[(i + 3) % 15]} .",
                 "rejected": f"{H}review {WORDS[i % 15]} please{A}{WORDS[(i + 5) % 15]} no ."}
                for i in range(n)]
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write("\n".join(json.dumps(r) for r in rows) + "\n")


def _checkpoint(directory, texts):
    torch = pytest.importorskip("torch")
    import tokenizers
    import transformers
    from tokenizers import decoders, models, pre_tokenizers, trainers
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    directory.mkdir(parents=True)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>"}))
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=64, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    transformers.LlamaForCausalLM(config).save_pretrained(str(directory), safe_serialization=True)


def test_sft_then_dpo_from_an_imported_llama_checkpoint(tmp_path, monkeypatch):
    _hh_files(tmp_path / "hh")
    texts = [f"review {w} please it is {v} . no" for w in WORDS for v in WORDS]
    _checkpoint(tmp_path / "ckpt", texts)
    workdir = tmp_path / "run"
    args = ["--config", "configs/public.py:dataset=hh_rlhf,checkpoint="
            f"{tmp_path / 'ckpt'},manual_dir={tmp_path / 'hh'},steps=3,sft_steps=3,batch=8,"
            "max_len=40,max_prompt_len=20,dtype=float32,subsets=helpful-base",
            "--workdir", str(workdir),
            "--config.train.progress=False", "--config.train.log_every=1",
            "--config.eval.num_samples=8", "--config.eval.max_new_tokens=8",
            "--config.eval.num_batches=1", "--config.logprobs.chunk_size=16",
            "--config.init.overrides=train.progress=False;train.log_every=1;eval.num_samples=8;"
            "eval.max_new_tokens=8;eval.num_batches=1;logprobs.chunk_size=16"]
    monkeypatch.chdir(ROOT)  # config paths are relative to the repository
    assert main_lib.main(args) == 0
    sft = [r for r in metrics_lib.read_metrics(str(workdir / "sft")) if "train/loss" in r]
    dpo = [r for r in metrics_lib.read_metrics(str(workdir)) if "train/loss" in r]
    assert len(sft) == 3 and len(dpo) == 3
    # The DPO policy starts as its reference (the SFT policy): the first loss is log 2.
    np.testing.assert_allclose(dpo[0]["train/loss"], np.log(2), rtol=1e-5)
    config = json.loads((workdir / "sft" / "config.json").read_text())
    assert config["init"]["pretrained"] == str(tmp_path / "ckpt")
    assert config["model"]["d_model"] == 32 and config["model"]["tie_embeddings"] is False
    assert (workdir / "report.md").exists()


def test_a_missing_checkpoint_is_a_clear_error(tmp_path, capsys, monkeypatch):
    args = ["--config", f"configs/public.py:checkpoint={tmp_path / 'nope'}",
            "--workdir", str(tmp_path / "run")]
    monkeypatch.chdir(ROOT)
    assert main_lib.main(args) == 2
    assert f"no config.json at {tmp_path / 'nope'}" in capsys.readouterr().err


def test_a_run_and_a_checkpoint_cannot_both_be_the_start(tmp_path):
    from align import config as config_lib
    from align.train import loop
    cfg = config_lib.resolve(os.path.join(ROOT, "configs/sft.py:size=tiny,steps=1"), [
        "--config.init.workdir=elsewhere", f"--config.init.pretrained={tmp_path}"])
    with pytest.raises(ValueError, match="not both"):
        loop.build(cfg, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # nothing written
