"""Hugging Face layouts of LLaMA-family checkpoints: tensor names and config.json fields.

Covers the `model_type`s llama, mistral, qwen2 and gemma (v1). All four share the tensor
names below; they differ in config fields and in which architecture options they imply.
Dimension letters: V vocab, D model width, N query heads, K kv heads, H head width, F MLP width.

Rotary layout: HF checkpoints of these families rotate the two halves of each head
(`rotate_half`), which is what align's `apply_rope` does, so q/k weights need no
permutation (Meta's original interleaved-pair checkpoints would; they are not read here).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

FAMILIES = ("llama", "mistral", "qwen2", "gemma")
ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                 "qwen2": "Qwen2ForCausalLM", "gemma": "GemmaForCausalLM"}

# Defaults of the HF config classes for the fields read here, used when config.json omits one.
_HF_DEFAULTS = {
    "llama": dict(rms_norm_eps=1e-6, tie_word_embeddings=False, hidden_act="silu",
                  max_position_embeddings=2048),
    "mistral": dict(rms_norm_eps=1e-6, tie_word_embeddings=False, hidden_act="silu",
                    max_position_embeddings=4096 * 32, sliding_window=4096),
    "qwen2": dict(rms_norm_eps=1e-6, tie_word_embeddings=False, hidden_act="silu",
                  max_position_embeddings=32768, use_sliding_window=False, sliding_window=4096,
                  max_window_layers=28),
    "gemma": dict(rms_norm_eps=1e-6, tie_word_embeddings=True, hidden_act="gelu_pytorch_tanh",
                  max_position_embeddings=8192, head_dim=256),
}
_DEFAULT_ROPE_THETA = 10000.0
_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
             "num_attention_heads")
# HF activation names -> align's mlp_activation. "gelu_new" is the same tanh formula.
_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh",
                "gelu_new": "gelu_tanh"}
_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor")


def _family_features(family: str) -> dict[str, Any]:
    """The TransformerConfig options a family always uses."""
    gemma = family == "gemma"
    return dict(qkv_bias=family == "qwen2", norm_plus_one=gemma, embed_scale=gemma,
                mlp_activation="gelu_tanh" if gemma else "silu")


def config_from_hf(hf: Mapping[str, Any], where: str) -> tuple[str, dict[str, Any]]:
    """(family, TransformerConfig keyword arguments) from a parsed config.json at `where`."""
    family = hf.get("model_type")
    if family not in FAMILIES:
        raise ValueError(f"{where}: model_type {family!r} is not supported; supported: "
                         f"{list(FAMILIES)}")
    hf = {**_HF_DEFAULTS[family], **hf}
    missing = [k for k in _REQUIRED if hf.get(k) is None]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}")

    def reject(field, supported):
        raise ValueError(f"{where}: {field}={hf.get(field)!r} is not supported "
                         f"(align models only {supported})")

    if "quantization_config" in hf:
        reject("quantization_config", "unquantized weights")
    for field in ("attention_bias", "mlp_bias", "use_bidirectional_attention"):
        if hf.get(field):
            reject(field, f"{field}=false")
    if hf.get("partial_rotary_factor", 1.0) != 1.0:
        reject("partial_rotary_factor", "rotary embeddings over the whole head")
    # Older Gemma files name the activation "hidden_activation" and leave hidden_act at "gelu".
    act_field = "hidden_activation" if hf.get("hidden_activation") else "hidden_act"
    act = hf[act_field]
    if family == "gemma" and act == "gelu":
        act = "gelu_pytorch_tanh"  # released Gemma configs say "gelu" but mean the tanh form
    if _ACTIVATIONS.get(act) != _family_features(family)["mlp_activation"]:
        reject(act_field, f"{_family_features(family)['mlp_activation']} for {family}")

    n_heads = int(hf["num_attention_heads"])
    kw = dict(
        vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], d_ff=hf["intermediate_size"],
        n_layers=hf["num_hidden_layers"], n_heads=n_heads,
        n_kv_heads=hf.get("num_key_value_heads") or n_heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // n_heads,
        norm_eps=float(hf["rms_norm_eps"]), tie_embeddings=bool(hf["tie_word_embeddings"]),
        max_len=_max_len(family, hf), **_family_features(family), **_rope(hf, where))
    return family, kw


def _max_len(family: str, hf: Mapping[str, Any]) -> int:
    """max_position_embeddings, capped at the sliding window where one applies."""
    # Sliding-window attention is not modelled: up to the window it equals full causal
    # attention, so capping the length keeps every accepted input exact.
    max_len = int(hf["max_position_embeddings"])
    window = hf.get("sliding_window")
    if family == "mistral" and window:
        return min(max_len, int(window))
    if family == "qwen2" and window:
        sliding = "sliding_attention" in (hf.get("layer_types") or ()) or (
            hf.get("use_sliding_window") and hf["max_window_layers"] < hf["num_hidden_layers"])
        if sliding:
            return min(max_len, int(window))
    return max_len


def _rope(hf: Mapping[str, Any], where: str) -> dict[str, Any]:
    # transformers >= 5 writes "rope_parameters"; older files hold rope_theta + rope_scaling.
    field = "rope_parameters" if hf.get("rope_parameters") else "rope_scaling"
    params = dict(hf.get(field) or {})
    if params and not any(k in params for k in ("rope_type", "type", "rope_theta")):
        raise ValueError(f"{where}: {field} with one entry per layer type is not supported")
    rope_type = params.get("rope_type", params.get("type", "default"))
    theta = float(params.get("rope_theta", hf.get("rope_theta", _DEFAULT_ROPE_THETA)))
    if rope_type == "default":
        return dict(rope_theta=theta)
    if rope_type != "llama3":
        raise ValueError(f"{where}: {field}.rope_type={rope_type!r} is not supported "
                         "(supported: 'default', 'llama3')")
    missing = [k for k in _LLAMA3_KEYS if k not in params]
    if missing:
        raise ValueError(f"{where}: {field} of rope_type 'llama3' lacks {missing}")
    original = params.get("original_max_position_embeddings", hf["max_position_embeddings"])
    return dict(rope_theta=theta, rope_scaling="llama3",
                rope_scaling_factor=float(params["factor"]),
                rope_low_freq_factor=float(params["low_freq_factor"]),
                rope_high_freq_factor=float(params["high_freq_factor"]),
                rope_original_max_len=int(original))


def config_to_hf(family: str, cfg, dtype: str) -> dict[str, Any]:
    """config.json fields for a TransformerConfig; errors if the family cannot express it."""
    if family not in FAMILIES:
        raise ValueError(f"family {family!r} is not supported; supported: {list(FAMILIES)}")
    for name, value in _family_features(family).items():
        if getattr(cfg, name) != value:
            raise ValueError(f"a {family} checkpoint needs TransformerConfig.{name}={value!r}, "
                             f"got {getattr(cfg, name)!r}")
    hf = dict(
        architectures=[ARCHITECTURES[family]], model_type=family, vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model, intermediate_size=cfg.d_ff, num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.head_size, max_position_embeddings=cfg.max_len, rms_norm_eps=cfg.norm_eps,
        tie_word_embeddings=cfg.tie_embeddings,
        hidden_act="gelu_pytorch_tanh" if family == "gemma" else "silu",
        rope_theta=cfg.rope_theta, rope_scaling=None, torch_dtype=dtype)
    if cfg.rope_scaling == "llama3":
        hf["rope_scaling"] = dict(
            rope_type="llama3", factor=cfg.rope_scaling_factor,
            low_freq_factor=cfg.rope_low_freq_factor, high_freq_factor=cfg.rope_high_freq_factor,
            original_max_position_embeddings=cfg.rope_original_max_len)
    if family in ("llama", "gemma"):
        hf.update(attention_bias=False)
    if family == "llama":
        hf.update(mlp_bias=False)
    if family == "mistral":
        hf.update(sliding_window=None)  # full attention: what align computes at every length
    if family == "qwen2":
        hf.update(use_sliding_window=False)
    return hf


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One HF tensor and how it becomes an align array: reshape to `view`, transpose by `perm`."""

    name: str
    shape: tuple[int, ...]  # as stored by HF
    view: tuple[int, ...]
    perm: tuple[int, ...]

    @property
    def align_shape(self) -> tuple[int, ...]:
        return tuple(self.view[p] for p in self.perm)


