"""Listwise preference objectives (LiPO and the ranking losses it compares), arXiv 2402.01878.

Dimension letters: B batch, K responses per prompt, T tokens.

A prompt has K responses y_k with labels psi_k in [0, 1] and scores
s_k = beta (S_theta(y_k) - S_ref(y_k)), S the summed completion log-prob. `mask_BxK` marks real
items (1) and padding (0); padding is excluded from every sum, normaliser and rank. Pair sums
run over ordered pairs (i, j) of real items with psi_i > psi_j (tied labels make no pair).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from align import logprobs
from align.objectives import base
from align.settings import Settings, setting

WEIGHTINGS = ("lambda", "constant", "constant_gain", "constant_discount")


# ----------------------------------------------------------------------------- maths

def _masked_inputs(scores_BxK, labels_BxK, mask_BxK):
    """Float mask, and scores/labels zeroed under padding so nothing non-finite leaks into grads."""
    real_BxK = jnp.asarray(mask_BxK) > 0
    scores_BxK = jnp.where(real_BxK, scores_BxK, 0.0)
    labels_BxK = jnp.where(real_BxK, jnp.asarray(labels_BxK, scores_BxK.dtype), 0.0)
    return scores_BxK, labels_BxK, real_BxK.astype(scores_BxK.dtype)


def _pair_mask(labels_BxK, m_BxK):
    """P[b, i, j] = 1 where i and j are real and psi_i > psi_j."""
    better_BxKxK = labels_BxK[:, :, None] > labels_BxK[:, None, :]
    return better_BxKxK * m_BxK[:, :, None] * m_BxK[:, None, :]


def _diff(scores_BxK):
    """d[b, i, j] = s_i - s_j."""
    return scores_BxK[:, :, None] - scores_BxK[:, None, :]


def _neg_log_softmax(scores_BxK, rest_BxKxK):
    """-log(e^{s_k} / sum_j e^{s_j}) with j over k itself and the items selected in rest[:, k]."""
    # As log(1 + sum_{j != k} e^{s_j - s_k}): log1p keeps the relative precision of a loss near 0,
    # which a difference of two logsumexps loses in fp32.
    k = scores_BxK.shape[-1]
    others_BxKxK = (rest_BxKxK > 0) & ~jnp.eye(k, dtype=bool)[None]
    gap_BxKxK = jnp.where(others_BxKxK, scores_BxK[:, None, :] - scores_BxK[:, :, None], 0.0)
    # The shift is a constant for the gradient; it keeps every exp() <= 1.
    shift_BxK = jax.lax.stop_gradient(
        jnp.maximum(jnp.max(jnp.where(others_BxKxK, gap_BxKxK, 0.0), axis=-1), 0.0))
    rest_BxK = jnp.sum(jnp.where(others_BxKxK, jnp.exp(gap_BxKxK - shift_BxK[..., None]), 0.0),
                       axis=-1)
    near_BxK = jnp.log1p(rest_BxK)
    far_BxK = jnp.log(jnp.exp(-shift_BxK) + rest_BxK) + shift_BxK
    return jnp.where(shift_BxK > 0, far_BxK, near_BxK)


def point_mse(scores_BxK, labels_BxK, mask_BxK):
    """Pointwise squared error sum_k (psi_k - s_k)^2, arXiv 2402.01878."""
    s_BxK, psi_BxK, m_BxK = _masked_inputs(scores_BxK, labels_BxK, mask_BxK)
    return jnp.sum(m_BxK * jnp.square(psi_BxK - s_BxK), axis=-1)


def point_sigmoid(scores_BxK, labels_BxK, mask_BxK):
    """Pointwise cross-entropy of sigma(s_k) against psi_k, arXiv 2402.01878."""
    s_BxK, psi_BxK, m_BxK = _masked_inputs(scores_BxK, labels_BxK, mask_BxK)
    # log(1 - sigma(s)) = log sigma(-s): stable for |s| large.
    nll_BxK = -(psi_BxK * jax.nn.log_sigmoid(s_BxK) + (1.0 - psi_BxK) * jax.nn.log_sigmoid(-s_BxK))
    return jnp.sum(m_BxK * nll_BxK, axis=-1)


def softmax_listnet(scores_BxK, labels_BxK, mask_BxK):
    """ListNet: cross-entropy of softmax(s) against psi / sum(psi), arXiv 2402.01878."""
    s_BxK, psi_BxK, m_BxK = _masked_inputs(scores_BxK, labels_BxK, mask_BxK)
    b, k = s_BxK.shape
    all_BxKxK = jnp.broadcast_to(m_BxK[:, None, :], (b, k, k))
    total_B = jnp.sum(psi_BxK, axis=-1)
    # A list whose labels are all 0 has no target distribution: its loss is 0.
    target_BxK = psi_BxK / jnp.where(total_B > 0, total_B, 1.0)[:, None]
    return jnp.sum(m_BxK * target_BxK * _neg_log_softmax(s_BxK, all_BxKxK), axis=-1)


def pair_logistic(scores_BxK, labels_BxK, mask_BxK):
    """Pairwise logistic sum log(1 + e^{-(s_i - s_j)}) (= DPO_BT), arXiv 2402.01878."""
    s_BxK, psi_BxK, m_BxK = _masked_inputs(scores_BxK, labels_BxK, mask_BxK)
    pairs_BxKxK = _pair_mask(psi_BxK, m_BxK)
    return jnp.sum(pairs_BxKxK * jax.nn.softplus(-_diff(s_BxK)), axis=(1, 2))


def pair_hinge(scores_BxK, labels_BxK, mask_BxK):
    """Pairwise hinge sum max(0, 1 - (s_i - s_j)) (= SLiC_norm), arXiv 2402.01878."""
    s_BxK, psi_BxK, m_BxK = _masked_inputs(scores_BxK, labels_BxK, mask_BxK)
    pairs_BxKxK = _pair_mask(psi_BxK, m_BxK)
    return jnp.sum(pairs_BxKxK * jax.nn.relu(1.0 - _diff(s_BxK)), axis=(1, 2))


def _after(keys_BxK, m_BxK):
    """A[b, k, j] = 1 where j is real and is k or follows k by descending key (ties by index)."""
    k = keys_BxK.shape[-1]
    idx_K = jnp.arange(k)
    key_k, key_j = keys_BxK[:, :, None], keys_BxK[:, None, :]
    later_KxK = idx_K[None, :] > idx_K[:, None]
    after_BxKxK = (key_j < key_k) | ((key_j == key_k) & later_KxK[None])
    own_KxK = jnp.eye(k, dtype=bool)
    return (after_BxKxK | own_KxK[None]) * m_BxK[:, None, :]


def list_mle(scores_BxK, labels_BxK, mask_BxK):
    """ListMLE: Plackett-Luce NLL of the order by label (= DPO_PL), arXiv 2402.01878."""
    s_BxK, psi_BxK, m_BxK = _masked_inputs(scores_BxK, labels_BxK, mask_BxK)
    # Each item's Plackett-Luce denominator runs over itself and every item ranked below it: no
    # sort or gather needed. Tied labels are ordered by item index (lower first), a fixed choice
    # the loss depends on; lists without label ties are unaffected.
    rest_BxKxK = _after(psi_BxK, m_BxK)
    return jnp.sum(m_BxK * _neg_log_softmax(s_BxK, rest_BxKxK), axis=-1)


def _ranks(scores_BxK, m_BxK):
    """1-based rank of each real item by descending score; score ties go to the lower index."""
    # Ties are exact when policy == reference (all scores 0, the first step). Breaking them by
    # index keeps the weights non-zero and deterministic, independent of sharding and
    # microbatching; TF-Ranking instead shuffles ties at random.
    k = scores_BxK.shape[-1]
    idx_K = jnp.arange(k)
    s_k, s_j = scores_BxK[:, :, None], scores_BxK[:, None, :]
    earlier_KxK = idx_K[None, :] < idx_K[:, None]
    ahead_BxKxK = (s_j > s_k) | ((s_j == s_k) & earlier_KxK[None])
    ranks_BxK = 1.0 + jnp.sum(ahead_BxKxK * m_BxK[:, None, :], axis=-1)
    # Padding gets rank 1 only to keep 1/D finite; its weights are masked out.
    return jnp.where(m_BxK > 0, ranks_BxK, 1.0)


def lambda_weights(scores_BxK, labels_BxK, mask_BxK, *, weighting: str = "lambda",
                   scale_by_list_size: bool = False):
    """LiPO-lambda weights Delta_ij = |G_i - G_j| |1/D(rho_i) - 1/D(rho_j)|, arXiv 2402.01878."""
    # G = 2^psi - 1, D(rho) = log2(1 + rho), rho the rank by the current scores. Delta is
    # symmetric, 0 where i or j is padding, and a constant of the loss (stop_gradient below).
    if weighting not in WEIGHTINGS:
        raise ValueError(f"lambda_weights: weighting must be one of {WEIGHTINGS}, got "
                         f"{weighting!r}")
    s_BxK, psi_BxK, m_BxK = _masked_inputs(scores_BxK, labels_BxK, mask_BxK)
    real_BxKxK = m_BxK[:, :, None] * m_BxK[:, None, :]
    gain_BxK = jnp.exp2(psi_BxK) - 1.0
    gain_BxKxK = jnp.abs(gain_BxK[:, :, None] - gain_BxK[:, None, :])
    inv_discount_BxK = 1.0 / jnp.log2(1.0 + _ranks(s_BxK, m_BxK))
    discount_BxKxK = jnp.abs(inv_discount_BxK[:, :, None] - inv_discount_BxK[:, None, :])
    if weighting in ("constant", "constant_gain"):
        gain_BxKxK = jnp.ones_like(gain_BxKxK)
    if weighting in ("constant", "constant_discount"):
        discount_BxKxK = jnp.ones_like(discount_BxKxK)
    delta_BxKxK = real_BxKxK * gain_BxKxK * discount_BxKxK
    if scale_by_list_size:
        # TF-Ranking multiplies by the list size so the loss keeps the pairwise loss's scale;
        # the paper's equation does not. We count real items only.
        delta_BxKxK = delta_BxKxK * jnp.sum(m_BxK, axis=-1)[:, None, None]
    # Ranks come from comparisons of scores: the weights are constants of the loss.
    return jax.lax.stop_gradient(delta_BxKxK)


def lipo_lambda(scores_BxK, labels_BxK, mask_BxK, *, weighting: str = "lambda",
                scale_by_list_size: bool = False):
    """LiPO-lambda: sum Delta_ij log(1 + e^{-(s_i - s_j)}), arXiv 2402.01878."""
    s_BxK, psi_BxK, m_BxK = _masked_inputs(scores_BxK, labels_BxK, mask_BxK)
    delta_BxKxK = lambda_weights(s_BxK, psi_BxK, m_BxK, weighting=weighting,
                                 scale_by_list_size=scale_by_list_size)
    pairs_BxKxK = _pair_mask(psi_BxK, m_BxK)
    return jnp.sum(pairs_BxKxK * delta_BxKxK * jax.nn.softplus(-_diff(s_BxK)), axis=(1, 2))


LOSSES = {
    "point_mse": point_mse,
    "point_sigmoid": point_sigmoid,
    "softmax": softmax_listnet,
    "pair_logistic": pair_logistic,
    "pair_hinge": pair_hinge,
    "list_mle": list_mle,
    "lipo_lambda": lipo_lambda,
}


# ----------------------------------------------------------------------------- binding

def _check_lists(batch, needed):
    missing = [key for key in needed if key not in batch]
    if missing:
        raise ValueError(f"listwise objective: batch lacks {missing}; it expects a 'lists' batch "
                         f"(tokens/input_mask/loss_mask [B,K,T], labels/list_mask [B,K])")
    tokens = batch["tokens"]
    if tokens.ndim != 3:
        raise ValueError(f"listwise objective: batch 'tokens' must be [B, K, T], got shape "
                         f"{tuple(tokens.shape)}")
    for key in needed[1:]:
        want = tokens.shape if key in ("input_mask", "loss_mask") else tokens.shape[:2]
        if tuple(batch[key].shape) != tuple(want):
            raise ValueError(f"listwise objective: batch {key!r} has shape "
                             f"{tuple(batch[key].shape)}, expected {tuple(want)} to match "
                             f"'tokens' {tuple(tokens.shape)}")


def _sequence_logp(model, batch, chunk_size):
    """S(y) per item [B, K] from one forward pass over the B*K responses."""
    b, k, t = batch["tokens"].shape
    flat = lambda x: jnp.reshape(x, (b * k, t))
    logp_NxT = logprobs.shifted_logprobs(model, flat(batch["tokens"]), flat(batch["input_mask"]),
                                         chunk_size=chunk_size)
    return logprobs.sequence_logprobs(logp_NxT, flat(batch["loss_mask"])).reshape(b, k)


def _reference_fields(reference, batch, *, chunk_size):
    """ref_logp [B, K]: the reference's S(y) of every item (no gradient)."""
    _check_lists(batch, ("tokens", "input_mask", "loss_mask"))
    return {"ref_logp": jax.lax.stop_gradient(_sequence_logp(reference, batch, chunk_size))}


