"""HF checkpoint import/export against transformers' own models (torch, CPU, fp32).

Dimension letters: B batch, T tokens, V vocab.
"""
import dataclasses
import json
import os
import struct

import jax
import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch
import transformers
from flax import nnx

from align import config as config_lib
from align import mesh as mesh_lib
from align.models import hf_checkpoint as hc
from align.models import transformer as tr
from align.train import state as state_lib
from third_party import hf_layouts

SIZES = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
             num_attention_heads=4, max_position_embeddings=64)
LLAMA3_ROPE = dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                   high_freq_factor=4.0, original_max_position_embeddings=16)
CASES = {
    "llama3_gqa": (transformers.LlamaConfig,
                   dict(num_key_value_heads=2, rope_parameters=LLAMA3_ROPE)),
    "llama2_tied": (transformers.LlamaConfig, dict(tie_word_embeddings=True)),
    "mistral": (transformers.MistralConfig, dict(num_key_value_heads=1, sliding_window=None)),
    "qwen2_tied": (transformers.Qwen2Config, dict(num_key_value_heads=2, tie_word_embeddings=True)),
    "gemma": (transformers.GemmaConfig, dict(num_key_value_heads=2, head_dim=12)),
}
FAMILY = {"llama3_gqa": "llama", "llama2_tied": "llama", "mistral": "mistral",
          "qwen2_tied": "qwen2", "gemma": "gemma"}
# Row 0 is unpadded, the others left-padded by different amounts.
MASK_BxT = np.array([[1] * 9, [0] * 3 + [1] * 6, [0] * 5 + [1] * 4, [0] * 1 + [1] * 8], bool)
TOKENS_BxT = np.random.RandomState(0).randint(0, SIZES["vocab_size"], MASK_BxT.shape)


def rules():
    return mesh_lib.logical_rules(config_lib.default_config().mesh.rules)


def one_device():
    return mesh_lib.make_mesh({}, devices=jax.devices()[:1])


def torch_logits(model):
    positions = np.maximum(np.cumsum(MASK_BxT, axis=1) - 1, 0)
    with torch.no_grad():
        out = model(input_ids=torch.tensor(TOKENS_BxT), position_ids=torch.tensor(positions),
                    attention_mask=torch.tensor(MASK_BxT.astype(np.int64)))
    return out.logits.numpy()


def align_logits(cfg, params, mesh=None):
    model_def = state_lib.describe(lambda rngs: tr.Transformer(cfg, rngs=rngs))

    def forward(p):
        model = state_lib.bind(model_def, p)
        hidden_BxTxD, _ = model(TOKENS_BxT, input_mask_BxT=MASK_BxT)
        return model.logits(hidden_BxTxD)

    if mesh is not None:
        forward = mesh_lib.traced_under(forward, mesh, rules())
    return np.asarray(jax.jit(forward)(params))


def assert_valid_close(a_BxTxV, b_BxTxV):
    np.testing.assert_allclose(a_BxTxV[MASK_BxT], b_BxTxV[MASK_BxT], atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module", params=list(CASES))
def checkpoint(request, tmp_path_factory):
    """(case, directory, torch logits) of a tiny random model saved by transformers."""
    config_cls, extra = CASES[request.param]
    hf_cfg = config_cls(**SIZES, **extra)
    hf_cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(hf_cfg).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            # Norm weights away from their init, so that 1 + w (Gemma) versus w is exercised.
            offset = 1.0 if name.endswith("norm.weight") and request.param != "gemma" else 0.0
            p.copy_(offset + 0.2 * torch.randn_like(p))
    directory = str(tmp_path_factory.mktemp(request.param))
    model.save_pretrained(directory, safe_serialization=True)
    return request.param, directory, torch_logits(model)


def test_logits_match_transformers_on_one_and_eight_devices(checkpoint):
    case, directory, ref_BxTxV = checkpoint
    family, cfg = hc.read_hf_config(directory)
    assert family == FAMILY[case]
    cfg1, params1 = hc.load_pretrained(directory, one_device(), rules())
    assert cfg1 == cfg
    out_BxTxV = align_logits(cfg, params1)
    assert_valid_close(out_BxTxV, ref_BxTxV)
    mesh = mesh_lib.make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
    _, params8 = hc.load_pretrained(directory, mesh, rules())
    q = params8["layers"][0]["attn"]["q"]
    assert q.sharding.shard_shape(q.shape) == (32 // 4, 4 // 2, cfg.head_size)
    assert_valid_close(align_logits(cfg, params8, mesh), out_BxTxV)


def test_export_round_trips_and_transformers_loads_it(checkpoint, tmp_path):
    case, directory, ref_BxTxV = checkpoint
    family, cfg = hc.read_hf_config(directory)
    _, params = hc.load_pretrained(directory, one_device(), rules())
    out = str(tmp_path / "export")
    hc.export_hf(params, cfg, family, out, extra_config=dict(bos_token_id=1, eos_token_id=2))
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
    assert hc.read_hf_config(out) == (family, cfg)
    _, again = hc.load_pretrained(out, one_device(), rules())
    jax.tree.map(np.testing.assert_array_equal, again, params)
    model = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager")
    assert model.config.eos_token_id == 2
    assert_valid_close(torch_logits(model.float().eval()), ref_BxTxV)


def test_scan_layers_and_bfloat16_import(checkpoint, tmp_path):
    case, directory, _ = checkpoint
    family, _ = hc.read_hf_config(directory)
    mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 4})
    cfg, flat = hc.load_pretrained(directory, one_device(), rules())
    scan_cfg, stacked = hc.load_pretrained(directory, mesh, rules(), dtype="bfloat16",
                                           overrides=dict(scan_layers=True))
    assert scan_cfg == dataclasses.replace(cfg, scan_layers=True)
    layers = [flat["layers"][i] for i in range(cfg.n_layers)]
    expected = dict(flat, layers=jax.tree.map(lambda *xs: np.stack(xs), *layers))
    for a, b in zip(jax.tree.leaves(stacked), jax.tree.leaves(expected)):
        assert a.dtype == jax.numpy.bfloat16
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b).astype(a.dtype))
    # Stacked bf16 params export to the same file as unstacked ones.
    hc.export_hf(stacked, scan_cfg, family, str(tmp_path / "a"), dtype="bfloat16")
    unstacked = jax.tree.map(lambda x: np.asarray(x).astype(jax.numpy.bfloat16), flat)
    hc.export_hf(unstacked, cfg, family, str(tmp_path / "b"), dtype="bfloat16")
    a = safetensors.torch.load_file(str(tmp_path / "a" / "model.safetensors"))
    b = safetensors.torch.load_file(str(tmp_path / "b" / "model.safetensors"))
    assert a.keys() == b.keys()
    for name, value in b.items():
        assert value.dtype == torch.bfloat16 and torch.equal(a[name], value), name


