"""KTO (Ethayarajh et al., arXiv 2402.01306) as an objective defined outside align.

A config names it `objective.name=kto:kto` with this directory on PYTHONPATH (or, in a package
of your own, `my_pkg.my_losses:kto`). docs/objectives.md walks through it.

Dimension letters: B rows (completions), T tokens.

Each row is a completion y of a prompt x with a label: desirable (1) or undesirable (0). With
r(x, y) = log π_θ(y|x) − log π_ref(y|x) and z₀ an estimate of KL(π_θ ‖ π_ref),

    v(x, y) = λ_D σ(β (r − z₀))   if y is desirable,
              λ_U σ(β (z₀ − r))   if y is undesirable,
    loss    = mean over rows of λ_y − v(x, y).

z₀ is a batch-level statistic of the CURRENT policy, outside the gradient: here the batch mean
of r over all its rows, clamped at 0 (the paper estimates it from mismatched pairs; this
simpler estimate keeps the example short). Because it depends on the policy it belongs in
`prepare`, which runs every step; the reference's log-probs belong in `reference_fields`, which
`reference.mode=cached` computes once. KTO reads "unpaired" rows; on preference pairs
(data="pairs", the default here) each pair gives a desirable row (chosen) and an undesirable
one (rejected), as the paper does with paired data.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from align import logprobs
from align.data import pipeline
from align.objectives import base
from align.settings import Settings, setting


@dataclasses.dataclass(frozen=True)
class KtoSettings(Settings):
    beta: float = setting(0.1, gt=0)
    desirable_weight: float = setting(1.0, gt=0)  # λ_D
    undesirable_weight: float = setting(1.0, gt=0)  # λ_U
    data: str = setting("pairs", choices=("pairs", "unpaired"))


# ---------------------------------------------------------------- a data kind of its own


def unpaired_example(index, record, tokenizer, *, max_len, max_prompt_len, pad_id=None,
                     joint=None, stats=None):
    """One record {prompt, completion, label (0 or 1)} -> tokens/input_mask/loss_mask [T],
    label, example_id."""
    label = record.get("label") if isinstance(record, dict) else None
    if label not in (0, 1):
        raise ValueError(f"record {index}: field 'label' must be 0 or 1, got {label!r}")
    prefix, (completion,), cut = pipeline.encode_record(
        tokenizer, index, pipeline.text_field(record, "prompt", index),
        [("completion", record.get("completion"))], max_prompt_len=max_prompt_len, joint=joint)
    out = pipeline.pack_sequence(prefix, completion.ids, max_len=max_len,
                                 pad_id=tokenizer.pad_id if pad_id is None else pad_id)
    out["label"] = np.int32(label)
    out["example_id"] = np.int32(index)
    pipeline.tally(stats, prefix, [completion], cut, max_len)
    return out


if "unpaired" not in pipeline.KINDS:
    pipeline.register_kind("unpaired", unpaired_example,
                           fields="tokens/input_mask/loss_mask [B,T], label [B]")


# ---------------------------------------------------------------- the objective


def rows(batch):
    """(tokens, input_mask, loss_mask [B', T], desirable [B']) from either layout."""
    if "label" in batch:
        return (batch["tokens"], batch["input_mask"], batch["loss_mask"],
                batch["label"].astype(jnp.float32))
    both = lambda k: jnp.concatenate([batch[f"chosen_{k}"], batch[f"rejected_{k}"]], 0)
    b = batch["chosen_tokens"].shape[0]
    desirable = jnp.concatenate([jnp.ones((b,), jnp.float32), jnp.zeros((b,), jnp.float32)])
    return both("tokens"), both("input_mask"), both("loss_mask"), desirable


def sequence_logp(model, batch, chunk_size):
    tokens, input_mask, loss_mask, _ = rows(batch)
    logp = logprobs.shifted_logprobs(model, tokens, input_mask, chunk_size=chunk_size)
    return logprobs.sequence_logprobs(logp, loss_mask)


# Batch fields are split along their leading dim (devices, microbatches), so a per-row value
# of a pairs batch is stored as two [B] fields, one per side.
def as_fields(batch, name, x_R):
    if "label" in batch:
        return {name: x_R}
    b = batch["chosen_tokens"].shape[0]
    return {f"{name}_chosen": x_R[:b], f"{name}_rejected": x_R[b:]}


def from_fields(batch, name):
    if "label" in batch:
        return batch[name]
    return jnp.concatenate([batch[f"{name}_chosen"], batch[f"{name}_rejected"]], 0)


def reference_fields(reference, batch, *, chunk_size):
    """S_ref(y) per row: a function of the reference alone (what the cache may store)."""
    return as_fields(batch, "kto_ref_logp",
                     jax.lax.stop_gradient(sequence_logp(reference, batch, chunk_size)))


def prepare(policy, batch, obj_state, *, rng, chunk_size):
    """z₀ from the current policy over the whole batch (every row carries it)."""
    del obj_state, rng
    ratio = sequence_logp(policy, batch, chunk_size) - from_fields(batch, "kto_ref_logp")
    z0 = jnp.maximum(jnp.mean(ratio), 0.0)
    return {**batch, **as_fields(batch, "kto_z0", jnp.broadcast_to(z0, ratio.shape))}, {"z0": z0}


def kto_loss(r, z0, desirable, *, beta, desirable_weight, undesirable_weight):
    """λ_y − v(x, y) per row (r: policy/reference log-ratio, z0: the KL estimate)."""
    lam = jnp.where(desirable > 0, desirable_weight, undesirable_weight)
    v = jnp.where(desirable > 0, jax.nn.sigmoid(beta * (r - z0)),
                  jax.nn.sigmoid(beta * (z0 - r)))
    return lam - lam * v


def loss(model, batch, obj_state, *, rng, s, chunk_size):
    del obj_state, rng
    r = sequence_logp(model, batch, chunk_size) - from_fields(batch, "kto_ref_logp")
    desirable = rows(batch)[3]
    z0 = jax.lax.stop_gradient(from_fields(batch, "kto_z0"))
    loss_R = kto_loss(r, z0, desirable, beta=s.beta,
                      desirable_weight=s.desirable_weight,
                      undesirable_weight=s.undesirable_weight)
    n = jnp.asarray(r.shape[0], jnp.float32)
    n_good = jnp.sum(desirable)
    metrics = {"reward_desirable": base.ratio(jnp.sum(s.beta * r * desirable), n_good),
               "reward_undesirable": base.ratio(jnp.sum(s.beta * r * (1 - desirable)), n - n_good)}
    return base.LossOut(jnp.sum(loss_R), n, metrics)


def make_kto(cfg, *, chunk_size: int = 0) -> base.Objective:
    s = KtoSettings.of(cfg)
    return base.make(
        "kto", s.data,
        loss=functools.partial(loss, s=s, chunk_size=chunk_size),
        reference_fields=functools.partial(reference_fields, chunk_size=chunk_size),
        prepare=functools.partial(prepare, chunk_size=chunk_size), settings=s)


OBJECTIVES = {"kto": make_kto}
SETTINGS = {"kto": KtoSettings}
