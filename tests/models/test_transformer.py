"""Tests for align.models.transformer: masks, positions, GQA, scan, remat, bf16, KV cache.

Dimension letters: B batch, T tokens, D model width, V vocab.
"""
import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from align.models import transformer as tr

CFG = tr.TransformerConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                           d_ff=64, max_len=32, init_std=0.1)
LOGICAL_NAMES = {"vocab", "embed", "mlp", "heads", "kv_heads", "head_dim", "norm", "layers"}


def make(seed=0, **overrides):
    return tr.Transformer(dataclasses.replace(CFG, **overrides), rngs=nnx.Rngs(seed))


@jax.jit
def forward(model, tokens_BxT, mask_BxT):
    hidden_BxTxD, _ = model(tokens_BxT, input_mask_BxT=mask_BxT)
    return model.logits(hidden_BxTxD)


def params_of(model):
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def set_params(model, pure):
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(model, state)


def stack_layers(pure, n_layers):
    layers = [pure["layers"][i] for i in range(n_layers)]
    return dict(pure, layers=jax.tree.map(lambda *xs: jnp.stack(xs), *layers))


def tokens(b=2, t=10, seed=1):
    return jax.random.randint(jax.random.key(seed), (b, t), 1, CFG.vocab_size)


def test_config_from_mapping_and_errors():
    d = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, max_len=32)
    assert tr.transformer_config(d) == dataclasses.replace(CFG, init_std=0.02)
    assert tr.transformer_config(ml_collections.ConfigDict(d)).head_size == 8
    with pytest.raises(ValueError, match="unknown.*n_head"):
        tr.transformer_config(dict(d, n_head=4))
    with pytest.raises(ValueError, match="missing.*d_ff"):
        tr.transformer_config({k: v for k, v in d.items() if k != "d_ff"})
    with pytest.raises(ValueError, match="n_heads \\(4\\) must be divisible by n_kv_heads \\(3\\)"):
        tr.transformer_config(dict(d, n_kv_heads=3))
    with pytest.raises(ValueError, match="dtype"):
        tr.transformer_config(dict(d, dtype="float16"))
    with pytest.raises(ValueError, match="remat"):
        tr.transformer_config(dict(d, remat="some"))
    with pytest.raises(ValueError, match="d_model"):
        tr.transformer_config(dict(d, d_model=30))
    with pytest.raises(ValueError, match="vocab_size must be an int"):
        tr.transformer_config(dict(d, vocab_size=64.0))


@pytest.mark.parametrize("overrides", [{}, dict(tie_embeddings=False, head_dim=12),
                                       dict(scan_layers=True, n_kv_heads=1, n_layers=3)])
def test_num_params_and_logical_names(overrides):
    cfg = dataclasses.replace(CFG, **overrides)
    model = nnx.eval_shape(lambda: tr.Transformer(cfg, rngs=nnx.Rngs(0)))
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    assert sum(int(np.prod(v.shape)) for _, v in flat) == tr.num_params(cfg)
    for path, var in flat:
        names = var.get_metadata().get("out_sharding")
        assert isinstance(names, tuple) and len(names) == var.ndim, (path, names, var.shape)
        assert set(names) <= LOGICAL_NAMES and None not in names, (path, names)
        assert (names[0] == "layers") == (cfg.scan_layers and path[0] == "layers"), (path, names)


def test_num_params_of_llama2_7b():
    cfg = tr.TransformerConfig(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32,
                               n_kv_heads=32, d_ff=11008, max_len=4096, tie_embeddings=False)
    assert tr.num_params(cfg) == 6_738_415_616  # the published LLaMA-2 7B count


def test_flops_per_token_formula():
    cfg = dataclasses.replace(CFG, tie_embeddings=False)
    d, l = cfg.d_model, cfg.n_layers
    matmul = tr.num_params(cfg) - cfg.vocab_size * d - (2 * l + 1) * d
    assert tr.flops_per_token(cfg, 16) == 6 * matmul + 12 * l * cfg.n_heads * cfg.head_size * 16


