"""Simulated preference labelers of the review world: noisy, biased and possibly intransitive.

Dimensions: K completions per prompt, S styles (plus one slot for "unknown").

A labeler scores a completion y of prompt x as
    s(y) = gold(x, y) + length_bias * n_sentences(y) + filler_bias * n_fillers(y)
and prefers a over b with
    P(a > b) = sigmoid(d / temperature),  d = s(a) - s(b) + intransitive * C[style(a), style(b)]
(temperature 0: 1 if d > 0, 0 if d < 0, 1/2 on a tie). C is rock-paper-scissors over the three
styles of reviews.py (0 "the ..." beats 1 "i ...", 1 beats 2 "it ...", 2 beats 0): C = +1 when
the first style beats the second, -1 the other way, 0 for equal or unknown (-1) styles. With a
large `intransitive` weight the labeler's preferences cycle, so no ranking explains them, which
is the case Nash-MD and IPO-MD are built for. P(a > b) + P(b > a) = 1 and P(a > a) = 1/2.

Pairs and lists draw their completions from streams keyed by the world's seed only, so labelers
with different biases label the very same texts; the labeler's seed drives only its coin flips.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from align.errors import ConfigError
from align.tasks.reviews import NUM_STYLES, ReviewWorld, stream_rng


@dataclasses.dataclass(frozen=True)
class LabelerConfig:
    """How a simulated labeler departs from the gold reward."""

    temperature: float = 1.0   # Bradley-Terry noise: P(a > b) = sigmoid((s_a - s_b) / temperature); 0: deterministic
    length_bias: float = 0.0   # added to the labeler's score per sentence (spoiler feature)
    filler_bias: float = 0.0   # added per filler phrase (spoiler feature)
    intransitive: float = 0.0  # weight of the cyclic preference among the 3 styles (module docstring)
    seed: int = 0

    def __post_init__(self):
        for name in ("temperature", "length_bias", "filler_bias", "intransitive"):
            value = getattr(self, name)
            if not math.isfinite(value):
                raise ConfigError(f"LabelerConfig.{name}={value}: must be finite",
                                  key=f"task.{name}")
        if self.temperature < 0:
            raise ConfigError(f"LabelerConfig.temperature={self.temperature}: must be >= 0",
                              key="task.temperature")


def _cycle_matrix() -> np.ndarray:
    cycle_SxS = np.zeros((NUM_STYLES + 1, NUM_STYLES + 1))
    for i in range(NUM_STYLES):
        # Row/column 0 is the unknown style -1, which takes part in no cycle.
        cycle_SxS[i + 1, (i + 1) % NUM_STYLES + 1] = 1.0
        cycle_SxS[(i + 1) % NUM_STYLES + 1, i + 1] = -1.0
    return cycle_SxS


_CYCLE = _cycle_matrix()


class Labeler:
    """Preference probabilities, sampled pair labels and graded list labels over a ReviewWorld."""

    def __init__(self, world: ReviewWorld, config: LabelerConfig = LabelerConfig()):
        self.world = world
        self.config = config

    def _scores_and_styles(self, prompt: str, completions: list[str]) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.config
        feats = [self.world.features(prompt, y) for y in completions]
        score_K = np.array([f["gold_reward"] + cfg.length_bias * f["n_sentences"]
                            + cfg.filler_bias * f["n_fillers"] for f in feats], dtype=np.float64)
        style_K = np.array([int(f["style"]) + 1 for f in feats], dtype=np.int64)
        return score_K, style_K

    def preference_matrix(self, prompt: str, completions: list[str]) -> np.ndarray:
        """P[k, i] = P(y_k > y_i) for every ordered pair of completions, shape [K, K]."""
        score_K, style_K = self._scores_and_styles(prompt, completions)
        d_KxK = score_K[:, None] - score_K[None, :] + self.config.intransitive * _CYCLE[style_K[:, None], style_K[None, :]]
        if self.config.temperature == 0:
            return 0.5 + 0.5 * np.sign(d_KxK)
        # The tanh form is the sigmoid without overflow, and odd, so P[k, i] + P[i, k] == 1 exactly.
        return 0.5 + 0.5 * np.tanh(d_KxK / (2.0 * self.config.temperature))

    def pair_terms(self, prompt: str, a: str, b: str) -> tuple[float, float, int, int]:
        """(Δs, C, style a, style b): the labeler's score difference s(a) − s(b), the cycle term
        C[style a, style b] (so that logit P(a > b) = (Δs + intransitive·C) / temperature), and
        the two styles (-1 unknown)."""
        score_K, style_K = self._scores_and_styles(prompt, [a, b])
        return (float(score_K[0] - score_K[1]), float(_CYCLE[style_K[0], style_K[1]]),
                int(style_K[0]) - 1, int(style_K[1]) - 1)

    def preference_prob(self, prompt: str, a: str, b: str) -> float:
        """P(a > b) under the labeler, biases and intransitive part included."""
        return float(self.preference_matrix(prompt, [a, b])[0, 1])

    def label_pair(self, prompt: str, a: str, b: str, *, rng: np.random.Generator) -> int:
        """1 if the labeler prefers a, else 0: a Bernoulli draw of preference_prob."""
        return int(rng.random() < self.preference_prob(prompt, a, b))

    def pairs(self, n: int, *, split: str) -> list[dict]:
        """n labelled pairs: {"prompt", "chosen", "rejected", "chosen_gold", "rejected_gold"}."""
        world = self.world
        prompts = world.prompts(n, split=split)
        text_rng = stream_rng(world.config.seed, split, "pairs")
        label_rng = stream_rng(self.config.seed, split, "pair-labels", str(world.config.seed))
        out = []
        for prompt in prompts:
            a, b = world.completions(prompt, 2, rng=text_rng)
            chosen, rejected = (a, b) if self.label_pair(prompt, a, b, rng=label_rng) else (b, a)
            out.append({"prompt": prompt, "chosen": chosen, "rejected": rejected,
                        "chosen_gold": world.gold_reward(prompt, chosen),
                        "rejected_gold": world.gold_reward(prompt, rejected)})
        return out

    def graded_labels(self, prompt: str, completions: list[str]) -> np.ndarray:
        """LiPO labels psi_k = (1/K) sum_i P(y_k > y_i), in [0, 1], shape [K] (arXiv 2402.01878)."""
        if not completions:
            raise ValueError(f"graded_labels: no completions for prompt {prompt!r}")
        return self.preference_matrix(prompt, list(completions)).mean(axis=1)

    def lists(self, n: int, k: int, *, split: str) -> list[dict]:
        """n prompts with k completions each: {"prompt", "completions", "labels", "gold"}."""
        world = self.world
        prompts = world.prompts(n, split=split)
        text_rng = stream_rng(world.config.seed, split, "lists")
        out = []
        for prompt in prompts:
            completions = world.completions(prompt, k, rng=text_rng)
            label_K = self.graded_labels(prompt, completions)
            out.append({"prompt": prompt, "completions": completions,
                        "labels": [float(v) for v in label_K],
                        "gold": [world.gold_reward(prompt, y) for y in completions]})
        return out