# Tensors HF checkpoints may hold that carry no weights of their own.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
LM_HEAD = "lm_head.weight"
# `...ForSequenceClassification` checkpoints: the same `model.*` trunk, no lm_head, and a
# linear `score` layer [num_labels, D] on the last hidden states (transformers writes no bias).
SEQUENCE_CLASSIFICATION = "ForSequenceClassification"
SCORE = "score.weight"
SCORE_BIAS = "score.bias"


def tensor_layout(cfg) -> dict[tuple, Tensor]:
    """align param path (layers unstacked: ("layers", i, ...)) -> the HF tensor it comes from."""
    v, d, f = cfg.vocab_size, cfg.d_model, cfg.d_ff
    n, k, h = cfg.n_heads, cfg.n_kv_heads, cfg.head_size
    out = {("embed",): Tensor("model.embed_tokens.weight", (v, d), (v, d), (0, 1)),
           ("final_norm", "scale"): Tensor("model.norm.weight", (d,), (d,), (0,))}
    if not cfg.tie_embeddings:
        out[("unembed",)] = Tensor(LM_HEAD, (v, d), (v, d), (1, 0))  # HF [V, D]; align D x V
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        # HF Linear weights are [out, in]; the fused head axis splits as (heads, head width).
        layer = {
            ("attn_norm", "scale"): Tensor(p + "input_layernorm.weight", (d,), (d,), (0,)),
            ("mlp_norm", "scale"): Tensor(p + "post_attention_layernorm.weight", (d,), (d,), (0,)),
            ("attn", "q"): Tensor(p + "self_attn.q_proj.weight", (n * h, d), (n, h, d), (2, 0, 1)),
            ("attn", "k"): Tensor(p + "self_attn.k_proj.weight", (k * h, d), (k, h, d), (2, 0, 1)),
            ("attn", "v"): Tensor(p + "self_attn.v_proj.weight", (k * h, d), (k, h, d), (2, 0, 1)),
            ("attn", "o"): Tensor(p + "self_attn.o_proj.weight", (d, n * h), (d, n, h), (1, 2, 0)),
            ("mlp", "gate"): Tensor(p + "mlp.gate_proj.weight", (f, d), (f, d), (1, 0)),
            ("mlp", "up"): Tensor(p + "mlp.up_proj.weight", (f, d), (f, d), (1, 0)),
            ("mlp", "down"): Tensor(p + "mlp.down_proj.weight", (d, f), (d, f), (1, 0)),
        }
        if cfg.qkv_bias:
            for name, heads in (("q", n), ("k", k), ("v", k)):
                layer[("attn", f"{name}_bias")] = Tensor(
                    p + f"self_attn.{name}_proj.bias", (heads * h,), (heads, h), (0, 1))
        out.update({("layers", i, *path): t for path, t in layer.items()})
    return out


def score_layout(cfg, *, bias: bool) -> dict[tuple, Tensor]:
    """ScalarModel head path -> HF tensor of a one-label score layer: kernel [D] from [1, D]."""
    d = cfg.d_model
    out = {("head", "kernel"): Tensor(SCORE, (1, d), (d,), (0,))}
    if bias:
        out[("head", "bias")] = Tensor(SCORE_BIAS, (1,), (), ())
    return out
