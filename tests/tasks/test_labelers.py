"""Tests of the simulated labelers: noise, spoiler biases, intransitivity and graded labels."""
import numpy as np
import pytest

from align.tasks.labelers import Labeler, LabelerConfig
from align.tasks.reviews import ReviewWorld, WorldConfig

WORLD = ReviewWorld()
P = "review the blender :"


def _labeler(**kw):
    return Labeler(WORLD, LabelerConfig(**kw))


def _gold_accuracy(pairs):
    decided = [p for p in pairs if p["chosen_gold"] != p["rejected_gold"]]
    return np.mean([p["chosen_gold"] > p["rejected_gold"] for p in decided])


def test_accuracy_rises_as_temperature_falls():
    accuracy = [_gold_accuracy(_labeler(temperature=t).pairs(600, split="train")) for t in (2.0, 0.5, 0.1)]
    assert 0.5 < accuracy[0] < accuracy[1] < accuracy[2]


def test_temperature_zero_is_gold_ordering():
    labeler = _labeler(temperature=0.0)
    pairs = labeler.pairs(300, split="train")
    assert all(p["chosen_gold"] >= p["rejected_gold"] for p in pairs)
    assert _gold_accuracy(pairs) == 1.0
    good, bad = "the blender is great .", "the blender is bad ."
    assert labeler.preference_prob(P, good, bad) == 1.0
    assert labeler.preference_prob(P, bad, good) == 0.0
    assert labeler.preference_prob(P, good, good) == 0.5


def test_probabilities_are_bradley_terry():
    labeler = _labeler(temperature=0.7)
    a, b = "the blender is great .", "the blender is okay ."
    diff = WORLD.gold_reward(P, a) - WORLD.gold_reward(P, b)
    p_ab = labeler.preference_prob(P, a, b)
    assert p_ab == pytest.approx(1 / (1 + np.exp(-diff / 0.7)))
    assert p_ab + labeler.preference_prob(P, b, a) == 1.0
    rng = np.random.default_rng(0)
    freq = np.mean([labeler.label_pair(P, a, b, rng=rng) for _ in range(3000)])
    assert abs(freq - p_ab) < 0.03


def test_pairs_deterministic_and_share_texts_across_labelers():
    one = _labeler(seed=1).pairs(100, split="test")
    assert one == _labeler(seed=1).pairs(100, split="test")
    other = _labeler(seed=2).pairs(100, split="test")
    assert one != other
    assert [{p["chosen"], p["rejected"]} for p in one] == [{p["chosen"], p["rejected"]} for p in other]
    assert one != _labeler(seed=1).pairs(100, split="train")
    assert Labeler(ReviewWorld(WorldConfig(seed=5)), LabelerConfig(seed=1)).pairs(100, split="test") != one


def _share_preferring(pairs, feature):
    """Among pairs that differ in `feature`, the share whose chosen completion has more of it."""
    diff = np.array([WORLD.features(p["prompt"], p["chosen"])[feature]
                     - WORLD.features(p["prompt"], p["rejected"])[feature] for p in pairs])
    return np.mean(diff[diff != 0] > 0)


@pytest.mark.parametrize("feature,bias", [("n_sentences", {"length_bias": 1.0}), ("n_fillers", {"filler_bias": 1.0})])
def test_spoiler_biases_shift_preferences(feature, bias):
    honest = _share_preferring(_labeler(temperature=0.1).pairs(500, split="train"), feature)
    biased = _share_preferring(_labeler(temperature=0.1, **bias).pairs(500, split="train"), feature)
    assert honest < 0.6 and biased > honest + 0.2


def test_intransitive_component_makes_a_cycle():
    a = "the blender is good ."          # style 0
    b = "i like the blender ."           # style 1
    c = "it is good . i own the blender ."  # style 2
    cyclic = _labeler(temperature=1.0, intransitive=4.0)
    probs = [cyclic.preference_prob(P, a, b), cyclic.preference_prob(P, b, c), cyclic.preference_prob(P, c, a)]
    assert min(probs) > 0.9
    plain = _labeler(temperature=1.0)
    probs = [plain.preference_prob(P, a, b), plain.preference_prob(P, b, c), plain.preference_prob(P, c, a)]
    assert not all(p > 0.5 for p in probs)
    # An unknown style takes part in no cycle.
    assert cyclic.preference_prob(P, "zz the blender is good .", a) == 0.5


def test_graded_labels_in_unit_interval_and_ordered_like_gold():
    rng = np.random.default_rng(0)
    noisy = _labeler(temperature=1.0, length_bias=0.3, intransitive=1.0)
    for prompt in WORLD.prompts(10, split="test"):
        labels_K = noisy.graded_labels(prompt, WORLD.completions(prompt, 6, rng=rng))
        assert labels_K.shape == (6,) and np.all((labels_K >= 0) & (labels_K <= 1))
        assert labels_K.mean() == pytest.approx(0.5)  # sum_k psi_k = K/2 since P(a>b) + P(b>a) = 1
    sharp = _labeler(temperature=0.0)
    for item in sharp.lists(20, 8, split="test"):
        labels, gold = np.array(item["labels"]), np.array(item["gold"])
        assert len(item["completions"]) == 8 and len(labels) == 8
        assert np.array_equal(np.sign(labels[:, None] - labels[None, :]), np.sign(gold[:, None] - gold[None, :]))
    spread = {t: np.mean([np.ptp(item["labels"]) for item in _labeler(temperature=t).lists(20, 8, split="test")])
              for t in (0.05, 5.0)}
    assert spread[0.05] > 0.6 and spread[5.0] < 0.1
    with pytest.raises(ValueError, match="no completions"):
        sharp.graded_labels(P, [])


def test_config_validation():
    with pytest.raises(ValueError, match="temperature=-1"):
        LabelerConfig(temperature=-1.0)
    with pytest.raises(ValueError, match="length_bias=nan"):
        LabelerConfig(length_bias=float("nan"))