def _ordered_accuracy(scores_BxK, order_BxK, m_BxK):
    """(pairs with order_i > order_j ranked s_i > s_j, all such pairs) among real items."""
    pairs_BxKxK = _pair_mask(order_BxK, m_BxK)
    correct_BxKxK = pairs_BxKxK * (_diff(scores_BxK) > 0)
    return base.ratio(jnp.sum(correct_BxKxK), jnp.sum(pairs_BxKxK))


def _metrics(scores_BxK, logp_BxK, batch):
    real_BxK = batch["list_mask"] > 0
    m_BxK = real_BxK.astype(jnp.float32)
    s_BxK = jnp.where(real_BxK, scores_BxK, 0.0)
    labels_BxK = jnp.where(real_BxK, batch["labels"].astype(jnp.float32), 0.0)
    # The top-labelled real item (first by index on ties); lists with no real item are skipped.
    best_B = jnp.argmax(jnp.where(real_BxK, labels_BxK, -jnp.inf), axis=-1)
    has_real_B = jnp.any(real_BxK, axis=-1).astype(jnp.float32)
    best_score_B = jnp.take_along_axis(s_BxK, best_B[:, None], axis=-1)[:, 0]
    n_real = jnp.sum(m_BxK)
    metrics = {
        "pair_accuracy": _ordered_accuracy(s_BxK, labels_BxK, m_BxK),
        "score_best": base.ratio(jnp.sum(has_real_B * best_score_B), jnp.sum(has_real_B)),
        "score_mean": base.ratio(jnp.sum(m_BxK * s_BxK), n_real),
        "logp_mean": base.ratio(jnp.sum(jnp.where(real_BxK, logp_BxK, 0.0)), n_real),
    }
    if "gold" in batch:
        gold_BxK = jnp.where(real_BxK, batch["gold"].astype(jnp.float32), 0.0)
        metrics["gold_pair_accuracy"] = _ordered_accuracy(s_BxK, gold_BxK, m_BxK)
    return metrics


