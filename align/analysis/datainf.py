"""Influence of training examples on a target loss: DataInf (Kwon et al., arXiv 2310.00902)
and the exact influence it approximates, with a small convex model to check both against
leave-one-out retraining.

Dimension letters: N training examples, M target examples, C examples of a chunk, D parameters
(of one block, or of all selected parameters), K refits.

Influence. The parameters θ* minimise the mean training loss (1/N) Σ_i ℓ_i(θ). Up-weighting
example k, θ*(ε) = argmin (1/N) Σ_i ℓ_i(θ) + ε ℓ_k(θ), moves them by dθ*/dε = −H⁻¹ g_k at ε = 0,
with H = (1/N) Σ_i ∇²ℓ_i(θ*) and g_k = ∇ℓ_k(θ*). The target loss L(θ) = (1/M) Σ_j ℓ'_j(θ) then
changes at the rate

    I(k) = dL(θ*(ε))/dε = −vᵀ H⁻¹ g_k,   v = ∇L(θ*).

Sign: I(k) > 0 means that up-weighting example k increases the target loss, so removing it
decreases the target loss. Removing example k is ε = −1/N (the mean over the N − 1 others has
the same minimiser as (1/N) Σ_i ℓ_i − (1/N) ℓ_k, whatever ℓ_k holds, a regulariser included),
so to first order

    L(θ*_{−k}) − L(θ*) ≈ −I(k) / N.

`exact_influence` solves with the dense Hessian of the selected parameters, (H + δI) x = v
(δ = `damping`, 0 by default), I(k) = −g_kᵀ x, for small models only.

DataInf replaces H⁻¹ block by block. The selected parameters are split into blocks l (by
default each leaf of the parameters is its own block; with LoRA, each adapter). Within block
l, with g_il the part of ∇ℓ_i in block l, H is replaced by the damped Gauss–Newton matrix
(1/N) Σ_i g_il g_ilᵀ + λ_l I, and the inverse of that mean is replaced by the mean of the
inverses, each in closed form (Sherman–Morrison):

    Ĥ_l⁻¹ v_l = (1/(N λ_l)) Σ_i [ v_l − (v_l·g_il) / (λ_l + ‖g_il‖²) g_il ],
    λ_l = s · (1/N) Σ_i (1/D_l) ‖g_il‖²   (s = `lambda_scale`, 0.1 by default),
    I(k) = −Σ_l (Ĥ_l⁻¹ v_l)·g_kl.

Blocks are independent (the cross-block parts of H are dropped). Per-example gradients come
from jax.vmap(jax.grad(loss_fn)), `chunk_size` examples at a time, so that memory holds one
chunk's gradients, never all N. Three passes over the data: (1) v from the target set, λ from
the training set; (2) Σ_i [...] over the training set; (3) I(k) for each training example.
Sums over chunks are accumulated in float64 on the host; the gradients themselves are in the
parameters' dtype.

`blocks(tree) -> {name: sub-pytree}` selects the parameters that count. It is applied to
gradients as well as to parameters, so it must select by structure (keys, attributes,
positions), never by value: `lambda p: {"lora": p["lora"]}`.

With `mesh`, the example axis of every chunk is sharded over the mesh's batch axes
(align/mesh.py: `batch_sharding`, the "batch" rule of `rules`, "data" × "fsdp" by default) and
the parameters are replicated; one process holds the whole data set. The results equal the
single-device ones up to the order of floating-point sums.

Bradley–Terry. A linear reward r(x) = wᵀφ(x) trained on pairs (chosen, rejected) with feature
differences d_i = φ(chosen) − φ(rejected), params {"w": w}:

    ℓ_i(w) = −log σ(wᵀd_i) + (μ/2)‖w‖² = softplus(−wᵀd_i) + (μ/2)‖w‖²,

strongly convex for μ > 0. `fit_bradley_terry` minimises the (weighted) mean by Newton's method
with a backtracking line search in float64, to a gradient of at most `tol`;
`leave_one_out` refits without each example in turn, Newton warm-started from the full fit.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from align import mesh as mesh_lib

Blocks = Callable[[Any], Mapping[str, Any]]

MAX_EXACT_PARAMS = 4096  # exact_influence refuses more selected parameters (a D x D solve)
PROGRESS_MIN_EXAMPLES = 8192  # progress=None shows a bar from this many training examples


# ----------------------------------------------------------------------------- data and blocks

def _count(data, name: str) -> int:
    leaves = jax.tree.leaves(data)
    if not leaves:
        raise ValueError(f"{name}: no arrays (need a pytree of arrays with a leading example axis)")
    sizes = {int(np.shape(x)[0]) if np.ndim(x) else -1 for x in leaves}
    if len(sizes) != 1 or -1 in sizes:
        raise ValueError(f"{name}: every array needs the same leading example axis, got leading "
                         f"sizes {sorted(sizes)}")
    n = sizes.pop()
    if n == 0:
        raise ValueError(f"{name}: no examples")
    return n


def _default_blocks(tree) -> dict:
    """Each leaf its own block, named by its path ("params" for a bare array)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {(jax.tree_util.keystr(path) or "params"): leaf for path, leaf in flat}


