"""Where a run's data comes from: the synthetic world (built as TFDS datasets) or a prepared TFDS dataset.

Process 0 trains the tokenizer and builds the datasets; the other processes wait for it.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import jax
import numpy as np

from align.data import builders
from align.data.tokenizer import Tokenizer, get_or_train_tokenizer


class RunData(NamedTuple):
    tokenizer: Tokenizer
    world: Any  # the synthetic world (gold reward), or None for external data
    sft: dict  # split -> random-access source
    prompts: dict  # split -> random-access source


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def world_settings(cfg) -> tuple[dict, dict]:
    """The world and labeler settings of a config's `task` section."""
    world = {"seed": int(cfg.task.seed)}
    labeler = {"temperature": float(cfg.task.temperature),
               "length_bias": float(cfg.task.length_bias),
               "filler_bias": float(cfg.task.filler_bias),
               "intransitive": float(cfg.task.intransitive),
               "seed": int(cfg.task.seed)}
    return world, labeler


def make_world(cfg):
    from align.tasks.reviews import ReviewWorld, WorldConfig
    world, _ = world_settings(cfg)
    return ReviewWorld(WorldConfig(**world))


def data_dir(cfg, workdir: str) -> str:
    return cfg.data.data_dir or os.path.join(workdir, "data")


def prepare(cfg, workdir: str) -> RunData:
    """Tokenizer and sources for a run, built once and reused on resume."""
    ddir = data_dir(cfg, workdir)
    primary = jax.process_index() == 0
    if cfg.data.source == "reviews":
        world = make_world(cfg)
        world_s, labeler_s = world_settings(cfg)
        sizes = {"train": int(cfg.data.num_train), "test": int(cfg.data.num_test)}
        prompt_sizes = {"train": int(cfg.data.num_prompts), "test": int(cfg.data.num_test)}
        tok_path = cfg.data.tokenizer_path or os.path.join(ddir, "tokenizer.model")
        if primary:
            os.makedirs(ddir, exist_ok=True)
            get_or_train_tokenizer(
                tok_path, lambda: world.corpus(min(20000, max(2000, sizes["train"]))),
                vocab_size=int(cfg.data.vocab_size), model_type=cfg.data.tokenizer_type)
            builders.build_reviews("sft", ddir, world=world_s, labeler=labeler_s, sizes=sizes)
            builders.build_reviews("prompts", ddir, world=world_s, labeler=labeler_s,
                                   sizes=prompt_sizes)
        _barrier("align-data")
        tokenizer = Tokenizer.load(tok_path)
        sft = builders.build_reviews("sft", ddir, world=world_s, labeler=labeler_s, sizes=sizes)
        prompts = builders.build_reviews("prompts", ddir, world=world_s, labeler=labeler_s,
                                         sizes=prompt_sizes)
        return RunData(tokenizer, world, sft, prompts)
    if not cfg.data.tfds_name:
        raise ValueError("data.source='tfds' needs data.tfds_name (a prepared array_record dataset)")
    if not cfg.data.tokenizer_path:
        raise ValueError("data.source='tfds' needs data.tokenizer_path (a SentencePiece .model)")
    tokenizer = Tokenizer.load(cfg.data.tokenizer_path)
    sft = {s: builders.tfds_source(cfg.data.tfds_name, s, ddir) for s in ("train", "test")}
    return RunData(tokenizer, None, sft, {})


def demo_gold_reward(source) -> tuple[float, float]:
    """Mean gold reward of the demonstrations in a source and its standard error (NaN if none)."""
    n = len(source)
    if n == 0 or "gold_reward" not in source[0]:
        return float("nan"), float("nan")
    gold = np.asarray([float(source[i]["gold_reward"]) for i in range(n)])
    return float(gold.mean()), float(gold.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
