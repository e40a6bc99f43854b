"""Tests for align.models.heads: scalar head shapes, dtypes, logical names, last-token reads.

Dimension letters: B batch, T tokens, D model width.
"""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from align.models import heads
from align.models import transformer as tr

CFG = tr.TransformerConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                           d_ff=64, max_len=32, dtype="bfloat16")


def test_scalar_head_shapes_dtype_and_names():
    head = heads.ScalarHead(8, rngs=nnx.Rngs(0))
    head.bias[...] = jnp.float32(0.5)
    hidden_BxTxD = jax.random.normal(jax.random.key(1), (3, 5, 8)).astype(jnp.bfloat16)
    values_BxT = head(hidden_BxTxD)
    assert values_BxT.shape == (3, 5) and values_BxT.dtype == jnp.float32
    expected = np.asarray(hidden_BxTxD, np.float64) @ np.asarray(head.kernel[...], np.float64) + 0.5
    np.testing.assert_allclose(values_BxT, expected, rtol=1e-5, atol=1e-6)
    names = {path: v.get_metadata()["out_sharding"]
             for path, v in nnx.to_flat_state(nnx.state(head, nnx.Param))}
    assert names == {("kernel",): ("embed",), ("bias",): ()}


def test_scalar_model_values_and_param_count():
    model = heads.ScalarModel(CFG, rngs=nnx.Rngs(0), head_init_std=0.5)
    tokens_BxT = jax.random.randint(jax.random.key(2), (2, 7), 0, CFG.vocab_size)
    mask_BxT = jnp.ones((2, 7)).at[1, :2].set(0)

    @jax.jit
    def run(model):
        hidden, _ = model.backbone(tokens_BxT, input_mask_BxT=mask_BxT)
        return model(tokens_BxT, input_mask_BxT=mask_BxT), model.head(hidden)

    values_BxT, expected_BxT = run(model)
    assert values_BxT.shape == (2, 7) and values_BxT.dtype == jnp.float32
    np.testing.assert_array_equal(values_BxT, expected_BxT)
    assert float(jnp.std(values_BxT)) > 0
    n = sum(v.size for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))
    assert n == tr.num_params(CFG) + CFG.d_model + 1
    assert model.config is CFG


def test_last_token_value():
    values_BxT = jnp.arange(12.0).reshape(3, 4)
    mask_BxT = jnp.array([[1, 1, 0, 0], [0, 1, 1, 1], [0, 0, 0, 0]])
    np.testing.assert_array_equal(heads.last_token_value(values_BxT, mask_BxT), [1.0, 7.0, 0.0])


def test_policy_with_value_aligns_log_probs_and_values_with_tokens():
    from align import logprobs
    cfg = tr.TransformerConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                               d_ff=64, max_len=32)
    tokens_BxT = jax.random.randint(jax.random.key(3), (2, 6), 0, cfg.vocab_size)
    mask_BxT = jnp.ones((2, 6), jnp.int32).at[1, 4:].set(0)
    for critic in heads.CRITICS:
        model = heads.PolicyWithValue(cfg, rngs=nnx.Rngs(0), critic=critic)
        logp_BxT, values_BxT = model.logprobs_and_values(tokens_BxT, mask_BxT)
        np.testing.assert_allclose(
            logp_BxT, logprobs.shifted_logprobs(model.policy, tokens_BxT, mask_BxT), rtol=1e-6)
        np.testing.assert_array_equal(values_BxT, 0.0)  # value weights start at 0
        # Column t holds V(<t): the value read at the hidden state of token t − 1.
        if critic == "head":
            model.value_head.bias[...] = jnp.float32(0.0)
            model.value_head.kernel[...] = jnp.ones((cfg.d_model,), jnp.float32)
            hidden, _ = model.policy(tokens_BxT, input_mask_BxT=mask_BxT)
            raw_BxT = model.value_head(hidden)
        else:
            model.critic.head.kernel[...] = jnp.ones((cfg.d_model,), jnp.float32)
            raw_BxT = model.critic(tokens_BxT, input_mask_BxT=mask_BxT)
        _, values_BxT = model.logprobs_and_values(tokens_BxT, mask_BxT)
        np.testing.assert_allclose(values_BxT[:, 1:], raw_BxT[:, :-1], rtol=1e-6)
        np.testing.assert_array_equal(values_BxT[:, 0], 0.0)
        # Used as a language model, it is its policy.
        assert model.config is model.policy.config
        np.testing.assert_array_equal(model.unembed_matrix(), model.policy.unembed_matrix())
