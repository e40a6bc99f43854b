"""The synthetic review world as TFDS builders (array_record), and readers of prepared TFDS data.

Dimension letters: K responses per prompt.

A builder config is named by a hash of exactly the settings its data depends on (world
settings, labeler settings for pairs and lists, split sizes), so different settings never
share a directory and equal settings reuse a finished build. TFDS writes into an
`incomplete.*` directory and renames it when done: a killed build leaves no dataset and
the next call builds again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
from typing import Any, Iterator, Mapping

import numpy as np
import tensorflow_datasets as tfds

from align import errors
from align.tasks.labelers import Labeler, LabelerConfig
from align.tasks.reviews import ReviewWorld, WorldConfig

# Bump when what the builders write changes (fields, record order, generator code),
# so old builds are not mistaken for new ones.
DATA_FORMAT = 1
KINDS = ("sft", "prompts", "pairs", "lists")
SPLITS = ("train", "test")


@dataclasses.dataclass(eq=False)
class ReviewsConfig(tfds.core.BuilderConfig):
    """A builder config carrying world / labeler settings and split sizes."""

    world: dict = dataclasses.field(default_factory=dict)
    labeler: dict = dataclasses.field(default_factory=dict)
    sizes: dict = dataclasses.field(default_factory=dict)


def _tuples(value: Any) -> Any:
    # JSON and ml_collections give lists; the frozen task configs expect tuples.
    if isinstance(value, (list, tuple)):
        return tuple(_tuples(v) for v in value)
    return value


def _plain(value: Any) -> Any:
    """Settings as plain JSON types (ConfigDicts and tuples included)."""
    if isinstance(value, Mapping) or hasattr(value, "to_dict"):
        items = value.to_dict().items() if hasattr(value, "to_dict") else value.items()
        return {str(k): _plain(v) for k, v in items}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(f"setting {value!r} of type {type(value).__name__} is not a plain JSON value")


def _check_sizes(kind: str, sizes: Mapping[str, Any]) -> dict[str, int]:
    """The sizes this kind uses; one dict may serve every kind, so "k" is ignored off lists."""
    needed = SPLITS + (("k",) if kind == "lists" else ())
    unknown = sorted(set(sizes) - set(SPLITS) - {"k"})
    missing = [key for key in needed if key not in sizes]
    if unknown or missing:
        raise ValueError(
            f"sizes for {kind!r} need the keys {list(needed)} (and may hold 'k' for lists)"
            + (f"; missing {missing}" if missing else "") + (f"; unknown {unknown}" if unknown else ""))
    out = {}
    for key in needed:
        value = sizes[key]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise errors.ConfigError(
                f"sizes[{key!r}] for {kind!r} must be a positive integer, got {value!r}")
        out[key] = int(value)
    return out


def make_config(kind: str, *, world: Mapping, labeler: Mapping, sizes: Mapping) -> ReviewsConfig:
    """The config of one dataset; its name is a hash of the settings this kind depends on."""
    if kind not in KINDS:
        raise ValueError(f"unknown reviews dataset kind {kind!r}; choose one of {KINDS}")
    settings = {"format": DATA_FORMAT, "kind": kind, "world": _plain(world),
                "sizes": _check_sizes(kind, sizes)}
    if kind in ("pairs", "lists"):
        settings["labeler"] = _plain(labeler)
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    return ReviewsConfig(
        name=f"cfg_{digest}", description=f"settings: {text}",
        world=settings["world"], labeler=settings.get("labeler", {}), sizes=settings["sizes"])


class _ReviewsBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared parts of the review-world builders: info, splits, world and labeler."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    # No checksum or metadata files live beside this code. Without this, TFDS looks
    # for them through `importlib_resources`, which Python >= 3.11 does not install.
    code_path = None

    # TFDS announces "Downloading and preparing dataset ..." before every build; these builders
    # download nothing, so they say what they do instead.
    def _log_download_bytes(self) -> None:
        print(f"building the review world's {self.name} dataset in {self.data_dir}", flush=True)

    def _log_download_done(self) -> None:
        pass

    def _features(self) -> dict:
        raise NotImplementedError

    def _records(self, split: str) -> list[dict]:
        raise NotImplementedError

    def _info(self) -> tfds.core.DatasetInfo:
        # Shuffling off: record i is the task's i-th example, so runs can name examples by index.
        return tfds.core.DatasetInfo(
            builder=self, description=self.builder_config.description,
            features=tfds.features.FeaturesDict(self._features()), disable_shuffling=True)

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(split) for split in SPLITS}

    def _generate_examples(self, split: str) -> Iterator[tuple[int, dict]]:
        for i, record in enumerate(self._records(split)):
            yield i, record

    def _world(self):
        settings = {k: _tuples(v) for k, v in self.builder_config.world.items()}
        try:
            return ReviewWorld(WorldConfig(**settings))
        except TypeError as e:
            raise errors.ConfigError(f"bad world settings {self.builder_config.world}: {e}") from e

    def _labeler(self):
        settings = {k: _tuples(v) for k, v in self.builder_config.labeler.items()}
        try:
            config = LabelerConfig(**settings)
        except TypeError as e:
            raise errors.ConfigError(
                f"bad labeler settings {self.builder_config.labeler}: {e}") from e
        return Labeler(self._world(), config)


def _text():
    return tfds.features.Text()


def _scalar():
    return tfds.features.Scalar(np.float32)


class ReviewsSft(_ReviewsBuilder):
    """Demonstrations: prompt, completion and its gold reward."""

    def _features(self):
        return {"prompt": _text(), "completion": _text(), "gold_reward": _scalar()}

    def _records(self, split):
        n = self.builder_config.sizes[split]
        return [{"prompt": r["prompt"], "completion": r["completion"],
                 "gold_reward": np.float32(r["gold_reward"])}
                for r in self._world().sft_examples(n, split=split)]


class ReviewsPrompts(_ReviewsBuilder):
    """Prompts only, for sampling."""

    def _features(self):
        return {"prompt": _text()}

    def _records(self, split):
        return [{"prompt": p}
                for p in self._world().prompts(self.builder_config.sizes[split], split=split)]


class ReviewsPairs(_ReviewsBuilder):
    """Labelled pairs: prompt, chosen, rejected and their gold rewards."""

    def _features(self):
        return {"prompt": _text(), "chosen": _text(), "rejected": _text(),
                "chosen_gold": _scalar(), "rejected_gold": _scalar()}

    def _records(self, split):
        n = self.builder_config.sizes[split]
        return [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"],
                 "chosen_gold": np.float32(r["chosen_gold"]),
                 "rejected_gold": np.float32(r["rejected_gold"])}
                for r in self._labeler().pairs(n, split=split)]


class ReviewsLists(_ReviewsBuilder):
    """Labelled lists: prompt, K completions, their labels and gold rewards."""

    def _features(self):
        return {"prompt": _text(), "completions": tfds.features.Sequence(_text()),
                "labels": tfds.features.Sequence(_scalar()),
                "gold": tfds.features.Sequence(_scalar())}

    def _records(self, split):
        sizes = self.builder_config.sizes
        return [{"prompt": r["prompt"], "completions": list(r["completions"]),
                 "labels": np.asarray(r["labels"], np.float32),
                 "gold": np.asarray(r["gold"], np.float32)}
                for r in self._labeler().lists(sizes[split], sizes["k"], split=split)]


_BUILDERS = {"sft": ReviewsSft, "prompts": ReviewsPrompts, "pairs": ReviewsPairs,
             "lists": ReviewsLists}


@contextlib.contextmanager
def _quiet_tfds():
    """Hides TFDS's progress bars, and its warnings about configs built on the fly."""
    # The configs here are made per call by design, so "custom data configuration" and
    # "no dataset_info.json yet" warnings carry no information.
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    tfds.display_progress_bar(False)
    try:
        yield
    finally:
        absl_logger.setLevel(level)