def save_tensors(directory, tensors, filename="model.safetensors"):
    safetensors.numpy.save_file(tensors, os.path.join(directory, filename),
                                metadata={"format": "pt"})


@pytest.fixture
def llama_dir(tmp_path):
    """A small Llama checkpoint written directly as files (no torch model)."""
    cfg = tr.TransformerConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                               d_ff=48, max_len=64, tie_embeddings=False)
    hf_cfg = hf_layouts.config_to_hf("llama", cfg, "float32")
    (tmp_path / "config.json").write_text(json.dumps(hf_cfg))
    rng = np.random.RandomState(0)
    tensors = {t.name: rng.normal(size=t.shape).astype(np.float32)
               for t in hf_layouts.tensor_layout(cfg).values()}
    return tmp_path, cfg, tensors


def test_sharded_checkpoint_loads(llama_dir):
    directory, cfg, tensors = llama_dir
    save_tensors(directory, tensors)
    _, single = hc.load_pretrained(str(directory), one_device(), rules())
    os.remove(directory / "model.safetensors")
    names = sorted(tensors)
    files = {"model-00001-of-00002.safetensors": names[:10],
             "model-00002-of-00002.safetensors": names[10:]}
    for file, part in files.items():
        save_tensors(directory, {n: tensors[n] for n in part}, file)
    index = {"metadata": {}, "weight_map": {n: f for f, part in files.items() for n in part}}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    mesh = mesh_lib.make_mesh({"fsdp": 4, "tensor": 2})
    _, sharded = hc.load_pretrained(str(directory), mesh, rules())
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 sharded, single)
    # HF stores q as [N*H, D]; align as [D, N, H].
    q = tensors["model.layers.1.self_attn.q_proj.weight"]
    np.testing.assert_array_equal(np.asarray(single["layers"][1]["attn"]["q"]),
                                  q.T.reshape(32, 4, 8))


def test_missing_unexpected_and_wrong_shape_tensors_are_named(llama_dir):
    directory, _, tensors = llama_dir
    path = str(directory)
    name = "model.layers.1.mlp.up_proj.weight"
    save_tensors(directory, {k: v for k, v in tensors.items() if k != name})
    with pytest.raises(ValueError, match=f"model.safetensors is missing.*{name}"):
        hc.load_pretrained(path, one_device(), rules())
    save_tensors(directory, dict(tensors, **{name: tensors[name][:, :-1]}))
    with pytest.raises(ValueError, match=f"{name}' in .*model.safetensors has shape \\[48, 31\\], "
                                         "expected \\[48, 32\\]"):
        hc.load_pretrained(path, one_device(), rules())
    save_tensors(directory, dict(tensors, extra=np.zeros(3, np.float32)))
    with pytest.raises(ValueError, match="unexpected tensor 'extra' in .*model.safetensors"):
        hc.load_pretrained(path, one_device(), rules())
    # Rotary buffers of older checkpoints carry nothing and are skipped.
    save_tensors(directory, dict(tensors, **{"model.layers.0.self_attn.rotary_emb.inv_freq":
                                             np.ones(4, np.float32)}))
    hc.load_pretrained(path, one_device(), rules())


