"""DataInf and exact influence: closed forms and float64 NumPy oracles, a hand-built case,
chunking, sharding over 8 devices, block selection, and the first-order prediction against
leave-one-out retraining of a Bradley–Terry model.

Dimension letters: N training examples, M target examples, D parameters.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats as sp_stats

from align import mesh as mesh_lib
from align.analysis import datainf


def _quadratic(a_matrix):
    def loss(params, ex):
        r = params["w"] - ex["a"]
        return 0.5 * r @ jnp.asarray(a_matrix) @ r
    return loss


def _spd(rng, d):
    q = rng.normal(size=(d, d))
    return q @ q.T / d + np.eye(d)


def test_exact_influence_of_a_quadratic_equals_its_closed_form():
    """ℓ_i = ½ (w − a_i)ᵀA(w − a_i): H = A, g_k = A(w − a_k), v = A(w − b̄), so
    I(k) = −(w − b̄)ᵀ A (w − a_k) at any w."""
    rng = np.random.default_rng(0)
    d, n, m = 4, 30, 12
    a = _spd(rng, d)
    w, a_NxD, b_MxD = rng.normal(size=d), rng.normal(size=(n, d)), rng.normal(size=(m, d))
    want = -(w - b_MxD.mean(0)) @ a @ (w - a_NxD).T
    with jax.enable_x64(True):
        got = datainf.exact_influence(_quadratic(a), {"w": jnp.asarray(w)}, {"a": a_NxD},
                                      {"a": b_MxD}, chunk_size=7)
        damped = datainf.exact_influence(_quadratic(a), {"w": jnp.asarray(w)}, {"a": a_NxD},
                                         {"a": b_MxD}, damping=0.5)
    assert got.dtype == np.float64 and got.shape == (n,)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    want_damped = -(a @ (w - b_MxD.mean(0))) @ np.linalg.solve(a + 0.5 * np.eye(d),
                                                                a @ (w - a_NxD).T)
    np.testing.assert_allclose(damped, want_damped, rtol=1e-10, atol=1e-12)


# A two-block least-squares model: f = x·u + Σ z∘V, ℓ = ½ (f − y)².
def _ls_loss(params, ex):
    f = ex["x"] @ params["u"] + jnp.sum(ex["z"] * params["V"])
    return 0.5 * (f - ex["y"]) ** 2


def _ls_data(rng, n):
    return {"x": rng.normal(size=(n, 3)), "z": rng.normal(size=(n, 2, 2)), "y": rng.normal(size=n)}


def _ls_params(rng):
    return {"u": rng.normal(size=3), "V": rng.normal(size=(2, 2))}


def _ls_grads(params, data):
    """{block: [N, D_l]} per-example gradients in NumPy: r x and r z."""
    n = data["y"].size
    r = data["x"] @ params["u"] + np.sum(data["z"] * params["V"], axis=(1, 2)) - data["y"]
    return {"['V']": r[:, None] * data["z"].reshape(n, 4), "['u']": r[:, None] * data["x"]}


def _datainf_numpy(g_train, g_target, scale=0.1):
    """DataInf by its formula, float64, one explicit loop over examples."""
    n = next(iter(g_train.values())).shape[0]
    total = np.zeros(n)
    for name, g in g_train.items():
        v = g_target[name].mean(0)
        lam = scale * np.mean(g * g)
        h_inv_v = np.zeros_like(v)
        for g_i in g:
            h_inv_v += v - (v @ g_i) / (lam + g_i @ g_i) * g_i
        h_inv_v /= n * lam
        total -= g @ h_inv_v
    return total


def test_datainf_equals_a_float64_numpy_implementation_of_its_formula():
    rng = np.random.default_rng(1)
    params, train, target = _ls_params(rng), _ls_data(rng, 41), _ls_data(rng, 9)
    want = _datainf_numpy(_ls_grads(params, train), _ls_grads(params, target))
    want_scaled = _datainf_numpy(_ls_grads(params, train), _ls_grads(params, target), scale=2.0)
    with jax.enable_x64(True):
        p = jax.tree.map(jnp.asarray, params)
        got = datainf.influence(_ls_loss, p, train, target, chunk_size=8)
        scaled = datainf.influence(_ls_loss, p, train, target, chunk_size=8, lambda_scale=2.0)
    assert got.dtype == np.float64 and got.shape == (41,)
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(scaled, want_scaled, rtol=1e-11, atol=1e-13)
    # float32 parameters: the same up to single precision.
    got32 = datainf.influence(_ls_loss, jax.tree.map(lambda x: jnp.asarray(x, jnp.float32),
                                                     params), train, target, chunk_size=8)
    np.testing.assert_allclose(got32, want, rtol=2e-4, atol=2e-4 * np.abs(want).max())


def test_hand_built_case_one_block_two_examples():
    """w = 0, ℓ_i = ½ (w − a_i)², a = (1, −3); target ½ (w − 2)². g = (−1, 3), v = −2,
    λ = 0.1 · (1 + 9) / 2 = 0.5, Ĥ⁻¹v = v Σ_i λ / (λ + g_i²) / (2λ) = −2 (1/3 + 1/19) = −44/57,
    so DataInf gives I = (44/57) g = (−44/57, 132/57); exact (H = 1): I = −v g = (−2, 6)."""
    loss = lambda p, ex: 0.5 * (p["w"] - ex["a"]) ** 2
    params = {"w": jnp.zeros(())}
    train, target = {"a": np.array([1.0, -3.0], np.float32)}, {"a": np.array([2.0], np.float32)}
    np.testing.assert_allclose(datainf.influence(loss, params, train, target),
                               [-44 / 57, 132 / 57], rtol=1e-6)
    exact = datainf.exact_influence(loss, params, train, target)
    np.testing.assert_allclose(exact, [-2.0, 6.0], rtol=1e-6)
    # Example 2 pulls w away from the target: up-weighting it raises the target loss (I > 0),
    # removing it lowers the target loss.
    assert exact[1] > 0 and datainf.predicted_removal_change(exact)[1] < 0


def test_chunked_equals_unchunked_and_sharded_equals_single_device():
    assert jax.device_count() == 8, "tests/conftest.py simulates 8 CPU devices"
    rng = np.random.default_rng(2)
    params, train, target = _ls_params(rng), _ls_data(rng, 50), _ls_data(rng, 13)
    with jax.enable_x64(True):
        p = jax.tree.map(jnp.asarray, params)
        whole = datainf.influence(_ls_loss, p, train, target, chunk_size=1000)
        for size in (1, 7, 16):
            np.testing.assert_allclose(datainf.influence(_ls_loss, p, train, target,
                                                         chunk_size=size),
                                       whole, rtol=1e-12, atol=1e-14)
        mesh = mesh_lib.make_mesh({"data": -1})
        sharded = datainf.influence(_ls_loss, p, train, target, chunk_size=12, mesh=mesh)
        np.testing.assert_allclose(sharded, whole, rtol=1e-12, atol=1e-14)
        two_axes = mesh_lib.make_mesh({"data": 2, "fsdp": 4})
        np.testing.assert_allclose(
            datainf.influence(_ls_loss, p, train, target, chunk_size=8, mesh=two_axes,
                              rules={"batch": "data,fsdp"}), whole, rtol=1e-12, atol=1e-14)
    # float32 on the mesh: the same up to the order of the sums.
    p32 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    one = datainf.influence(_ls_loss, p32, train, target, chunk_size=16)
    many = datainf.influence(_ls_loss, p32, train, target, chunk_size=16, mesh=mesh)
    np.testing.assert_allclose(many, one, rtol=1e-5, atol=1e-5 * np.abs(one).max())


def test_blocks_select_which_parameters_count():
    rng = np.random.default_rng(3)
    params, train, target = _ls_params(rng), _ls_data(rng, 30), _ls_data(rng, 10)
    with jax.enable_x64(True):
        p = jax.tree.map(jnp.asarray, params)
        both = datainf.influence(_ls_loss, p, train, target)
        only_u = datainf.influence(_ls_loss, p, train, target, blocks=lambda t: {"u": t["u"]})
        only_v = datainf.influence(_ls_loss, p, train, target, blocks=lambda t: {"V": t["V"]})
        # DataInf is a sum over blocks; one block is the model with the others held fixed.
        np.testing.assert_allclose(only_u + only_v, both, rtol=1e-12, atol=1e-14)
        fixed_v = lambda q, ex: _ls_loss({"u": q["u"], "V": p["V"]}, ex)
        np.testing.assert_allclose(only_u, datainf.influence(fixed_v, {"u": p["u"]}, train,
                                                             target), rtol=1e-12, atol=1e-14)
        # One block holding both leaves is a different approximation (one λ, one inverse).
        joint = datainf.influence(_ls_loss, p, train, target, blocks=lambda t: {"all": t})
        assert not np.allclose(joint, both)
        g = _ls_grads(params, train)
        gt = _ls_grads(params, target)
        want = _datainf_numpy({"all": np.concatenate([g["['V']"], g["['u']"]], 1)},
                              {"all": np.concatenate([gt["['V']"], gt["['u']"]], 1)})
        np.testing.assert_allclose(joint, want, rtol=1e-11, atol=1e-13)
        # Exact influence over a selection: the model with the other parameters held fixed.
        exact_u = datainf.exact_influence(_ls_loss, p, train, target, damping=1e-3,
                                          blocks=lambda t: {"u": t["u"]})
        np.testing.assert_allclose(
            exact_u, datainf.exact_influence(fixed_v, {"u": p["u"]}, train, target,
                                             damping=1e-3), rtol=1e-10, atol=1e-12)
    assert datainf.block_sizes(params) == {"['V']": 4, "['u']": 3}


def test_errors_are_clear():
    rng = np.random.default_rng(4)
    params, train = _ls_params(rng), _ls_data(rng, 5)
    with pytest.raises(ValueError, match="max_params"):
        datainf.exact_influence(_ls_loss, params, train, train, max_params=6)
    with pytest.raises(ValueError, match="scalar"):
        datainf.influence(lambda p, ex: p["u"] * ex["y"], params, train, train)
    with pytest.raises(ValueError, match="leading example axis"):
        datainf.influence(_ls_loss, params, dict(train, y=train["y"][:3]), train)
    with pytest.raises(ValueError, match="zero gradient"):
        datainf.influence(lambda p, ex: _ls_loss(p, ex) + 0.0 * p["extra"][0],
                          dict(params, extra=jnp.zeros(2)), train, train)
    with pytest.raises(ValueError, match="positive definite"):
        datainf.exact_influence(lambda p, ex: -_ls_loss(p, ex), params, train, train)


def test_bradley_terry_fit_and_leave_one_out_reach_their_optima():
    rng = np.random.default_rng(5)
    d = rng.normal(size=(40, 3)) + np.array([1.0, 0.0, 0.0])
    mu = 0.05
    w = datainf.fit_bradley_terry(d, mu)
    sig = lambda x: 1.0 / (1.0 + np.exp(-x))
    np.testing.assert_allclose(-(sig(-(d @ w))) @ d / 40 + mu * w, 0.0, atol=1e-10)
    loo = datainf.leave_one_out(d, mu, w)
    for k in (0, 17, 39):
        keep = np.arange(40) != k
        np.testing.assert_allclose(loo[k], datainf.fit_bradley_terry(d[keep], mu), atol=1e-9)
        np.testing.assert_allclose(loo[k], datainf.fit_bradley_terry(
            d, mu, weights_N=keep.astype(float)), atol=1e-9)


def test_exact_influence_predicts_leave_one_out_retraining():
    """Bradley–Terry with μ = 0.1, 120 pairs: −I(k)/N against the actual change of the target
    loss when pair k is removed and the model refit."""
    rng = np.random.default_rng(6)
    n, dim, mu = 120, 4, 0.1
    d = rng.normal(size=(n, dim)) + np.array([0.8, 0.3, 0.0, 0.0])
    target = rng.normal(size=(60, dim)) + np.array([0.0, -0.8, 0.5, 0.0])
    w = datainf.fit_bradley_terry(d, mu, tol=1e-12)
    loo = datainf.leave_one_out(d, mu, w, tol=1e-12)
    base = datainf.pair_nll_mean(w, target)
    actual = np.array([datainf.pair_nll_mean(x, target) for x in loo]) - base
    with jax.enable_x64(True):
        p = {"w": jnp.asarray(w)}
        exact = datainf.exact_influence(datainf.bradley_terry_loss_fn(mu), p, {"d": d},
                                        {"d": target}, target_loss_fn=datainf.pair_nll)
        approx = datainf.influence(datainf.bradley_terry_loss_fn(mu), p, {"d": d},
                                   {"d": target}, target_loss_fn=datainf.pair_nll)
    predicted = datainf.predicted_removal_change(exact)
    assert sp_stats.spearmanr(predicted, actual).statistic > 0.9
    assert np.max(np.abs(predicted - actual)) < 0.2 * np.max(np.abs(actual))
    assert np.sign(predicted @ actual) > 0
    assert sp_stats.spearmanr(-approx, actual).statistic > 0.5
