"""Tests of the review-world TFDS builders."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from align.data import builders
from align.tasks.labelers import Labeler, LabelerConfig
from align.tasks.reviews import ReviewWorld, WorldConfig

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORLD = {"seed": 3, "max_sentences": 2}
LABELER = {"temperature": 0.5, "length_bias": 0.2, "seed": 1}
SIZES = {"train": 12, "test": 5}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def _text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else value


def test_sft_matches_the_world_in_order(data_dir):
    src = builders.build_reviews("sft", data_dir, world=WORLD, labeler={}, sizes=SIZES)
    assert (len(src["train"]), len(src["test"])) == (12, 5)
    expected = ReviewWorld(WorldConfig(**WORLD)).sft_examples(5, split="test")
    for i, ex in enumerate(expected):
        rec = src["test"][i]
        assert set(rec) == {"prompt", "completion", "gold_reward"}
        assert _text(rec["prompt"]) == ex["prompt"]
        assert _text(rec["completion"]) == ex["completion"]
        np.testing.assert_allclose(rec["gold_reward"], ex["gold_reward"], rtol=1e-6)


def test_prompts_pairs_and_lists(data_dir):
    world = ReviewWorld(WorldConfig(**WORLD))
    labeler = Labeler(world, LabelerConfig(**LABELER))

    prompts = builders.build_reviews("prompts", data_dir, world=WORLD, labeler=LABELER, sizes=SIZES)
    assert [_text(prompts["train"][i]["prompt"]) for i in range(12)] == world.prompts(12, split="train")

    pairs = builders.build_reviews("pairs", data_dir, world=WORLD, labeler=LABELER, sizes=SIZES)
    assert (len(pairs["train"]), len(pairs["test"])) == (12, 5)
    expected = labeler.pairs(12, split="train")
    for i in (0, 7, 11):
        rec = pairs["train"][i]
        assert set(rec) == {"prompt", "chosen", "rejected", "chosen_gold", "rejected_gold"}
        assert _text(rec["chosen"]) == expected[i]["chosen"]
        assert _text(rec["rejected"]) == expected[i]["rejected"]
        np.testing.assert_allclose(rec["rejected_gold"], expected[i]["rejected_gold"], rtol=1e-6)

    lists = builders.build_reviews("lists", data_dir, world=WORLD, labeler=LABELER,
                                   sizes={**SIZES, "k": 3})
    expected = labeler.lists(5, 3, split="test")
    rec = lists["test"][4]
    assert set(rec) == {"prompt", "completions", "labels", "gold"}
    assert [_text(c) for c in rec["completions"]] == expected[4]["completions"]
    np.testing.assert_allclose(np.asarray(rec["labels"]), expected[4]["labels"], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(rec["gold"]), expected[4]["gold"], rtol=1e-6)


def test_config_names_encode_the_relevant_settings():
    def name(kind, world=WORLD, labeler=LABELER, sizes=SIZES):
        return builders.make_config(kind, world=world, labeler=labeler, sizes=sizes).name

    assert name("sft") == name("sft", world=dict(reversed(list(WORLD.items()))))
    assert name("sft") != name("sft", world={**WORLD, "seed": 4})
    assert name("sft") != name("sft", sizes={**SIZES, "test": 6})
    # sft and prompts ignore the labeler; pairs and lists depend on it.
    assert name("sft") == name("sft", labeler={"temperature": 0.0})
    assert name("pairs") != name("pairs", labeler={**LABELER, "length_bias": 0.3})
    sizes_k = {**SIZES, "k": 4}
    assert name("lists", sizes=sizes_k) != name("lists", sizes={**SIZES, "k": 8})
    assert name("sft", sizes=sizes_k) == name("sft")  # one sizes dict may serve every kind
    # Lists and tuples are the same setting (JSON / ml_collections give lists).
    assert (name("sft", world={"demo_quality": [[1.0, 0.0, 0.3]]})
            == name("sft", world={"demo_quality": ((1.0, 0.0, 0.3),)}))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="'dialogue'"):
        builders.make_config("dialogue", world={}, labeler={}, sizes=SIZES)
    with pytest.raises(ValueError, match=r"missing \['k'\]"):
        builders.make_config("lists", world={}, labeler={}, sizes=SIZES)
    with pytest.raises(ValueError, match=r"unknown \['valid'\]"):
        builders.make_config("sft", world={}, labeler={}, sizes={**SIZES, "valid": 3})
    with pytest.raises(ValueError, match=r"sizes\['train'\]"):
        builders.make_config("sft", world={}, labeler={}, sizes={"train": 0, "test": 2})


def test_bad_world_setting_is_named(tmp_path):
    with pytest.raises(ValueError, match="num_products"):
        builders.build_reviews("prompts", str(tmp_path), world={"num_products": 0},
                               labeler={}, sizes=SIZES)
    with pytest.raises(ValueError, match="colour"):
        builders.build_reviews("prompts", str(tmp_path), world={"colour": 1},
                               labeler={}, sizes=SIZES)


def test_rebuild_after_killed_build(tmp_path):
    data_dir = str(tmp_path)
    # The child dies (no cleanup, as with SIGKILL) after the train split is written.
    script = textwrap.dedent(f"""
        import os
        from align.data import builders
        from align.tasks import reviews
        original = reviews.ReviewWorld.sft_examples
        def dying(self, n, *, split):
            if split == "test":
                os._exit(7)
            return original(self, n, split=split)
        reviews.ReviewWorld.sft_examples = dying
        builders.build_reviews("sft", {data_dir!r}, world={WORLD!r}, labeler={{}}, sizes={SIZES!r})
    """)
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 7, proc.stderr
    config_dir = os.path.join(data_dir, "reviews_sft",
                              builders.make_config("sft", world=WORLD, labeler={}, sizes=SIZES).name)
    leftovers = os.listdir(config_dir)
    assert leftovers and all(d.startswith("incomplete.") for d in leftovers), leftovers

    src = builders.build_reviews("sft", data_dir, world=WORLD, labeler={}, sizes=SIZES)
    assert (len(src["train"]), len(src["test"])) == (12, 5)
    assert "1.0.0" in os.listdir(config_dir)
    expected = ReviewWorld(WorldConfig(**WORLD)).sft_examples(5, split="test")
    assert _text(src["test"][4]["completion"]) == expected[4]["completion"]


def test_a_local_build_says_what_it_builds_not_downloading(tmp_path, capsys):
    builders.build_reviews("prompts", str(tmp_path), world=WORLD, labeler={}, sizes=SIZES)
    out = capsys.readouterr().out
    assert "Downloading and preparing" not in out and "downloaded and prepared" not in out
    assert "building the review world's reviews_prompts dataset" in out


def test_finished_build_is_reused(data_dir):
    builders.build_reviews("prompts", data_dir, world=WORLD, labeler={}, sizes=SIZES)
    config = builders.make_config("prompts", world=WORLD, labeler={}, sizes=SIZES)
    version_dir = os.path.join(data_dir, "reviews_prompts", config.name, "1.0.0")
    stamp = os.stat(os.path.join(version_dir, "dataset_info.json")).st_mtime_ns
    builders.build_reviews("prompts", data_dir, world=WORLD, labeler={}, sizes=SIZES)
    assert os.stat(os.path.join(version_dir, "dataset_info.json")).st_mtime_ns == stamp


def test_tfds_source_opens_prepared_data_by_name(data_dir):
    built = builders.build_reviews("sft", data_dir, world=WORLD, labeler={}, sizes=SIZES)
    config = builders.make_config("sft", world=WORLD, labeler={}, sizes=SIZES)
    src = builders.tfds_source(f"reviews_sft/{config.name}", "train", data_dir)
    assert len(src) == 12
    assert src[3]["completion"] == built["train"][3]["completion"]
    with pytest.raises(FileNotFoundError, match="no_such_dataset"):
        builders.tfds_source("no_such_dataset", "train", data_dir)
    with pytest.raises(ValueError, match="valid"):
        builders.tfds_source(f"reviews_sft/{config.name}", "valid", data_dir)
