"""HF sequence-classification reward models against transformers' own (torch, CPU, fp32).

Dimension letters: B batch, T tokens.
"""
import json
import os
import shutil

import jax
import numpy as np
import pytest
import safetensors.numpy
import tokenizers
import torch
import transformers
from tokenizers import models, pre_tokenizers

from align import config as config_lib
from align import mesh as mesh_lib
from align.analysis import pretrained_reward
from align.errors import CheckpointError
from align.models import hf_checkpoint as hc
from align.models import specs
from align.objectives.reward_model import reward_scores

PAD, BOS, EOS = 0, 1, 2
SIZES = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
             num_attention_heads=4, max_position_embeddings=64, pad_token_id=PAD,
             bos_token_id=BOS, eos_token_id=EOS)
CASES = {
    "llama": (transformers.LlamaConfig, dict(num_key_value_heads=2)),
    "mistral": (transformers.MistralConfig, dict(num_key_value_heads=1, sliding_window=None)),
    "qwen2_tied": (transformers.Qwen2Config, dict(num_key_value_heads=2,
                                                  tie_word_embeddings=True)),
}
# Right-padded rows of different lengths; real tokens avoid the pad id.
LENGTHS = [9, 6, 4, 8]
MASK_BxT = np.arange(max(LENGTHS))[None, :] < np.array(LENGTHS)[:, None]
TOKENS_BxT = np.where(MASK_BxT, np.random.RandomState(0).randint(
    3, SIZES["vocab_size"], MASK_BxT.shape), PAD)


def rules():
    return mesh_lib.logical_rules(config_lib.default_config().mesh.rules)


def one_device():
    return mesh_lib.make_mesh({}, devices=jax.devices()[:1])


def randomize(model):
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            offset = 1.0 if name.endswith("norm.weight") else 0.0
            p.copy_(offset + 0.2 * torch.randn_like(p))
    return model


def seq_cls_model(config_cls, extra, num_labels=1):
    hf_cfg = config_cls(**SIZES, **extra, num_labels=num_labels)
    hf_cfg._attn_implementation = "eager"
    model = transformers.AutoModelForSequenceClassification.from_config(hf_cfg)
    return randomize(model.float().eval())


def torch_rewards(model, tokens_BxT, mask_BxT):
    with torch.no_grad():
        out = model(input_ids=torch.tensor(np.asarray(tokens_BxT, np.int64)),
                    attention_mask=torch.tensor(np.asarray(mask_BxT, np.int64)))
    return out.logits[:, 0].numpy()


def align_rewards(cfg, params, mesh=None):
    model_def = specs.describe(specs.scalar_model().make_fn(cfg))

    def forward(p):
        return reward_scores(specs.bind(model_def, p), TOKENS_BxT, MASK_BxT.astype(np.int32))

    if mesh is not None:
        forward = mesh_lib.traced_under(forward, mesh, rules())
    return np.asarray(jax.jit(forward)(params))


def saved(case, tmp_path_factory):
    """(case, directory, torch model) of a tiny random reward model saved by transformers."""
    model = seq_cls_model(*CASES[case])
    directory = str(tmp_path_factory.mktemp(case))
    model.save_pretrained(directory, safe_serialization=True)
    return case, directory, model