def test_causal_via_gradients():
    model = make()
    toks_1xT = jax.random.permutation(jax.random.key(0), CFG.vocab_size)[:10][None]
    probe_D = jax.random.normal(jax.random.key(1), (CFG.d_model,))

    @jax.jit
    def embed_grad(model, t):
        def out(model):
            hidden_1xTxD, _ = model(toks_1xT)
            return hidden_1xTxD[0, t] @ probe_D
        return jax.grad(out)(model).embed[...]

    for t in (0, 4, 9):
        row_norm_T = jnp.linalg.norm(embed_grad(model, t)[toks_1xT[0]], axis=-1)
        assert jnp.all(row_norm_T[t + 1:] == 0.0), t
        assert jnp.all(row_norm_T[:t + 1] > 0.0), t


def test_left_padding_matches_unpadded_and_ignores_pad_ids():
    model = make()
    real_1xT = tokens(1, 6)
    pad = 3
    ref_1xTxV = forward(model, real_1xT, jnp.ones((1, 6)))
    mask_1xT = jnp.concatenate([jnp.zeros((1, pad)), jnp.ones((1, 6))], axis=1)
    for pad_id in (0, 7):
        padded_1xT = jnp.concatenate([jnp.full((1, pad), pad_id), real_1xT], axis=1)
        out_1xTxV = forward(model, padded_1xT, mask_1xT)
        np.testing.assert_allclose(out_1xTxV[:, pad:], ref_1xTxV, atol=1e-5)
    # Masked tokens in the middle are invisible to later tokens and do not shift positions.
    mid_1xT = jnp.concatenate([real_1xT[:, :3], jnp.array([[5, 6, 7]]), real_1xT[:, 3:]], axis=1)
    mid_mask_1xT = jnp.ones((1, 9)).at[0, 3:6].set(0)
    out_1xTxV = forward(model, mid_1xT, mid_mask_1xT)
    np.testing.assert_allclose(jnp.delete(out_1xTxV, jnp.arange(3, 6), axis=1), ref_1xTxV,
                               atol=1e-5)
    assert bool(jnp.all(jnp.isfinite(out_1xTxV)))


def test_gqa_equals_mha_with_repeated_kv():
    gqa, mha = make(n_kv_heads=2), make(seed=5, n_kv_heads=4)
    pure = params_of(gqa)
    for layer in pure["layers"].values():
        layer["attn"]["k"] = jnp.repeat(layer["attn"]["k"], 2, axis=1)
        layer["attn"]["v"] = jnp.repeat(layer["attn"]["v"], 2, axis=1)
    set_params(mha, pure)
    toks, mask = tokens(), jnp.ones((2, 10))
    np.testing.assert_allclose(forward(mha, toks, mask), forward(gqa, toks, mask), atol=1e-5)


def primitive_names(jaxpr) -> set[str]:
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else [param]:
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    names |= primitive_names(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    names |= primitive_names(sub)
    return names


def loss_and_grads(model, tokens_BxT, mask_BxT):
    """The loss, its gradients, and whether the traced computation contains a remat."""
    def loss(model):
        hidden_BxTxD, _ = model(tokens_BxT, input_mask_BxT=mask_BxT)
        return jnp.mean(jax.nn.log_softmax(model.logits(hidden_BxTxD))[..., 0])
    grad_fn = nnx.value_and_grad(loss)
    names = primitive_names(jax.make_jaxpr(lambda m: m(tokens_BxT)[0])(model).jaxpr)
    has_remat = any("remat" in n or "checkpoint" in n for n in names)
    value, grads = jax.jit(grad_fn)(model)
    return value, nnx.to_pure_dict(grads), has_remat


def test_scan_and_remat_match_loop():
    loop = make()
    pure = params_of(loop)
    toks, mask = tokens(), jnp.ones((2, 10)).at[0, :3].set(0)
    ref_value, ref_grads, has_remat = loss_and_grads(loop, toks, mask)
    assert not has_remat
    ref_grads = stack_layers(ref_grads, CFG.n_layers)
    # Scan with remat "dots" equal to the plain loop checks both scan and remat at once.
    for overrides in (dict(remat="full"), dict(scan_layers=True, remat="dots")):
        model = make(seed=9, **overrides)
        set_params(model, stack_layers(pure, CFG.n_layers) if model.config.scan_layers else pure)
        value, grads, has_remat = loss_and_grads(model, toks, mask)
        assert has_remat, overrides
        if not model.config.scan_layers:
            grads = stack_layers(grads, CFG.n_layers)
        np.testing.assert_allclose(value, ref_value, rtol=1e-5)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-4),
                     grads, ref_grads)