def _select(blocks: Blocks | None, tree) -> dict:
    """{name: [D_l] vector}: each block's leaves, raveled and concatenated."""
    chosen = (blocks or _default_blocks)(tree)
    if not isinstance(chosen, Mapping) or not chosen:
        raise ValueError("blocks(params) must return a non-empty dict name -> sub-pytree, got "
                         f"{type(chosen).__name__}")
    out = {}
    for name, sub in chosen.items():
        leaves = jax.tree.leaves(sub)
        if not leaves:
            raise ValueError(f"block {name!r} selects no parameters")
        out[str(name)] = jnp.concatenate([jnp.ravel(x) for x in leaves])
    return out


def block_sizes(params, blocks: Blocks | None = None) -> dict:
    """{name: number of parameters} of each block."""
    return {k: int(v.shape[0]) for k, v in
            jax.eval_shape(lambda p: _select(blocks, p), params).items()}


def _check_loss(loss_fn, params, data, name: str) -> None:
    dtype = lambda x: x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype  # no copy
    one = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x)[1:], dtype(x)), data)
    out = jax.eval_shape(loss_fn, params, one)
    if out.shape != ():
        raise ValueError(f"{name}: loss_fn(params, example) must return a scalar for one example "
                         f"(no batch axis), got shape {out.shape}")