def reviews_builder(kind: str, data_dir: str, *, world: Mapping, labeler: Mapping,
                    sizes: Mapping) -> _ReviewsBuilder:
    """The (possibly unprepared) builder of one review-world dataset."""
    config = make_config(kind, world=world, labeler=labeler, sizes=sizes)
    with _quiet_tfds():
        return _BUILDERS[kind](data_dir=os.fspath(data_dir), file_format="array_record",
                               config=config)


def build_reviews(kind: str, data_dir: str, *, world: Mapping, labeler: Mapping,
                  sizes: Mapping) -> dict[str, Any]:
    """Builds a review-world dataset if needed; returns {"train": source, "test": source}."""
    builder = reviews_builder(kind, data_dir, world=world, labeler=labeler, sizes=sizes)
    with _quiet_tfds():
        if not builder.is_prepared():
            try:
                builder.download_and_prepare(
                    file_format="array_record",
                    download_config=tfds.download.DownloadConfig(try_download_gcs=False))
            except OSError:
                # Another process sharing data_dir may have finished the same build first;
                # its rename wins and ours fails. Anything else is a real error.
                builder = reviews_builder(kind, data_dir, world=world, labeler=labeler,
                                          sizes=sizes)
                if not builder.is_prepared():
                    raise
        sources = builder.as_data_source()
    return {split: sources[split] for split in SPLITS}


def tfds_source(name: str, split: str, data_dir: str):
    """A random-access source of a prepared array_record TFDS dataset ("name[/config][:version]")."""
    where = f"TFDS dataset {name!r} split {split!r} in {data_dir}"
    try:
        with _quiet_tfds():
            return tfds.data_source(name, split=split, data_dir=os.fspath(data_dir), download=False)
    except (tfds.core.DatasetNotFoundError, FileNotFoundError, AssertionError) as e:
        # TFDS's own message lists every dataset it knows; its first line is the useful part.
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FileNotFoundError(f"{where} is not prepared: {first_line}") from e
    except ValueError as e:
        raise errors.DataError(f"cannot open {where}: {str(e).strip().splitlines()[0]}") from e
