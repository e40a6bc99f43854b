"""Which training pairs of a reward model move a target loss: DataInf (align/analysis/datainf.py)
on the gradients of the model's last blocks.

Dimension letters: N training pairs, M target pairs, T tokens, L layers.

A pair's loss is the Bradley–Terry loss of the reward model, ℓ = −log σ(r(chosen) − r(rejected)),
and the target loss is its mean over target pairs (a trust vertical's pairs, say: "the
completion without the leaked secret ≻ the one with it"). Only the selected parameters count:

- "head": the scalar head's kernel (its bias cancels in every margin, so has no influence);
- "last_layer" (the default): the head and the last transformer layer;
- "last_layers:k": the head and the last k layers.

Gradients are taken with respect to those parameters alone (the rest is held fixed), so a chunk
of per-example gradients costs memory for the selected blocks only. Each parameter array is a
block of DataInf's closed form. Pairs are encoded as align.analysis.reward_models encodes them
for scoring (the run's training encoding) and padded to one length; `mesh` shards each chunk's
pairs over the mesh's batch axes.

I(k) > 0: up-weighting pair k raises the target loss, so removing it lowers the target loss by
about I(k)/N (datainf's sign convention).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from align.analysis import datainf
from align.models import specs
from align.models.heads import last_token_value
from align.train import runs
from align.train import state as state_lib


def split_params(params, select: str):
    """(selected, rest) parameter trees of a ScalarModel for `select` (module docstring)."""
    if select == "head":
        k = 0
    elif select == "last_layer":
        k = 1
    elif select.startswith("last_layers:") and select.split(":", 1)[1].isdigit():
        k = int(select.split(":", 1)[1])
    else:
        raise ValueError(f"select must be 'head', 'last_layer' or 'last_layers:k', got {select!r}")
    backbone = params["backbone"]
    layers = backbone["layers"]
    if not isinstance(layers, dict) or not all(isinstance(i, int) for i in layers):
        raise ValueError("attribution needs per-layer parameters (model.scan_layers=False)")
    keys = sorted(layers)
    if k > len(keys):
        raise ValueError(f"select={select!r}: the model has only {len(keys)} layers")
    chosen = keys[len(keys) - k:]
    # The head's bias cancels in every margin r(chosen) − r(rejected): it has no gradient.
    selected = {"head": {"kernel": params["head"]["kernel"]},
                "layers": {i: layers[i] for i in chosen}}
    return selected, chosen


def merge(params, selected):
    """`params` with the selected blocks replaced."""
    layers = dict(params["backbone"]["layers"])
    layers.update(selected["layers"])
    return {**params, "head": {**params["head"], **selected["head"]},
            "backbone": {**params["backbone"], "layers": layers}}


def pair_loss_fn(model_def, params):
    """loss(selected, example) for one pair: the reward model's Bradley–Terry loss."""

    def reward(p, tokens_T, mask_T):
        model = state_lib.bind(model_def, p)
        values = model(tokens_T[None], input_mask_BxT=mask_T[None])
        return last_token_value(values, mask_T[None])[0]

    def loss(selected, ex):
        p = merge(params, selected)
        margin = (reward(p, ex["chosen_tokens"], ex["chosen_mask"])
                  - reward(p, ex["rejected_tokens"], ex["rejected_mask"]))
        return jax.nn.softplus(-margin)

    return loss


def encode_pairs(model, prompts: Sequence[str], chosen: Sequence[str],
                 rejected: Sequence[str], length: int) -> dict:
    """Pairs as padded token arrays [N, T] for a RunRewardModel's encoding."""
    n = len(prompts)
    if not (len(chosen) == len(rejected) == n) or n == 0:
        raise ValueError(f"encode_pairs: {n} prompts, {len(chosen)} chosen, {len(rejected)} "
                         "rejected (need the same number, at least one)")
    out = {}
    for side, texts in (("chosen", chosen), ("rejected", rejected)):
        tokens = np.full((n, length), model.pad_id, np.int32)
        mask = np.zeros((n, length), np.int32)
        for i, (p, c) in enumerate(zip(prompts, texts)):
            ids = model.token_ids(i, p, c)
            if len(ids) > length:
                raise ValueError(f"pair {i}: {len(ids)} tokens exceed the length {length}")
            tokens[i, :len(ids)], mask[i, :len(ids)] = ids, 1
        out[f"{side}_tokens"], out[f"{side}_mask"] = tokens, mask
    return out


def pair_influence(model, train: dict, target: dict, *, select: str = "last_layer",
                   lambda_scale: float = 0.1, chunk_size: int = 16, mesh=None, rules=None,
                   progress: bool | None = None) -> np.ndarray:
    """DataInf influence [N] of each training pair on the mean target-pair loss.

    model: a RunRewardModel (align.analysis.reward_models.from_run); train / target: dicts of
    "prompt", "chosen", "rejected" text lists.
    """
    run = runs.read_run(model.workdir)
    model_def = state_lib.describe(specs.scalar_model().make_fn(run.model_cfg))
    params = jax.tree.map(jnp.asarray, model.params)
    selected, _ = split_params(params, select)
    longest = max(len(model.token_ids(i, p, c))
                  for d in (train, target) for k in ("chosen", "rejected")
                  for i, (p, c) in enumerate(zip(d["prompt"], d[k])))
    length = min(model.max_len, 1 << max(3, (longest - 1).bit_length()))
    enc = lambda d: encode_pairs(model, d["prompt"], d["chosen"], d["rejected"], length)
    return datainf.influence(pair_loss_fn(model_def, params), selected, enc(train), enc(target),
                             lambda_scale=lambda_scale, chunk_size=chunk_size, mesh=mesh,
                             rules=rules, progress=progress)
