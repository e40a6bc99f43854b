"""Optimizer: AdamW with linear warmup, cosine decay and global-norm clipping."""

from __future__ import annotations

import jax
import optax


def schedule(cfg_optim, total_steps: int) -> optax.Schedule:
    """Linear warmup to `lr`, then cosine decay to `lr * min_lr_ratio` at `decay_steps`."""
    decay = cfg_optim.decay_steps or total_steps
    warmup = min(cfg_optim.warmup_steps, max(decay - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg_optim.lr, warmup_steps=warmup,
        decay_steps=max(decay, warmup + 1), end_value=cfg_optim.lr * cfg_optim.min_lr_ratio)


def make(cfg_optim, total_steps: int, *, decay_mask=None
         ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer and its learning-rate schedule (gradients arrive already averaged).

    `decay_mask`: a pytree of bools like the params (see `decay_mask_from_names`); by default
    every array of rank >= 2 is decayed.
    """
    lr_fn = schedule(cfg_optim, total_steps)
    parts = []
    if cfg_optim.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(cfg_optim.grad_clip))
    parts.append(optax.adamw(lr_fn, b1=cfg_optim.b1, b2=cfg_optim.b2, eps=cfg_optim.eps,
                             weight_decay=cfg_optim.weight_decay,
                             mask=decay_mask if decay_mask is not None else _rank_mask))
    return optax.chain(*parts), lr_fn


def _rank_mask(params):
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def decay_mask_from_names(names_tree):
    """Decay weight matrices only: two or more logical axes besides the stacked "layers" axis,
    and not a bias (Qwen2's q/k/v biases are [heads, head_dim])."""

    def decayed(path, names):
        last = str(getattr(path[-1], "key", path[-1])) if path else ""
        return sum(n != "layers" for n in names) >= 2 and not last.endswith("bias")

    return jax.tree_util.tree_map_with_path(decayed, names_tree,
                                            is_leaf=lambda x: isinstance(x, tuple))