def test_corrupt_header_is_a_clear_error(llama_dir):
    directory, _, tensors = llama_dir
    save_tensors(directory, tensors)
    file = directory / "model.safetensors"
    data = file.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    for bad, why in [(struct.pack("<Q", 10 ** 12) + data[8:], "header length"),
                     (data[:8] + b"{not json" + data[17:], "not valid JSON"),
                     (data[:8 + n] + data[8 + n:-4], "inconsistent"),
                     (data[:5], "shorter")]:
        file.write_bytes(bad)
        with pytest.raises(ValueError, match=f"corrupt safetensors file .*safetensors.*{why}"):
            hc.load_pretrained(str(directory), one_device(), rules())
    os.remove(file)
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        hc.load_pretrained(str(directory), one_device(), rules())


def write_config(tmp_path, **fields):
    hf = dict(model_type="llama", **SIZES, num_key_value_heads=2)
    hf.update(fields)
    (tmp_path / "config.json").write_text(json.dumps(hf))
    return str(tmp_path)


def test_config_mapping_and_unsupported_features(tmp_path):
    # Pre-v5 files: rope_theta beside rope_scaling with the old "type" key.
    _, cfg = hc.read_hf_config(write_config(tmp_path, rope_theta=5e5, rope_scaling=dict(
        type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=8192)))
    assert (cfg.rope_theta, cfg.rope_scaling, cfg.rope_original_max_len) == (5e5, "llama3", 8192)
    _, cfg = hc.read_hf_config(write_config(tmp_path, model_type="mistral", sliding_window=16))
    assert cfg.max_len == 16  # sliding window not modelled: lengths stay within it
    _, cfg = hc.read_hf_config(write_config(tmp_path, model_type="qwen2"))
    assert cfg.qkv_bias and cfg.max_len == 64 and not cfg.tie_embeddings
    _, cfg = hc.read_hf_config(write_config(tmp_path, model_type="gemma", hidden_act="gelu",
                                            hidden_activation=None))
    assert (cfg.mlp_activation, cfg.norm_plus_one, cfg.embed_scale, cfg.head_dim) == (
        "gelu_tanh", True, True, 256)
    assert cfg.tie_embeddings
    for fields, match in [
            (dict(model_type="gpt2"), "model_type 'gpt2' is not supported"),
            (dict(rope_scaling=dict(rope_type="yarn", factor=4.0)),
             "rope_scaling.rope_type='yarn'"),
            (dict(rope_parameters=dict(rope_type="linear", rope_theta=1e4, factor=2.0)),
             "rope_parameters.rope_type='linear'"),
            (dict(attention_bias=True), "attention_bias=True is not supported"),
            (dict(hidden_act="gelu"), "hidden_act='gelu' is not supported"),
            (dict(num_hidden_layers=None), "missing field.*num_hidden_layers"),
            (dict(num_key_value_heads=3), "config.json: .*divisible by n_kv_heads \\(3\\)")]:
        with pytest.raises(ValueError, match=match):
            hc.read_hf_config(write_config(tmp_path, **fields))
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        hc.read_hf_config(str(tmp_path))


def test_export_and_load_argument_errors(llama_dir, tmp_path):
    directory, cfg, tensors = llama_dir
    save_tensors(directory, tensors)
    with pytest.raises(ValueError, match="cannot override \\['n_layers'\\]"):
        hc.load_pretrained(str(directory), one_device(), rules(), overrides=dict(n_layers=1))
    _, params = hc.load_pretrained(str(directory), one_device(), rules())
    with pytest.raises(ValueError, match="gemma checkpoint needs TransformerConfig.norm_plus_one"):
        hc.export_hf(params, cfg, "gemma", str(tmp_path / "out"))
    del params["layers"][1]["mlp"]["up"]
    with pytest.raises(ValueError, match="missing.*'up'"):
        hc.export_hf(params, cfg, "llama", str(tmp_path / "out"))


def test_new_architecture_options():
    cfg = tr.TransformerConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                               d_ff=48, max_len=64, qkv_bias=True, norm_plus_one=True,
                               head_dim=12)
    model = nnx.eval_shape(lambda: tr.Transformer(cfg, rngs=nnx.Rngs(0)))
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    assert sum(int(np.prod(v.shape)) for _, v in flat) == tr.num_params(cfg)
    assert tr.flops_per_token(cfg, 8) == tr.flops_per_token(
        dataclasses.replace(cfg, qkv_bias=False), 8)
    # (1 + scale) norms start at zero, so a fresh model starts with identity norms.
    with nnx.use_eager_sharding(False):
        assert float(np.abs(tr.RMSNorm(8, 1e-6, plus_one=True).scale[...]).max()) == 0.0
    for field, value in [("mlp_activation", "relu"), ("rope_scaling", "yarn"),
                         ("qkv_bias", 1), ("rope_scaling_factor", 0.0)]:
        with pytest.raises(ValueError, match=field):
            dataclasses.replace(cfg, **{field: value})
    with pytest.raises(ValueError, match="rope_high_freq_factor"):
        dataclasses.replace(cfg, rope_scaling="llama3", rope_high_freq_factor=0.5)
