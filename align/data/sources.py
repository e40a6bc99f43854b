"""Where a run's data comes from: the synthetic world (built as TFDS datasets), a public
preference dataset (HH-RLHF, TL;DR, UltraFeedback, built from its original files), or a
prepared TFDS dataset.

Process 0 trains the tokenizer and builds the datasets; the other processes wait for it.
A public source serves every kind (sft, prompts, pairs, lists) from its own records
(align/data/public.py) and ignores the world's sizes (num_train, num_test, num_prompts);
without data.tokenizer_path, a SentencePiece tokenizer is trained on its train split.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import jax

from align import errors
from align import mesh as mesh_lib
from align.data import builders, hf_tokenizer, pipeline, public
from align.data.chat import get_template
from align.summary import mean_and_se
from align.data.tokenizer import Tokenizer, get_or_train_tokenizer
from align.tasks.reviews import ReviewWorld, WorldConfig


# The kinds the synthetic world and the public sources build; a prepared TFDS dataset also
# serves a kind added with pipeline.register_kind.
BUILT_KINDS = ("sft", "prompts", "pairs", "lists")


class RunData(NamedTuple):
    tokenizer: Tokenizer
    world: Any  # the synthetic world (gold reward), or None for external data
    sources: dict  # kind -> split -> random-access source (kinds: pipeline.KINDS)

    def __getattr__(self, kind):
        # data.sft["test"], data.pairs["train"], ...: {} for a kind the run does not use.
        if kind in pipeline.KINDS:
            return self.sources.get(kind, {})
        raise AttributeError(kind)


def world_settings(cfg) -> tuple[dict, dict]:
    """The world and labeler settings of a config's `task` section."""
    world = {"seed": int(cfg.task.seed)}
    if int(cfg.task.min_sentences):  # only when set, so default worlds keep their dataset ids
        world["min_sentences"] = int(cfg.task.min_sentences)
    if float(cfg.task.filler_penalty) != WorldConfig.filler_penalty:
        world["filler_penalty"] = float(cfg.task.filler_penalty)
    labeler = {"temperature": float(cfg.task.temperature),
               "length_bias": float(cfg.task.length_bias),
               "filler_bias": float(cfg.task.filler_bias),
               "intransitive": float(cfg.task.intransitive),
               "seed": int(cfg.task.seed)}
    return world, labeler


def make_world(cfg):
    world, _ = world_settings(cfg)
    return ReviewWorld(WorldConfig(**world))


def load_tokenizer(path: str, joint: bool = False):
    """A SentencePiece `.model` or a Hugging Face `tokenizer.json` (or a directory holding one,
    e.g. a pretrained checkpoint's), with joint prompt + completion encoding on or off."""
    if path.endswith(".model"):
        return Tokenizer.load(path, joint=joint)
    tokenizer = hf_tokenizer.load_tokenizer(path)
    tokenizer.joint = joint
    return tokenizer


def _trainable(path: str) -> bool:
    """Whether a missing tokenizer at `path` is ours to train (a SentencePiece file path)."""
    return not (os.path.isdir(path) or path.endswith(".json"))


def joint_encoding(cfg) -> bool:
    """Whether prompt + completion are tokenized as one text (data.tokenize; see pipeline.py).

    "auto" keeps separate encoding for the synthetic world and prepared TFDS data (the
    world's completions carry no leading space, so joint encoding would change all of its
    tokens and its published results), and uses joint encoding for public sources.
    """
    if cfg.data.tokenize == "auto":
        return cfg.data.source in public.SOURCES
    return cfg.data.tokenize == "joint"


def _texts(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (bytes, str)):
        value = [value]
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in value]


def _corpus(sources: dict, limit: int) -> list[str]:
    """Prompt and completion texts of the first `limit` records of a train split."""
    lines = []
    for i in range(min(limit, len(sources["train"]))):
        record = sources["train"][i]
        for key in ("prompt", "completion", "chosen", "rejected", "completions"):
            lines += _texts(record.get(key))
    return lines