def _loss(model, batch, obj_state, *, rng, loss_fn, beta, chunk_size):
    del obj_state, rng
    _check_lists(batch, ("tokens", "input_mask", "loss_mask", "labels", "list_mask", "ref_logp"))
    logp_BxK = _sequence_logp(model, batch, chunk_size)
    scores_BxK = beta * (logp_BxK - batch["ref_logp"].astype(jnp.float32))
    loss_B = loss_fn(scores_BxK, batch["labels"], batch["list_mask"])
    n_lists = jnp.asarray(scores_BxK.shape[0], jnp.float32)
    return base.LossOut(jnp.sum(loss_B), n_lists,
                        _metrics(jax.lax.stop_gradient(scores_BxK),
                                 jax.lax.stop_gradient(logp_BxK), batch))


@dataclasses.dataclass(frozen=True)
class ListwiseSettings(Settings):
    beta: float = setting(0.05, gt=0)


@dataclasses.dataclass(frozen=True)
class LipoLambdaSettings(ListwiseSettings):
    weighting: str = setting("lambda", choices=WEIGHTINGS)
    scale_by_list_size: bool = setting(False)


def _make(name, config, *, chunk_size: int = 0) -> base.Objective:
    config = SETTINGS[name].of(config)
    beta = config.beta
    loss_fn = LOSSES[name]
    if name == "lipo_lambda":
        loss_fn = functools.partial(loss_fn, weighting=config.weighting,
                                    scale_by_list_size=bool(config.scale_by_list_size))
    return base.make(
        name, "lists",
        loss=functools.partial(_loss, loss_fn=loss_fn, beta=beta, chunk_size=chunk_size),
        reference_fields=functools.partial(_reference_fields, chunk_size=chunk_size))


OBJECTIVES = {name: functools.partial(_make, name) for name in LOSSES}
SETTINGS = {name: LipoLambdaSettings if name == "lipo_lambda" else ListwiseSettings
            for name in LOSSES}
