"""Where a run's data comes from: the synthetic world (built as TFDS datasets) or a prepared TFDS dataset.

Process 0 trains the tokenizer and builds the datasets; the other processes wait for it.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import jax

from align import mesh as mesh_lib
from align.data import builders
from align.data.tokenizer import Tokenizer, get_or_train_tokenizer


KINDS = ("sft", "prompts", "pairs", "lists")


class RunData(NamedTuple):
    tokenizer: Tokenizer
    world: Any  # the synthetic world (gold reward), or None for external data
    sources: dict  # kind -> split -> random-access source (kinds: KINDS)

    def __getattr__(self, kind):
        # data.sft["test"], data.pairs["train"], ...: {} for a kind the run does not use.
        if kind in KINDS:
            return self.sources.get(kind, {})
        raise AttributeError(kind)


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


def prepare(cfg, workdir: str, *, kinds=("sft", "prompts"), data_dir: str = "",
            tokenizer_path: str = "") -> RunData:
    """Tokenizer and sources of the given kinds, built once (by process 0) and reused on resume.

    data_dir / tokenizer_path default to the config's, then to `<workdir>/data`.
    """
    ddir = data_dir or cfg.data.data_dir or os.path.join(workdir, "data")
    tok_path = tokenizer_path or cfg.data.tokenizer_path or os.path.join(ddir, "tokenizer.model")
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown data kinds {unknown}; valid: {KINDS}")
    if cfg.data.source == "reviews":
        world = make_world(cfg)
        world_s, labeler_s = world_settings(cfg)
        sizes = {
            "sft": {"train": int(cfg.data.num_train), "test": int(cfg.data.num_test)},
            "prompts": {"train": int(cfg.data.num_prompts), "test": int(cfg.data.num_test)},
            "pairs": {"train": int(cfg.data.num_train), "test": int(cfg.data.num_test)},
            "lists": {"train": int(cfg.data.num_train), "test": int(cfg.data.num_test),
                      "k": int(cfg.data.list_size)},
        }
        build = lambda kind: builders.build_reviews(kind, ddir, world=world_s, labeler=labeler_s,
                                                    sizes=sizes[kind])
        if jax.process_index() == 0:
            os.makedirs(ddir, exist_ok=True)
            get_or_train_tokenizer(
                tok_path, lambda: world.corpus(min(20000, max(2000, int(cfg.data.num_train)))),
                vocab_size=int(cfg.data.vocab_size), model_type=cfg.data.tokenizer_type)
            for kind in kinds:
                build(kind)
        mesh_lib.barrier("align-data")
        return RunData(Tokenizer.load(tok_path), world, {kind: build(kind) for kind in kinds})
    if not cfg.data.tfds_name:
        raise ValueError("data.source='tfds' needs data.tfds_name (a prepared array_record dataset)")
    if not (tokenizer_path or cfg.data.tokenizer_path):
        raise ValueError("data.source='tfds' needs data.tokenizer_path (a SentencePiece .model)")
    tokenizer = Tokenizer.load(tok_path)
    # An external dataset serves the objective's own kind; prompts for sampling come from it too.
    main = {s: builders.tfds_source(cfg.data.tfds_name, s, ddir) for s in ("train", "test")}
    return RunData(tokenizer, None, {k: main for k in kinds if k != "prompts"})


def demo_gold_reward(source) -> tuple[float, float]:
    """Mean gold reward of the demonstrations in a source and its standard error (NaN if none)."""
    n = len(source)
    if n == 0 or "gold_reward" not in source[0]:
        return float("nan"), float("nan")
    from align.evaluate.policy import mean_and_se
    return mean_and_se([float(source[i]["gold_reward"]) for i in range(n)])