def test_dot_product_attention_matches_einsum():
    """jax.nn.dot_product_attention (GQA, left padding, a masked middle) gives the einsum
    path's logits and gradients."""
    einsum = make()
    fused = make(seed=3, attention="dot_product_attention")
    set_params(fused, params_of(einsum))
    toks = tokens(3, 10)
    mask = jnp.ones((3, 10)).at[0, :3].set(0).at[1, 4:6].set(0)
    np.testing.assert_allclose(forward(fused, toks, mask), forward(einsum, toks, mask),
                               atol=1e-5)
    ref_value, ref_grads, _ = loss_and_grads(einsum, toks, mask)
    value, grads, _ = loss_and_grads(fused, toks, mask)
    np.testing.assert_allclose(value, ref_value, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-4),
                 grads, ref_grads)
    with pytest.raises(ValueError, match="attention must be one of"):
        dataclasses.replace(CFG, attention="flash")


def test_bfloat16_close_to_float32():
    fp32, bf16 = make(), make(dtype="bfloat16")
    set_params(bf16, params_of(fp32))
    toks, mask = tokens(), jnp.ones((2, 10))
    ref_BxTxV, out_BxTxV = forward(fp32, toks, mask), forward(bf16, toks, mask)
    assert out_BxTxV.dtype == jnp.float32
    assert model_hidden_dtype(bf16, toks) == jnp.float32
    err = jnp.max(jnp.abs(out_BxTxV - ref_BxTxV)) / jnp.max(jnp.abs(ref_BxTxV))
    assert 0 < err < 3e-2


def model_hidden_dtype(model, toks):
    return jax.eval_shape(lambda m: m(toks)[0], model).dtype


@pytest.mark.parametrize("scan_layers", [False, True])
def test_cache_decoding_equals_full_forward(scan_layers):
    model = make(scan_layers=scan_layers)
    b, p, t = 2, 5, 10
    toks = tokens(b, t)
    mask = jnp.ones((b, t)).at[0, :2].set(0)  # row 0's prompt is left-padded
    ref_BxTxV = forward(model, toks, mask)

    @jax.jit
    def run(model, toks_BxC, mask_BxC, cache):
        hidden, cache = model(toks_BxC, input_mask_BxT=mask_BxC, cache=cache)
        return model.logits(hidden), cache

    cache = tr.init_cache(model.config, b, 12)
    per_layer = (b, CFG.n_kv_heads, 12, CFG.head_size)  # heads before slots
    if scan_layers:
        assert cache["k"].shape == (CFG.n_layers,) + per_layer
    else:
        assert [k.shape for k in cache["k"]] == [per_layer] * CFG.n_layers
    outs = []
    # Prefill the prompt, then a two-token chunk, then one token at a time.
    for start, stop in [(0, p), (p, p + 2)] + [(i, i + 1) for i in range(p + 2, t)]:
        logits, cache = run(model, toks[:, start:stop], mask[:, start:stop], cache)
        outs.append(logits)
    assert int(cache["index"]) == t
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), ref_BxTxV, atol=1e-5)


def test_bad_inputs_raise_clear_errors():
    model = make()
    with pytest.raises(ValueError, match="exceeds max_len 32"):
        model(jnp.zeros((1, 33), jnp.int32))
    with pytest.raises(ValueError, match="input_mask shape"):
        model(jnp.zeros((1, 4), jnp.int32), input_mask_BxT=jnp.ones((1, 5)))
    with pytest.raises(ValueError, match="int \\[B, T\\]"):
        model(jnp.zeros((1, 4), jnp.float32))
    with pytest.raises(ValueError, match="max_len"):
        tr.init_cache(model.config, 1, 64)
