"""Tests of the review world: determinism, the documented gold reward, and the data it writes."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from align import config as config_lib
from align.data import sources
from align.tasks.reviews import FILLERS, ReviewWorld, WorldConfig

WORLD = ReviewWorld()
P = "review the blender :"


def _gold_by_hand(x, cfg=WORLD.config):
    return math.tanh(x / cfg.reward_scale)


def test_same_seed_identical_different_seed_differs():
    a, b = ReviewWorld(WorldConfig(seed=3)), ReviewWorld(WorldConfig(seed=3))
    assert a.sft_examples(50, split="train") == b.sft_examples(50, split="train")
    assert a.corpus(50) == b.corpus(50)
    rng_a, rng_b = np.random.default_rng(1), np.random.default_rng(1)
    assert a.completions(P, 5, rng=rng_a) == b.completions(P, 5, rng=rng_b)
    c = ReviewWorld(WorldConfig(seed=4))
    assert a.prompts(50, split="train") != c.prompts(50, split="train")
    assert a.sft_examples(50, split="train") != c.sft_examples(50, split="train")


def test_splits_are_different_streams_and_prompts_are_prefixes():
    train, test = WORLD.prompts(100, split="train"), WORLD.prompts(100, split="test")
    assert train != test
    assert WORLD.prompts(30, split="train") == train[:30]
    with pytest.raises(ValueError, match="split"):
        WORLD.prompts(3, split="")


def test_identical_across_processes():
    code = ("import json; from align.tasks.reviews import ReviewWorld, WorldConfig; "
            "print(json.dumps(ReviewWorld(WorldConfig(seed=7)).sft_examples(20, split='test')))")
    outs = []
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        res = subprocess.run([sys.executable, "-c", code], env=env, cwd=root,
                             capture_output=True, text=True, check=True)
        outs.append(res.stdout)
    assert outs[0] == outs[1]
    assert json.loads(outs[0]) == ReviewWorld(WorldConfig(seed=7)).sft_examples(20, split="test")


def test_gold_reward_formula_by_hand():
    cfg = WORLD.config
    rel = cfg.relevance_bonus
    assert WORLD.gold_reward(P, "the blender is good .") == pytest.approx(_gold_by_hand(1 + rel))
    assert WORLD.gold_reward(P, "the blender is very good .") == pytest.approx(_gold_by_hand(1.5 + rel))
    assert WORLD.gold_reward(P, "the blender is not good .") == pytest.approx(
        _gold_by_hand(cfg.negation_factor + rel))
    # A mean over sentences: a neutral sentence halves the sentiment.
    assert WORLD.gold_reward(P, "the blender is great . it arrived on time .") == pytest.approx(
        _gold_by_hand(1 + rel))
    # The prompt's aspect counts as a second mention; another product is off topic.
    assert WORLD.gold_reward("review the blender , mainly the lid :", "the lid is good . i like the blender .") \
        == pytest.approx(_gold_by_hand(1 + 2 * rel))
    assert WORLD.gold_reward(P, "the kettle is good .") == pytest.approx(_gold_by_hand(1 - cfg.off_topic_penalty))
    assert WORLD.gold_reward(P, "") == 0.0


def test_positive_words_raise_negation_flips():
    base = WORLD.gold_reward(P, "the blender is okay .")
    assert WORLD.gold_reward(P, "the blender is good .") > base
    assert WORLD.gold_reward(P, "the blender is great .") > WORLD.gold_reward(P, "the blender is good .")
    assert WORLD.gold_reward(P, "the blender is bad .") < base
    for word in ("good", "great", "bad", "terrible"):
        plain = WORLD.features(P, f"it is {word} .")["sentiment_sum"]
        negated = WORLD.features(P, f"it is not {word} .")["sentiment_sum"]
        assert plain != 0 and np.sign(negated) == -np.sign(plain)
    assert WORLD.features(P, "i do not hate the blender .")["sentiment_sum"] > 0


def test_saturation_and_garbled_text():
    assert 0.99 < WORLD.gold_reward(P, "great " * 4) < 1.0
    assert WORLD.gold_reward(P, "great " * 500) <= 1.0
    # Repeating a sentence keeps its mean: no reward for length.
    strong_bad = _gold_by_hand(-4 + WORLD.config.relevance_bonus)
    assert WORLD.gold_reward(P, "the blender is extremely terrible . " * 10) == pytest.approx(strong_bad)
    assert -1.0 < strong_bad < -0.95
    # Unknown words and missing spaces: scored by the words recognised.
    assert WORLD.gold_reward(P, "zz qq great!! blender") == pytest.approx(WORLD.gold_reward(P, "great . blender"))
    assert WORLD.gold_reward(P, "the blender is good.") == WORLD.gold_reward(P, "the blender is good .")
    rewards = WORLD.gold_rewards([e["prompt"] for e in WORLD.sft_examples(300, split="train")],
                                 [e["completion"] for e in WORLD.sft_examples(300, split="train")])
    assert rewards.dtype == np.float64 and rewards.shape == (300,)
    assert np.all(np.abs(rewards) < 1.0)
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        WORLD.gold_rewards([P, P], ["x"])


def test_filler_never_raises_gold_and_length_is_neutral():
    examples = WORLD.sft_examples(400, split="train")
    for e in examples[:100]:
        padded = f"{FILLERS[0]} , {e['completion']}"
        assert WORLD.gold_reward(e["prompt"], padded) < e["gold_reward"]
        assert WORLD.features(e["prompt"], padded)["n_fillers"] == WORLD.features(
            e["prompt"], e["completion"])["n_fillers"] + 1
    feats = [WORLD.features(e["prompt"], e["completion"]) for e in examples]
    gold = [f["gold_reward"] for f in feats]
    assert abs(np.corrcoef([f["n_sentences"] for f in feats], gold)[0, 1]) < 0.15
    assert 0 < np.mean([f["n_fillers"] > 0 for f in feats]) < 0.6


def test_demos_span_rewards_and_stay_short():
    examples = WORLD.sft_examples(500, split="train")
    gold = np.array([e["gold_reward"] for e in examples])
    assert gold.min() < -0.6 and gold.max() > 0.7
    assert -0.1 < gold.mean() < 0.35
    for e in examples:
        assert e["gold_reward"] == WORLD.gold_reward(e["prompt"], e["completion"])
        n_sentences = WORLD.features(e["prompt"], e["completion"])["n_sentences"]
        assert 1 <= n_sentences <= WORLD.config.max_sentences
        assert len(e["completion"].split()) < 40


def test_quality_controls_reward():
    rng = np.random.default_rng(0)
    means = [np.mean([WORLD.gold_reward(P, WORLD.write_review(P, quality=q, rng=rng)) for _ in range(150)])
             for q in (-1.0, 0.0, 1.0)]
    assert means[0] < -0.4 < means[1] < 0.4 < means[2]
    with pytest.raises(ValueError, match="quality=1.5"):
        WORLD.write_review(P, quality=1.5, rng=rng)
    with pytest.raises(ValueError, match="names no known product"):
        WORLD.write_review("review the spaceship :", quality=0.0, rng=rng)


def test_completions_diverse():
    rng = np.random.default_rng(0)
    for prompt in WORLD.prompts(20, split="test"):
        cands = WORLD.completions(prompt, 8, rng=rng)
        assert len(cands) == 8 and len(set(cands)) == 8
        gold = WORLD.gold_rewards([prompt] * 8, cands)
        assert gold.max() - gold.min() > 0.5


def test_styles_and_corpus_vocabulary():
    styles = {"the blender is good .": 0, "i like it .": 1, "it is good .": 2,
              "to be honest , it is good .": 2, "zz good": -1, "": -1}
    for text, style in styles.items():
        assert WORLD.features(P, text)["style"] == style
    lines = WORLD.corpus(1000)
    assert len(lines) == 1000 and all(line.startswith("review the ") for line in lines)
    written = set(" ".join(lines).split())
    assert set(WORLD.words()) <= written
    assert written - set(WORLD.words()) == {".", ",", ":"}


def test_config_validation():
    with pytest.raises(ValueError, match="num_products=99"):
        WorldConfig(num_products=99)
    with pytest.raises(ValueError, match="filler_prob"):
        WorldConfig(filler_prob=1.5)
    assert len(set(p.split()[2] for p in ReviewWorld(WorldConfig(num_products=3)).prompts(200, split="train"))) == 3


def test_min_sentences_controls_length():
    """With min_sentences = 3 one extreme sentence earns a third of three such sentences'
    sentiment; at 3 or more sentences the gold is the plain mean again. The default keeps
    the mean at every length."""
    prompt = "review the kettle :"
    one = "the kettle is excellent ."
    three = "the kettle is excellent . it is excellent . i think it is excellent ."
    plain, controlled = ReviewWorld(), ReviewWorld(WorldConfig(min_sentences=3))
    assert plain.features(prompt, one)["sentiment_mean"] == pytest.approx(
        plain.features(prompt, three)["sentiment_mean"])
    f1, f3 = controlled.features(prompt, one), controlled.features(prompt, three)
    assert f1["sentiment_mean"] == pytest.approx(f3["sentiment_mean"] / 3)
    assert f3["sentiment_mean"] == pytest.approx(plain.features(prompt, three)["sentiment_mean"])
    assert controlled.gold_reward(prompt, one) < controlled.gold_reward(prompt, three)
    with pytest.raises(Exception, match="min_sentences"):
        WorldConfig(min_sentences=9)


def test_min_sentences_reaches_the_world_from_the_config():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cfg = config_lib.resolve(os.path.join(root, "configs/sft.py:size=tiny"),
                             ["--config.task.min_sentences=2"])
    assert sources.make_world(cfg).config.min_sentences == 2
    default = config_lib.resolve(os.path.join(root, "configs/sft.py:size=tiny"), [])
    assert "min_sentences" not in sources.world_settings(default)[0]  # dataset ids unchanged