def _prepare_public(cfg, kinds, ddir: str, tok_path: str, given_tokenizer: bool) -> "RunData":
    d = cfg.data
    try:
        get_template(d.template)
    except ValueError as e:
        raise errors.ConfigError(f"config key 'data.template': {e}", key="data.template") from None
    primary = jax.process_index() == 0
    build = lambda kind: public.build_public(
        d.source, kind, ddir, manual_dir=d.manual_dir, subsets=d.subsets, template=d.template,
        bad_rows=d.bad_rows, verbose=primary)
    if primary:
        os.makedirs(ddir, exist_ok=True)
        built = {kind: build(kind) for kind in kinds}
        if not given_tokenizer:
            corpus_kind = next(k for k in ("sft", "pairs", "lists", "prompts") if k in built)
            limit = min(20000, max(2000, int(d.num_train)))
            # Public text has more distinct characters than a small vocabulary holds: the
            # rarest few map to unk instead of failing the training.
            get_or_train_tokenizer(
                tok_path, lambda: _corpus(built[corpus_kind], limit), vocab_size=int(d.vocab_size),
                model_type=d.tokenizer_type, character_coverage=0.9995)
    mesh_lib.barrier("align-data")
    return RunData(load_tokenizer(tok_path, joint_encoding(cfg)), None,
                   {kind: build(kind) for kind in kinds})


def prepare(cfg, workdir: str, *, kinds=("sft", "prompts"), data_dir: str = "",
            tokenizer_path: str = "") -> RunData:
    """Tokenizer and sources of the given kinds, built once (by process 0) and reused on resume.

    data_dir / tokenizer_path default to the config's, then to `<workdir>/data`.
    """
    ddir = data_dir or cfg.data.data_dir or os.path.join(workdir, "data")
    tok_path = tokenizer_path or cfg.data.tokenizer_path or os.path.join(ddir, "tokenizer.model")
    unknown = sorted(set(kinds) - set(pipeline.KINDS))
    if unknown:
        raise ValueError(f"unknown data kinds {unknown}; valid: {tuple(pipeline.KINDS)}")
    unbuilt = sorted(set(kinds) - set(BUILT_KINDS))
    if unbuilt and (cfg.data.source == "reviews" or cfg.data.source in public.SOURCES):
        raise errors.ConfigError(
            f"data.source={cfg.data.source!r} builds the data kinds {BUILT_KINDS}, not {unbuilt}; "
            "a prepared dataset (data.source='tfds') serves those", key="data.source")
    if cfg.data.source in public.SOURCES:
        return _prepare_public(cfg, kinds, ddir, tok_path,
                               bool(tokenizer_path or cfg.data.tokenizer_path))
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
            if _trainable(tok_path):
                get_or_train_tokenizer(
                    tok_path,
                    lambda: world.corpus(min(20000, max(2000, int(cfg.data.num_train)))),
                    vocab_size=int(cfg.data.vocab_size), model_type=cfg.data.tokenizer_type)
            for kind in kinds:
                build(kind)
        mesh_lib.barrier("align-data")
        return RunData(load_tokenizer(tok_path, joint_encoding(cfg)), world,
                       {kind: build(kind) for kind in kinds})
    if not cfg.data.tfds_name:
        raise errors.ConfigError(
            "data.source='tfds' needs data.tfds_name (a prepared array_record dataset)",
            key="data.tfds_name")
    if not (tokenizer_path or cfg.data.tokenizer_path):
        raise errors.ConfigError("data.source='tfds' needs data.tokenizer_path (a SentencePiece "
                                 ".model or a tokenizer.json)", key="data.tokenizer_path")
    tokenizer = load_tokenizer(tok_path, joint_encoding(cfg))
    # An external dataset serves the objective's own kind; prompts for sampling come from it too.
    main = {s: builders.tfds_source(cfg.data.tfds_name, s, ddir) for s in ("train", "test")}
    return RunData(tokenizer, None, {k: main for k in kinds if k != "prompts"})


def demo_gold_reward(source) -> tuple[float, float]:
    """Mean gold reward of the demonstrations in a source and its standard error (NaN if none)."""
    n = len(source)
    if n == 0 or "gold_reward" not in source[0]:
        return float("nan"), float("nan")
    return mean_and_se([float(source[i]["gold_reward"]) for i in range(n)])
