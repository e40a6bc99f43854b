"""align.matmul.dense: the einsum it replaces, to float precision, and a clear error on a shape
mismatch."""

import jax.numpy as jnp
import numpy as np
import pytest

from align import matmul


def test_dense_equals_the_einsum_over_one_and_two_contracted_axes():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5, 4, 6)).astype(np.float32)
    w1 = rng.normal(size=(6, 2, 7)).astype(np.float32)
    np.testing.assert_allclose(matmul.dense(x, w1), np.einsum("btnd,dkh->btnkh", x, w1),
                               rtol=1e-5, atol=1e-5)
    w2 = rng.normal(size=(4, 6, 8)).astype(np.float32)
    out = matmul.dense(x, w2, 2)
    assert out.shape == (3, 5, 8)
    np.testing.assert_allclose(out, np.einsum("btnh,nhd->btd", x, w2), rtol=1e-5, atol=1e-5)
    # The compute dtype casts both operands; preferred_element_type sets the output's.
    out = matmul.dense(x, w1, dtype=jnp.bfloat16, preferred_element_type=jnp.float32)
    assert out.dtype == jnp.float32
    assert matmul.dense(x, w1, dtype=jnp.bfloat16).dtype == jnp.bfloat16


def test_dense_names_mismatched_axes():
    x = np.zeros((2, 3, 4), np.float32)
    with pytest.raises(ValueError, match=r"activation axes \(4,\) do not match the weight's "
                                         r"input axes \(5,\)"):
        matmul.dense(x, np.zeros((5, 6), np.float32))
    with pytest.raises(ValueError, match="do not match"):
        matmul.dense(x, np.zeros((4, 4, 6), np.float32), 2)