@pytest.fixture(scope="module", params=list(CASES))
def checkpoint(request, tmp_path_factory):
    return saved(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return saved("llama", tmp_path_factory)


def test_rewards_match_transformers(checkpoint):
    case, directory, model = checkpoint
    cfg, params, pad = hc.load_reward_model(directory, one_device(), rules())
    assert pad == PAD and cfg == hc.read_hf_config(directory)[1]
    abstract = specs.describe(specs.scalar_model().make_fn(cfg)).abstract_params
    assert jax.tree.structure(params) == jax.tree.structure(abstract)
    assert cfg.tie_embeddings == case.endswith("_tied")
    if not cfg.tie_embeddings:  # not in the file; a reward model never reads it
        assert not np.asarray(params["backbone"]["unembed"]).any()
    np.testing.assert_array_equal(np.asarray(params["head"]["kernel"]),
                                  model.score.weight.detach().numpy()[0])
    assert params["head"]["kernel"].dtype == np.float32 and float(params["head"]["bias"]) == 0
    ref_B = torch_rewards(model, TOKENS_BxT, MASK_BxT)
    np.testing.assert_allclose(align_rewards(cfg, params), ref_B, atol=1e-5, rtol=1e-5)
    if case == "llama":
        mesh = mesh_lib.make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
        _, params8, _ = hc.load_reward_model(directory, mesh, rules())
        kernel = params8["head"]["kernel"]
        assert kernel.sharding.shard_shape(kernel.shape) == (32 // 4,)
        np.testing.assert_allclose(align_rewards(cfg, params8, mesh), ref_B, atol=1e-5,
                                   rtol=1e-5)
        scan_cfg, stacked, _ = hc.load_reward_model(directory, one_device(), rules(),
                                                    overrides=dict(scan_layers=True))
        assert stacked["backbone"]["layers"]["attn"]["q"].shape[0] == cfg.n_layers
        np.testing.assert_allclose(align_rewards(scan_cfg, stacked), ref_B, atol=1e-5,
                                   rtol=1e-5)


def copy_checkpoint(directory, dest, drop=(), add=None):
    shutil.copytree(directory, dest)
    file = os.path.join(dest, "model.safetensors")
    tensors = {k: v for k, v in safetensors.numpy.load_file(file).items() if k not in drop}
    safetensors.numpy.save_file({**tensors, **(add or {})}, file, metadata={"format": "pt"})
    return str(dest)


def test_score_bias_is_read(llama, tmp_path):
    _, directory, _ = llama
    path = copy_checkpoint(directory, tmp_path / "biased",
                        add={"score.bias": np.array([0.75], np.float32)})
    _, params, _ = hc.load_reward_model(path, one_device(), rules())
    assert float(params["head"]["bias"]) == 0.75


def test_not_a_reward_checkpoint_is_a_clear_error(llama, tmp_path):
    _, directory, _ = llama
    path = copy_checkpoint(directory, tmp_path / "no_score", drop=("score.weight",))
    with pytest.raises(CheckpointError, match="no_score/model.safetensors has no tensor "
                                              "'score.weight': it is not a sequence-classif"):
        hc.load_reward_model(path, one_device(), rules())
    # A causal LM: refused by load_reward_model, and a reward model by load_pretrained.
    lm = transformers.AutoModelForCausalLM.from_config(transformers.LlamaConfig(**SIZES))
    lm.save_pretrained(str(tmp_path / "lm"), safe_serialization=True)
    with pytest.raises(CheckpointError, match="LlamaForCausalLM.*load_pretrained"):
        hc.load_reward_model(str(tmp_path / "lm"), one_device(), rules())
    hc.load_pretrained(str(tmp_path / "lm"), one_device(), rules())
    with pytest.raises(CheckpointError, match="sequence-classification checkpoint.*"
                                              "load_reward_model"):
        hc.load_pretrained(directory, one_device(), rules())
    # Two labels are a classifier, not a reward model.
    two = seq_cls_model(transformers.LlamaConfig, {}, num_labels=2)
    two.save_pretrained(str(tmp_path / "two"), safe_serialization=True)
    with pytest.raises(CheckpointError, match="one output \\(num_labels=1\\).*'score.weight' "
                                              "has shape \\[2, 32\\]"):
        hc.load_reward_model(str(tmp_path / "two"), one_device(), rules())


WORDS = [f"w{i}" for i in range(3, SIZES["vocab_size"])]


def write_tokenizer(directory, pad_token="<pad>"):
    """A whitespace word-level tokenizer.json whose ids are the model's whole vocabulary."""
    vocab = {"<pad>": PAD, "<s>": BOS, "</s>": EOS, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<pad>", "<s>", "</s>"])
    tok.save(os.path.join(directory, "tokenizer.json"))
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "pad_token": pad_token}, f)
    return vocab


def test_from_pretrained_matches_transformers_on_text(llama, tmp_path):
    _, directory, model = llama
    path = str(tmp_path / "rm")
    shutil.copytree(directory, path)
    vocab = write_tokenizer(path)
    rng = np.random.RandomState(1)
    text = lambda n: " ".join(rng.choice(WORDS, n))
    prompts = [text(n) for n in (5, 2, 9)]
    completions = [" " + text(n) for n in (3, 7, 1)]
    ids = [[BOS] + [vocab[w] for w in (p + c).split()] + [EOS]
           for p, c in zip(prompts, completions)]
    rm = pretrained_reward.from_pretrained(path, batch_size=2)
    assert rm.name == "rm" and rm.token_ids(prompts, completions) == ids
    # transformers on each unpadded row alone.
    ref = [torch_rewards(model, [row], [[1] * len(row)])[0] for row in ids]
    out = rm.rewards(prompts, completions)
    assert out.dtype == np.float64 and out.shape == (3,)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)

    # format_fn: its text's ids alone, no bos/eos added.
    joined = pretrained_reward.from_pretrained(path, format_fn=lambda p, c: f"{p} </s>{c}")
    ids = [[vocab[w] for w in p.split()] + [EOS] + [vocab[w] for w in c.split()]
           for p, c in zip(prompts, completions)]
    ref = [torch_rewards(model, [row], [[1] * len(row)])[0] for row in ids]
    np.testing.assert_allclose(joined.rewards(prompts, completions), ref, atol=1e-5, rtol=1e-5)

    with pytest.raises(ValueError, match="row 1: 11 tokens exceed max_len 10"):
        pretrained_reward.from_pretrained(path, max_len=10).rewards(prompts, completions)
    with pytest.raises(ValueError, match="max_len must be an int in \\[1, 64\\]"):
        pretrained_reward.from_pretrained(path, max_len=65)


