"""Config fragments that experiment configs compose: model sizes, data sources, objectives."""

from __future__ import annotations

import dataclasses

from align import config as config_lib
from align import objectives  # noqa: F401  (registers every objective's settings)

# name -> (d_model, n_layers, n_heads, n_kv_heads, d_ff)
MODEL_SIZES = {
    "tiny": (64, 2, 4, 2, 192),  # ~0.1M parameters
    "small": (128, 4, 4, 2, 384),  # ~0.8M
    "10m": (320, 8, 8, 4, 896),  # ~10M
    "50m": (512, 12, 8, 4, 1536),  # ~40M + embeddings
    "1b": (2048, 16, 16, 8, 5632),  # ~0.9B with a 32k vocabulary
    "7b": (4096, 32, 32, 32, 11008),  # LLaMA-7B shape
}


def base():
    """Every known key with its default (the schema), ready to be edited."""
    return config_lib.default_config()


def model(cfg, size: str, **overrides):
    """Sets the model section to a named size."""
    if size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {size!r}; valid: {', '.join(MODEL_SIZES)}")
    d, n_layers, n_heads, n_kv, d_ff = MODEL_SIZES[size]
    cfg.model.update(d_model=d, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv, d_ff=d_ff)
    cfg.model.update(**overrides)
    return cfg


def reviews_data(cfg, **overrides):
    """The embedded synthetic world of product reviews (no downloads)."""
    cfg.data.source = "reviews"
    cfg.data.update(**overrides)
    return cfg


def objective(cfg, name: str, **settings):
    """Names the objective and sets its own keys."""
    cfg.objective = config_lib.objective_config(name, **settings)
    return cfg


def schedule(cfg, *, steps: int, lr: float, warmup: int | None = None):
    """Training length with evaluation twice and checkpoints four times per run."""
    cfg.train.steps = steps
    cfg.train.eval_every = max(steps // 2, 1)
    cfg.train.checkpoint_every = max(steps // 4, 1)
    cfg.optim.update(lr=lr, warmup_steps=min(50, steps // 5) if warmup is None else warmup)
    return cfg


def start_from(cfg, workdir: str, config: str = "", overrides: str = ""):
    """Start from the run in `workdir` ("{workdir}/x" is inside this run's), running `config`
    there first if that run has not finished."""
    cfg.init.update(workdir=workdir, config=config, overrides=overrides)
    return cfg


def pretrained(cfg, path: str):
    """Start from a Hugging Face checkpoint directory; the model section becomes its
    architecture (read from its config.json, so the written config says what runs)."""
    from align.models import hf_checkpoint
    if not path:
        raise ValueError("checkpoint=PATH is required: a Hugging Face checkpoint directory "
                         "(config.json, *.safetensors, tokenizer.json or tokenizer.model)")
    _, arch = hf_checkpoint.read_hf_config(path)
    for key, value in dataclasses.asdict(arch).items():
        if key in cfg.model and key not in ("dtype", "remat", "scan_layers"):
            cfg.model[key] = value
    cfg.init.pretrained = path
    return cfg