def _chunk_size(chunk_size: int, n: int, divisor: int) -> int:
    if not (isinstance(chunk_size, (int, np.integer)) and chunk_size >= 1):
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    c = min(int(chunk_size), n)
    return -(-c // divisor) * divisor  # a multiple of the mesh's batch split


def _chunks(data, n: int, size: int, put):
    """(chunk, weight_C) over the examples; the last chunk is padded with copies of example 0
    at weight 0, so every chunk has the same shape (one compilation)."""
    host = jax.tree.map(np.asarray, data)
    for start in range(0, n, size):
        idx = np.arange(start, start + size)
        valid = idx < n
        idx = np.where(valid, idx, 0)
        yield put(jax.tree.map(lambda x: x[idx], host)), put(valid.astype(np.float32))


def _placer(mesh, rules):
    """(put for example-axis arrays, put for replicated values, batch divisor)."""
    if mesh is None:
        return (lambda t: t), (lambda t: t), 1
    if rules and any(isinstance(v, str) for v in rules.values()):
        rules = mesh_lib.logical_rules(rules)  # config form {"batch": "data,fsdp"}

    def put(tree):
        return jax.tree.map(
            lambda x: jax.device_put(x, mesh_lib.batch_sharding(mesh, rules, np.ndim(x))), tree)

    def rep(tree):
        return jax.device_put(tree, mesh_lib.replicated(mesh))

    return put, rep, mesh_lib.batch_divisor(mesh, rules)


def _progress(progress: bool | None, n: int, total: int, desc: str):
    import tqdm
    show = n >= PROGRESS_MIN_EXAMPLES if progress is None else bool(progress)
    return tqdm.tqdm(total=total, desc=desc, unit="chunk", disable=not show, leave=False)


def _host_sum(acc: dict | None, new: dict) -> dict:
    new = {k: np.asarray(v, np.float64) for k, v in new.items()}
    return new if acc is None else {k: acc[k] + new[k] for k in acc}


# ----------------------------------------------------------------------------- kernels

def _kernels(loss_fn, target_loss_fn, blocks):
    try:
        return _cached_kernels(loss_fn, target_loss_fn, blocks)
    except TypeError:  # an unhashable function: compiled for this call only
        return _build_kernels(loss_fn, target_loss_fn, blocks)


@functools.lru_cache(maxsize=32)
def _cached_kernels(loss_fn, target_loss_fn, blocks):
    return _build_kernels(loss_fn, target_loss_fn, blocks)


def _build_kernels(loss_fn, target_loss_fn, blocks):
    def per_example(fn):
        """params, chunk -> {name: [C, D_l]} gradients of fn on each example of the chunk."""
        one = lambda p, ex: _select(blocks, jax.grad(fn)(p, ex))
        return jax.vmap(one, in_axes=(None, 0))

    train_g, target_g = per_example(loss_fn), per_example(target_loss_fn)

    def weighted_sum(g_CxD, w_C):
        return jnp.einsum("c,cd->d", w_C.astype(g_CxD.dtype), g_CxD)

    @jax.jit
    def target_sum(params, chunk, w_C):
        return {k: weighted_sum(g, w_C) for k, g in target_g(params, chunk).items()}

    @jax.jit
    def square_sum(params, chunk, w_C):
        return {k: jnp.sum(w_C.astype(g.dtype) * jnp.sum(g * g, axis=1))
                for k, g in train_g(params, chunk).items()}

    @jax.jit
    def hvp_sum(params, chunk, w_C, v, lam):
        out = {}
        for k, g_CxD in train_g(params, chunk).items():
            c_C = (g_CxD @ v[k]) / (lam[k] + jnp.sum(g_CxD * g_CxD, axis=1))
            w = w_C.astype(g_CxD.dtype)
            out[k] = jnp.sum(w) * v[k] - weighted_sum(g_CxD, w * c_C)
        return out

    @jax.jit
    def scores(params, chunk, u):
        return -sum(g_CxD @ u[k] for k, g_CxD in train_g(params, chunk).items())

    return target_sum, square_sum, hvp_sum, scores


# ----------------------------------------------------------------------------- DataInf

def influence(loss_fn: Callable, params, train, target, *, blocks: Blocks | None = None,
              lambda_scale: float = 0.1, chunk_size: int = 64, mesh=None, rules=None,
              target_loss_fn: Callable | None = None,
              progress: bool | None = None) -> np.ndarray:
    """DataInf's influence I(k) of each training example on the mean target loss (module
    docstring): float64 [N]; I(k) > 0 means up-weighting example k raises the target loss.

    loss_fn(params, example) -> scalar loss of one example (a pytree of arrays without the
    example axis); train / target: pytrees of arrays with a leading example axis.
    target_loss_fn: the per-example target loss (default loss_fn). blocks: params -> {name:
    sub-pytree}, the parameter blocks that count (default: each leaf). mesh (with rules, the
    logical-axis rules whose "batch" entry names the mesh axes of the example axis): shard the
    example axis of each chunk. progress: a tqdm bar (None: from PROGRESS_MIN_EXAMPLES
    training examples).
    """
    if not (math.isfinite(lambda_scale) and lambda_scale > 0):
        raise ValueError(f"influence: lambda_scale must be finite and > 0, got {lambda_scale!r}")
    target_loss_fn = target_loss_fn or loss_fn
    n, m = _count(train, "influence: train"), _count(target, "influence: target")
    _check_loss(loss_fn, params, train, "influence: train")
    _check_loss(target_loss_fn, params, target, "influence: target")
    put, rep, divisor = _placer(mesh, rules)
    c_train = _chunk_size(chunk_size, n, divisor)
    c_target = _chunk_size(chunk_size, m, divisor)
    target_sum, square_sum, hvp_sum, scores = _kernels(loss_fn, target_loss_fn, blocks)
    params = rep(params)
    dtypes = {k: v.dtype for k, v in jax.eval_shape(lambda p: _select(blocks, p), params).items()}
    sizes = block_sizes(params, blocks)
    n_train_chunks = -(-n // c_train)
    bar = _progress(progress, n, 3 * n_train_chunks + -(-m // c_target), "DataInf")
    try:
        # Pass 1: v_l, the mean target gradient; λ_l from the mean squared training gradient.
        v = None
        for chunk, w_C in _chunks(target, m, c_target, put):
            v = _host_sum(v, target_sum(params, chunk, w_C))
            bar.update()
        v = {k: x / m for k, x in v.items()}
        sq = None
        for chunk, w_C in _chunks(train, n, c_train, put):
            sq = _host_sum(sq, square_sum(params, chunk, w_C))
            bar.update()
        lam = {k: lambda_scale * float(sq[k]) / (n * sizes[k]) for k in sq}
        flat = [k for k, x in lam.items() if not x > 0]
        if flat:
            raise ValueError(f"influence: block(s) {flat} have a zero gradient on every training "
                             "example, so DataInf's damping λ is 0; leave them out with `blocks`")
        # Pass 2: Ĥ_l⁻¹ v_l = (1/(N λ_l)) Σ_i [v_l − (v_l·g_il)/(λ_l + ‖g_il‖²) g_il].
        v_dev = rep({k: jnp.asarray(x, dtypes[k]) for k, x in v.items()})
        lam_dev = rep({k: jnp.asarray(x, dtypes[k]) for k, x in lam.items()})
        acc = None
        for chunk, w_C in _chunks(train, n, c_train, put):
            acc = _host_sum(acc, hvp_sum(params, chunk, w_C, v_dev, lam_dev))
            bar.update()
        u = rep({k: jnp.asarray(x / (n * lam[k]), dtypes[k]) for k, x in acc.items()})
        # Pass 3: I(k) = −Σ_l (Ĥ_l⁻¹ v_l)·g_kl.
        out = []
        for chunk, w_C in _chunks(train, n, c_train, put):
            out.append(np.asarray(scores(params, chunk, u), np.float64))
            bar.update()
    finally:
        bar.close()
    return np.concatenate(out)[:n]


# ----------------------------------------------------------------------------- exact

def _flat(blocks: Blocks | None, tree):
    return jnp.concatenate(list(_select(blocks, tree).values()))


@functools.lru_cache(maxsize=32)
def _cached_exact_kernels(loss_fn, target_loss_fn, blocks):
    return _build_exact_kernels(loss_fn, target_loss_fn, blocks)


def _build_exact_kernels(loss_fn, target_loss_fn, blocks):
    def chunk_loss(fn, p, chunk, w_C):
        return jnp.sum(w_C * jax.vmap(fn, in_axes=(None, 0))(p, chunk))

    def embed(params):
        """The linear map from a selected-parameter vector to a tangent of params (zeros
        outside the selection): the transpose of the selection."""
        spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), x.dtype), params)
        return jax.linear_transpose(lambda t: _flat(blocks, t), spec)

    @jax.jit
    def hessian_sum(params, chunk, w_C):
        to_tree = embed(params)
        d = _flat(blocks, params).shape[0]

        def grad_at(x):
            shifted = jax.tree.map(jnp.add, params, to_tree(x)[0])
            return _flat(blocks, jax.grad(chunk_loss, argnums=1)(loss_fn, shifted, chunk, w_C))

        return jax.jacfwd(grad_at)(jnp.zeros((d,), _flat(blocks, params).dtype))

    @jax.jit
    def target_sum(params, chunk, w_C):
        return _flat(blocks, jax.grad(chunk_loss, argnums=1)(target_loss_fn, params, chunk, w_C))

    @jax.jit
    def gradients(params, chunk):
        return jax.vmap(lambda ex: _flat(blocks, jax.grad(loss_fn)(params, ex)))(chunk)

    return hessian_sum, target_sum, gradients


def exact_influence(loss_fn: Callable, params, train, target, *, blocks: Blocks | None = None,
                    damping: float = 0.0, chunk_size: int = 64,
                    target_loss_fn: Callable | None = None,
                    max_params: int = MAX_EXACT_PARAMS) -> np.ndarray:
    """I(k) = −vᵀ (H + damping·I)⁻¹ g_k with the dense Hessian H = (1/N) Σ_i ∇²ℓ_i of the
    selected parameters (all blocks together, cross terms included), float64 [N]. The
    oracle for `influence`; refuses more than max_params selected parameters."""
    if not (math.isfinite(damping) and damping >= 0):
        raise ValueError(f"exact_influence: damping must be finite and >= 0, got {damping!r}")
    target_loss_fn = target_loss_fn or loss_fn
    n, m = _count(train, "exact_influence: train"), _count(target, "exact_influence: target")
    _check_loss(loss_fn, params, train, "exact_influence: train")
    _check_loss(target_loss_fn, params, target, "exact_influence: target")
    d = sum(block_sizes(params, blocks).values())
    if d > max_params:
        raise ValueError(f"exact_influence: {d} selected parameters; the dense Hessian is only "
                         f"built for at most max_params={max_params} (use `influence`, or "
                         "select fewer parameters with `blocks`)")
    try:
        hessian_sum, target_sum, gradients = _cached_exact_kernels(loss_fn, target_loss_fn,
                                                                   blocks)
    except TypeError:
        hessian_sum, target_sum, gradients = _build_exact_kernels(loss_fn, target_loss_fn, blocks)
    keep = lambda t: t
    h_DxD = np.zeros((d, d))
    for chunk, w_C in _chunks(train, n, _chunk_size(chunk_size, n, 1), keep):
        h_DxD += np.asarray(hessian_sum(params, chunk, w_C), np.float64)
    h_DxD = (h_DxD + h_DxD.T) / (2 * n) + damping * np.eye(d)
    v_D = np.zeros(d)
    for chunk, w_C in _chunks(target, m, _chunk_size(chunk_size, m, 1), keep):
        v_D += np.asarray(target_sum(params, chunk, w_C), np.float64)
    v_D /= m
    try:
        chol = np.linalg.cholesky(h_DxD)
    except np.linalg.LinAlgError:
        low = float(np.linalg.eigvalsh(h_DxD)[0])
        raise ValueError(f"exact_influence: the damped Hessian is not positive definite "
                         f"(smallest eigenvalue {low:.3g}); raise damping") from None
    x_D = np.linalg.solve(chol.T, np.linalg.solve(chol, v_D))
    out = []
    c = _chunk_size(chunk_size, n, 1)
    for chunk, _ in _chunks(train, n, c, keep):
        out.append(-np.asarray(gradients(params, chunk), np.float64) @ x_D)
    return np.concatenate(out)[:n]


def predicted_removal_change(influence_N) -> np.ndarray:
    """First-order change of the target loss when each example is removed: −I(k) / N."""
    i = np.asarray(influence_N, np.float64)
    return -i / i.size


# ----------------------------------------------------------------------------- Bradley–Terry

def bradley_terry_loss(params, example, *, mu: float):
    """ℓ(w) = softplus(−wᵀd) + (μ/2)‖w‖² of one pair; params {"w": [D]}, example {"d": [D]}."""
    w = params["w"]
    return jax.nn.softplus(-jnp.dot(w, example["d"])) + 0.5 * mu * jnp.dot(w, w)


def pair_nll(params, example):
    """softplus(−wᵀd): the Bradley–Terry negative log-likelihood of one pair, unregularised."""
    return jax.nn.softplus(-jnp.dot(params["w"], example["d"]))


@functools.lru_cache(maxsize=None)
def bradley_terry_loss_fn(mu: float) -> Callable:
    """bradley_terry_loss with μ fixed; one function object per μ (its kernels compile once)."""
    return functools.partial(bradley_terry_loss, mu=float(mu))


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _softplus(x):
    return np.logaddexp(0.0, x)


def _pairs(d_NxD) -> np.ndarray:
    d = np.asarray(d_NxD, np.float64)
    if d.ndim != 2 or d.shape[0] == 0:
        raise ValueError(f"need [N, D] pair feature differences, got shape {d.shape}")
    if not np.all(np.isfinite(d)):
        raise ValueError("pair feature differences hold NaN or infinite values")
    return d


def _check_mu(mu: float, where: str) -> None:
    if not (math.isfinite(mu) and mu > 0):
        raise ValueError(f"{where}: mu must be finite and > 0 (it makes the fit unique), "
                         f"got {mu!r}")


def bradley_terry_objective(w_D, d_NxD, mu: float, weights_N=None) -> float:
    """Σ_i a_i softplus(−wᵀd_i) / Σ_i a_i + (μ/2)‖w‖² (a: weights, default 1)."""
    d = _pairs(d_NxD)
    a = np.ones(d.shape[0]) if weights_N is None else np.asarray(weights_N, np.float64)
    w = np.asarray(w_D, np.float64)
    return float(a @ _softplus(-(d @ w)) / a.sum() + 0.5 * mu * w @ w)


def pair_nll_mean(w_D, d_MxD) -> float:
    """Mean unregularised Bradley–Terry NLL of pairs (chosen first): mean softplus(−wᵀd)."""
    return float(np.mean(_softplus(-(_pairs(d_MxD) @ np.asarray(w_D, np.float64)))))


def pair_accuracy(w_D, d_MxD) -> float:
    """Share of pairs whose margin wᵀd is > 0 (the model prefers the chosen text)."""
    return float(np.mean(_pairs(d_MxD) @ np.asarray(w_D, np.float64) > 0))


def fit_bradley_terry(d_NxD, mu: float, *, weights_N=None, w0_D=None, tol: float = 1e-10,
                      max_iter: int = 100) -> np.ndarray:
    """argmin_w Σ_i a_i softplus(−wᵀd_i) / Σ_i a_i + (μ/2)‖w‖² by damped Newton (float64),
    until max |gradient| <= tol; from w0_D (default 0)."""
    _check_mu(mu, "fit_bradley_terry")
    d = _pairs(d_NxD)
    n, dim = d.shape
    a = np.ones(n) if weights_N is None else np.asarray(weights_N, np.float64).reshape(-1)
    if a.size != n or np.any(a < 0) or not a.sum() > 0:
        raise ValueError(f"fit_bradley_terry: need {n} weights >= 0 with a positive sum")
    a = a / a.sum()
    w = np.zeros(dim) if w0_D is None else np.array(w0_D, np.float64).reshape(dim)

    def objective(w):
        return float(a @ _softplus(-(d @ w)) + 0.5 * mu * w @ w)

    f = objective(w)
    for _ in range(max_iter):
        margin = d @ w
        grad = -(a * _sigmoid(-margin)) @ d + mu * w
        if np.max(np.abs(grad)) <= tol:
            return w
        s = _sigmoid(margin) * _sigmoid(-margin)
        hess = (d * (a * s)[:, None]).T @ d + mu * np.eye(dim)
        step = np.linalg.solve(hess, grad)
        decrement = float(grad @ step)  # the squared Newton decrement
        t = 1.0
        # Armijo backtracking while far from the optimum; near it (decrement below 1e-8) the
        # full step converges quadratically and the objective's changes drown in rounding.
        while decrement > 1e-8 and t > 1e-10:
            if objective(w - t * step) <= f - 1e-4 * t * decrement:
                break
            t *= 0.5
        w = w - t * step
        f = objective(w)
    raise RuntimeError(f"fit_bradley_terry: no convergence to |gradient| <= {tol} in "
                       f"{max_iter} Newton steps")


def leave_one_out(d_NxD, mu: float, w_full_D, *, tol: float = 1e-10,
                  max_iter: int = 50) -> np.ndarray:
    """[N, D]: row k the Bradley–Terry fit without pair k (mean over the other N − 1), all N
    problems solved together by Newton's method warm-started from the full fit w_full_D."""
    _check_mu(mu, "leave_one_out")
    d = _pairs(d_NxD)
    n, dim = d.shape
    if n < 2:
        raise ValueError("leave_one_out: need at least 2 pairs")
    a_KxN = (1.0 - np.eye(n)) / (n - 1)
    w_KxD = np.tile(np.asarray(w_full_D, np.float64).reshape(1, dim), (n, 1))
    for _ in range(max_iter):
        margin_KxN = w_KxD @ d.T
        grad_KxD = -(a_KxN * _sigmoid(-margin_KxN)) @ d + mu * w_KxD
        if np.max(np.abs(grad_KxD)) <= tol:
            return w_KxD
        s_KxN = a_KxN * _sigmoid(margin_KxN) * _sigmoid(-margin_KxN)
        hess_KxDxD = np.einsum("kn,nd,ne->kde", s_KxN, d, d) + mu * np.eye(dim)
        w_KxD = w_KxD - np.linalg.solve(hess_KxDxD, grad_KxD[..., None])[..., 0]
    raise RuntimeError(f"leave_one_out: no convergence to |gradient| <= {tol} in {max_iter} "
                       "Newton steps (the warm start should be the full fit)")