def test_from_pretrained_pad_equal_to_eos_scores_like_transformers(llama, tmp_path):
    _, directory, model = llama
    path = str(tmp_path / "rm")
    shutil.copytree(directory, path)
    with open(os.path.join(path, "config.json")) as f:
        hf = json.load(f)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(dict(hf, pad_token_id=EOS), f)
    write_tokenizer(path, pad_token="</s>")
    rm = pretrained_reward.from_pretrained(path)
    assert rm.pad_token_id == EOS
    prompts, completions = ["w3 w4 w5", "w9"], [" w6 w7", " w10 w11 w12 w13"]
    ids = rm.token_ids(prompts, completions)
    assert all(row[-1] == EOS for row in ids)
    model.config.pad_token_id = EOS
    try:
        ref = [torch_rewards(model, [row], [[1] * len(row)])[0] for row in ids]
    finally:
        model.config.pad_token_id = PAD
    out = rm.rewards(prompts, completions)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
    # transformers skips the trailing eos (= pad): the reward is the token's before it.
    before = [torch_rewards(model, [row[:-1]], [[1] * (len(row) - 1)])[0] for row in ids]
    np.testing.assert_allclose(out, before, atol=1e-5, rtol=1e-5)


def test_the_seal_report_takes_a_pretrained_reward_model(llama, tmp_path, capsys):
    """SEAL's analyses on an HF reward model: its rewards are transformers', its imprint the
    regression of those rewards on the file's feature columns."""
    from align.analysis import seal, seal_report

    _, directory, model = llama
    path = str(tmp_path / "rm")
    shutil.copytree(directory, path)
    vocab = write_tokenizer(path)
    rng = np.random.RandomState(2)
    rows, texts = [], []
    for i in range(24):
        n_a, n_b = rng.randint(1, 8, size=2)
        a, b = " ".join(rng.choice(WORDS, n_a)), " ".join(rng.choice(WORDS, n_b))
        rows.append({"prompt": "w3", "chosen": " " + a, "rejected": " " + b,
                     "chosen_words": int(n_a), "rejected_words": int(n_b)})
        texts.append((a, b))
    pairs_file = tmp_path / "pairs.jsonl"
    pairs_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert seal_report.main(["--model", path, "--pairs", str(pairs_file),
                             "--features", "words"]) == 0
    assert "| words |" in capsys.readouterr().out

    ids = [[BOS, vocab["w3"]] + [vocab[w] for w in t.split()] + [EOS]
           for t in [a for a, _ in texts] + [b for _, b in texts]]
    ref = [torch_rewards(model, [row], [[1] * len(row)])[0] for row in ids]
    pairs = seal_report.pairs_from_file(str(pairs_file), ["words"])
    report = seal_report.analyse(pretrained_reward.from_pretrained(path), pairs)
    expected = seal.ols_clustered(np.asarray(ref, np.float64), pairs.features,
                                  np.concatenate([np.arange(24)] * 2), standardize=True)
    assert report.imprint.model["words"] == pytest.approx(expected["words"], rel=1e-4, abs=1e-6)
