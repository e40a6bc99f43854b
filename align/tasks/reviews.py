"""A synthetic world of short product reviews with a gold reward computed from the text alone.

Dimensions: N examples.

A prompt names a product and sometimes one of its aspects:
    "review the kettle :"            "review the kettle , mainly the spout :"
A completion is 1..max_sentences template sentences over a small sentiment lexicon:
    "the kettle is very good . i do not like the spout . it arrived on time ."

Gold reward (any text; words outside the lexicon are ignored):
    tokens     lower-cased runs of letters and the marks . , : ! ?
    sentences  the token runs between . ! ? (n = number of non-empty ones)
    score(s)   sum over lexicon words w in sentence s of  weight(w) * m * g, where
               m = product of the intensifiers (INTENSIFIERS) and
               g = negation_factor ** (number of "not")
               seen since the previous lexicon word of the same sentence (modifiers left
               dangling at a sentence end are dropped)
    S          sum_s score(s) / max(n, min_sentences, 1)     (a mean; with min_sentences = k
               > 0 a completion of fewer than k sentences earns only its share: length-
               controlled, so a policy cannot win by writing one extreme sentence)
    x          S + relevance_bonus * (mentions the prompt's product
                                      + mentions the prompt's aspect, if it names one)
                 - off_topic_penalty * [mentions another product]
                 - filler_penalty * (number of FILLERS phrases)
    r          tanh(x / reward_scale)                          so |r| <= 1
Word weights: strong +-2, weak +-1, neutral 0 (LEXICON). With the default negation_factor
-0.5, "not good" = -0.5 and "not terrible" = +1. The number of sentences and the filler
phrases are spoiler features: gold ignores length and slightly penalises filler, while a
biased labeler (align.tasks.labelers) may like them. Every completion also has a style,
read from its first word after any filler: "the" -> 0, "i" -> 1, "it" -> 2, else -1.

Randomness: every stream is np.random.default_rng(SeedSequence) keyed by (seed, split,
purpose) through their bytes, so the same config gives identical text in any process.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Sequence

import numpy as np

from align.errors import ConfigError

# Single words only, so that a prompt's product and aspect can be read back from its tokens.
PRODUCTS: dict[str, tuple[str, ...]] = {
    "blender": ("motor", "blades", "jar", "lid"),
    "toaster": ("slots", "timer", "lever", "tray"),
    "kettle": ("spout", "handle", "lid", "base"),
    "lamp": ("bulb", "switch", "shade", "cord"),
    "chair": ("seat", "legs", "back", "cushion"),
    "backpack": ("straps", "zipper", "pockets", "fabric"),
    "headphones": ("sound", "cushions", "cable", "battery"),
    "keyboard": ("keys", "cable", "battery", "stand"),
    "umbrella": ("handle", "canopy", "frame", "button"),
    "mug": ("handle", "glaze", "lid", "rim"),
    "fan": ("blades", "motor", "switch", "stand"),
    "vacuum": ("motor", "hose", "filter", "battery"),
    "printer": ("ink", "tray", "screen", "cable"),
    "camera": ("lens", "screen", "battery", "grip"),
    "tent": ("poles", "zipper", "floor", "door"),
    "watch": ("strap", "screen", "battery", "buckle"),
}
GENERIC_ASPECTS = ("price", "design", "size", "color")

SENTIMENT_CLASSES = (-2, -1, 0, 1, 2)
ADJECTIVES: dict[int, tuple[str, ...]] = {
    2: ("great", "excellent", "perfect", "superb"),
    1: ("good", "nice", "solid", "sturdy"),
    0: ("okay", "average", "plain"),
    -1: ("bad", "flimsy", "noisy", "weak"),
    -2: ("terrible", "awful", "useless", "horrible"),
}
ADVERBS: dict[int, tuple[str, ...]] = {
    2: ("perfectly", "brilliantly"),
    1: ("well", "smoothly", "nicely"),
    0: ("normally",),
    -1: ("poorly", "badly"),
    -2: ("terribly", "awfully"),
}
VERBS: dict[int, tuple[str, ...]] = {
    2: ("love", "adore"),
    1: ("like", "enjoy", "recommend"),
    0: ("use", "own"),
    -1: ("dislike", "regret"),
    -2: ("hate", "detest"),
}
LEXICON: dict[str, float] = {
    word: float(c) for table in (ADJECTIVES, ADVERBS, VERBS) for c, ws in table.items() for word in ws
}
INTENSIFIERS: dict[str, float] = {
    "very": 1.5, "really": 1.5, "extremely": 2.0, "quite": 1.25, "somewhat": 0.75, "slightly": 0.5,
}
NEGATION = "not"
FILLERS: tuple[str, ...] = ("to be honest", "in my opinion", "all things considered")
STYLE_OPENERS: dict[str, int] = {"the": 0, "i": 1, "it": 2}
NUM_STYLES = 3
# Sentences that carry no sentiment, per style; {s} is the subject.
FACTS: dict[int, tuple[str, ...]] = {
    0: ("the {s} arrived on time .", "the {s} came in a box ."),
    1: ("i bought the {s} last month .", "i got the {s} as a gift ."),
    2: ("it arrived on time .", "it came in a box ."),
}

_TOKEN_RE = re.compile(r"[a-z]+|[.,:!?]")
_SENTENCE_ENDS = frozenset(".!?")
_FILLER_TOKENS = tuple(tuple(f.split()) for f in FILLERS)


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    """Knobs of the review world; the defaults are the embedded default task."""

    seed: int = 0
    num_products: int = 12
    max_sentences: int = 4
    aspect_prompt_prob: float = 0.5   # share of prompts that also name an aspect
    filler_prob: float = 0.15         # per sentence, capped at max_fillers per completion
    max_fillers: int = 2
    negation_prob: float = 0.2        # weak sentiment written as "not <strong opposite>"
    intensifier_prob: float = 0.25
    fact_prob: float = 0.5            # neutral sentences written as facts, not adjectives
    quality_sharpness: float = 1.5    # P(sentence class c) ∝ exp(sharpness * quality * c)
    # SFT demonstrations: quality ~ mixture of (weight, mean, std) normals, clipped to [-1, 1].
    # Their mean gold reward is about 0.1 (10%..90%: -0.7..0.8), leaving room above SFT.
    demo_quality: tuple[tuple[float, float, float], ...] = (
        (0.5, 0.2, 0.4), (0.3, -0.6, 0.3), (0.2, 0.7, 0.2),
    )
    negation_factor: float = -0.5
    reward_scale: float = 2.0
    relevance_bonus: float = 0.25
    off_topic_penalty: float = 0.5
    filler_penalty: float = 0.1
    min_sentences: int = 0            # gold divides the sentiment sum by max(n, this, 1)

    def __post_init__(self):
        if not 1 <= self.num_products <= len(PRODUCTS):
            raise ConfigError(f"WorldConfig.num_products={self.num_products}: must be in [1, {len(PRODUCTS)}]")
        if self.max_sentences < 1:
            raise ConfigError(f"WorldConfig.max_sentences={self.max_sentences}: must be >= 1")
        if not 0 <= self.min_sentences <= self.max_sentences:
            raise ConfigError(f"WorldConfig.min_sentences={self.min_sentences}: must be in "
                              f"[0, max_sentences={self.max_sentences}]", key="task.min_sentences")
        if self.max_fillers < 0:
            raise ConfigError(f"WorldConfig.max_fillers={self.max_fillers}: must be >= 0")
        for name in ("aspect_prompt_prob", "filler_prob", "negation_prob", "intensifier_prob", "fact_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"WorldConfig.{name}={value}: a probability must be in [0, 1]")
        if self.reward_scale <= 0:
            raise ConfigError(f"WorldConfig.reward_scale={self.reward_scale}: must be > 0")
        if not self.demo_quality or any(len(c) != 3 or c[0] < 0 or c[2] < 0 for c in self.demo_quality):
            raise ConfigError(
                f"WorldConfig.demo_quality={self.demo_quality!r}: need (weight >= 0, mean, std >= 0) triples"
            )
        if sum(c[0] for c in self.demo_quality) <= 0:
            raise ConfigError(f"WorldConfig.demo_quality={self.demo_quality!r}: weights sum to 0")


def stream_rng(seed: int, *names: str) -> np.random.Generator:
    """A generator keyed by a seed and names; stable across processes (no Python hash())."""
    entropy = [int(seed) & 0xFFFFFFFF, int(seed) >> 32 & 0xFFFFFFFF]
    for name in names:
        data = name.encode("utf-8")
        entropy += [len(data), *data]  # the length keeps ("ab", "c") apart from ("a", "bc")
    return np.random.default_rng(np.random.SeedSequence(entropy))


def tokenize(text: str) -> list[str]:
    """Lower-cased words and punctuation marks of a text, as the gold reward reads them."""
    return _TOKEN_RE.findall(text.lower())


def _check_split(split: str) -> None:
    if not isinstance(split, str) or not split:
        raise ValueError(f"split={split!r}: must be a non-empty string such as 'train' or 'test'")


class ReviewWorld:
    """Prompts, demonstrations, candidate completions and the gold reward of the review world."""

    def __init__(self, config: WorldConfig = WorldConfig()):
        self.config = config
        self.products: tuple[str, ...] = tuple(PRODUCTS)[: config.num_products]
        self._product_set = frozenset(self.products)
        self._prompt_cache: dict[str, tuple[str | None, str | None]] = {}

    # ---- text generation -------------------------------------------------------------

    def aspects(self, product: str) -> tuple[str, ...]:
        """Aspects a review of `product` may talk about."""
        return PRODUCTS[product] + GENERIC_ASPECTS

    def words(self) -> list[str]:
        """Every word the generator can write, sorted."""
        vocab = {"review", "the", "mainly", NEGATION, "is", "works", "does", "work", "do", "i", "think", "it"}
        vocab.update(self.products)
        for p in self.products:
            vocab.update(self.aspects(p))
        vocab.update(LEXICON)
        vocab.update(INTENSIFIERS)
        for text in FILLERS + tuple(f for fs in FACTS.values() for f in fs):
            vocab.update(w for w in tokenize(text.replace("{s}", "")) if w.isalpha())
        return sorted(vocab)

    def _make_prompt(self, rng: np.random.Generator) -> str:
        product = self.products[int(rng.integers(len(self.products)))]
        if rng.random() < self.config.aspect_prompt_prob:
            aspects = self.aspects(product)
            return f"review the {product} , mainly the {aspects[int(rng.integers(len(aspects)))]} :"
        return f"review the {product} :"

    def prompts(self, n: int, *, split: str) -> list[str]:
        """The first n prompts of a split's stream (a prefix of any longer call)."""
        _check_split(split)
        rng = stream_rng(self.config.seed, split, "prompts")
        return [self._make_prompt(rng) for _ in range(n)]

    def parse_prompt(self, prompt: str) -> tuple[str | None, str | None]:
        """(product, aspect) named by a prompt; None for what it does not name."""
        if prompt not in self._prompt_cache:
            tokens = tokenize(prompt)
            product = aspect = None
            for i, tok in enumerate(tokens):
                if tok in self._product_set:
                    product = tok
                    aspects = self.aspects(tok)
                    aspect = next((t for t in tokens[i + 1:] if t in aspects), None)
                    break
            self._prompt_cache[prompt] = (product, aspect)
        return self._prompt_cache[prompt]

    def _phrase(self, table: dict[int, tuple[str, ...]], c: int, rng: np.random.Generator,
                intensifiers: Sequence[str]) -> tuple[bool, str]:
        """(negated, '[intensifier] word') realising sentiment class c."""
        cfg = self.config
        negated = abs(c) == 1 and rng.random() < cfg.negation_prob
        # A negated strong opposite lands on class c: -0.5 * -2 = +1 with the default factor.
        word_class = -2 * c if negated else c
        words = table[word_class]
        word = words[int(rng.integers(len(words)))]
        if c != 0 and rng.random() < cfg.intensifier_prob:
            word = f"{intensifiers[int(rng.integers(len(intensifiers)))]} {word}"
        return negated, word

    def _sentence(self, style: int, c: int, subject: str, rng: np.random.Generator) -> str:
        if c == 0 and rng.random() < self.config.fact_prob:
            facts = FACTS[style]
            return facts[int(rng.integers(len(facts)))].format(s=subject)
        use_verb_or_adverb = rng.random() < 0.5
        if style == 1 and use_verb_or_adverb:
            negated, verb = self._phrase(VERBS, c, rng, ("really",))
            return f"i {'do not ' if negated else ''}{verb} the {subject} ."
        opener = (f"the {subject}", f"i think the {subject}", "it")[style]
        if style != 1 and use_verb_or_adverb:
            negated, adv = self._phrase(ADVERBS, c, rng, tuple(INTENSIFIERS))
            return f"{opener} {'does not work' if negated else 'works'} {adv} ."
        negated, adj = self._phrase(ADJECTIVES, c, rng, tuple(INTENSIFIERS))
        return f"{opener} is {'not ' if negated else ''}{adj} ."

    def write_review(self, prompt: str, *, quality: float, rng: np.random.Generator) -> str:
        """A review of the prompt's product; quality in [-1, 1] sets its expected sentiment."""
        if not -1.0 <= quality <= 1.0:
            raise ValueError(f"write_review: quality={quality} must be in [-1, 1]")
        product, aspect = self.parse_prompt(prompt)
        if product is None:
            raise ValueError(f"write_review: prompt {prompt!r} names no known product {self.products}")
        cfg = self.config
        logits = cfg.quality_sharpness * quality * np.asarray(SENTIMENT_CLASSES, dtype=np.float64)
        class_p = np.exp(logits - logits.max())
        class_p /= class_p.sum()
        aspects = self.aspects(product)
        n_sentences = int(rng.integers(1, cfg.max_sentences + 1))
        sentences, n_fillers = [], 0
        for i in range(n_sentences):
            style = int(rng.integers(NUM_STYLES))
            c = SENTIMENT_CLASSES[int(rng.choice(len(SENTIMENT_CLASSES), p=class_p))]
            # The opening sentence names the product more often, as real reviews do.
            if rng.random() < (0.7 if i == 0 else 0.3):
                subject = product
            elif aspect is not None and rng.random() < 0.5:
                subject = aspect
            else:
                subject = aspects[int(rng.integers(len(aspects)))]
            sentence = self._sentence(style, c, subject, rng)
            if n_fillers < cfg.max_fillers and rng.random() < cfg.filler_prob:
                sentence = f"{FILLERS[int(rng.integers(len(FILLERS)))]} , {sentence}"
                n_fillers += 1
            sentences.append(sentence)
        return " ".join(sentences)

    def sample_demo_quality(self, rng: np.random.Generator) -> float:
        """A quality from the demonstrations' mixture, clipped to [-1, 1]."""
        comps = self.config.demo_quality
        weights = np.asarray([c[0] for c in comps], dtype=np.float64)
        _, mean, std = comps[int(rng.choice(len(comps), p=weights / weights.sum()))]
        return float(np.clip(rng.normal(mean, std), -1.0, 1.0))

    def sft_examples(self, n: int, *, split: str) -> list[dict]:
        """Demonstrations of mixed quality: {"prompt", "completion", "gold_reward"}."""
        _check_split(split)
        rng = stream_rng(self.config.seed, split, "sft")
        out = []
        for prompt in self.prompts(n, split=split):
            completion = self.write_review(prompt, quality=self.sample_demo_quality(rng), rng=rng)
            out.append({"prompt": prompt, "completion": completion,
                        "gold_reward": self.gold_reward(prompt, completion)})
        return out

    def completions(self, prompt: str, k: int, *, rng: np.random.Generator) -> list[str]:
        """k candidates with qualities stratified over [-1, 1]; distinct when a few retries allow."""
        if k < 1:
            raise ValueError(f"completions: k={k} must be >= 1")
        strata = rng.permutation(k)
        out: list[str] = []
        for j in range(k):
            for _ in range(8):
                quality = float(np.clip(-1.0 + 2.0 * (strata[j] + rng.random()) / k, -1.0, 1.0))
                text = self.write_review(prompt, quality=quality, rng=rng)
                if text not in out:
                    break
            out.append(text)
        return out

    def corpus(self, n: int) -> list[str]:
        """n lines "prompt completion" spanning all qualities, to train a tokenizer on."""
        rng = stream_rng(self.config.seed, "corpus", "corpus")
        lines = []
        for prompt in self.prompts(n, split="corpus"):
            quality = float(rng.uniform(-1.0, 1.0))
            lines.append(f"{prompt} {self.write_review(prompt, quality=quality, rng=rng)}")
        return lines

    # ---- gold reward ---------------------------------------------------------------

    def features(self, prompt: str, completion: str) -> dict[str, float]:
        """Parsed features of a completion, including the gold reward and its parts."""
        cfg = self.config
        tokens = tokenize(completion)
        n_fillers = 0
        for filler in _FILLER_TOKENS:
            width = len(filler)
            n_fillers += sum(tuple(tokens[i:i + width]) == filler for i in range(len(tokens) - width + 1))

        sentence_scores: list[float] = []
        score, mult, negations, nonempty = 0.0, 1.0, 0, False
        n_lexicon = n_negations = n_intensifiers = 0
        for tok in tokens + ["."]:
            if tok in _SENTENCE_ENDS:
                if nonempty:
                    sentence_scores.append(score)
                score, mult, negations, nonempty = 0.0, 1.0, 0, False
                continue
            nonempty = True
            if tok == NEGATION:
                negations += 1
                n_negations += 1
            elif tok in INTENSIFIERS:
                mult *= INTENSIFIERS[tok]
                n_intensifiers += 1
            elif tok in LEXICON:
                score += LEXICON[tok] * mult * cfg.negation_factor ** negations
                mult, negations = 1.0, 0
                n_lexicon += 1
        n_sentences = len(sentence_scores)
        sentiment_sum = float(sum(sentence_scores))
        sentiment_mean = sentiment_sum / max(n_sentences, cfg.min_sentences, 1)

        product, aspect = self.parse_prompt(prompt)
        token_set = set(tokens)
        mentions_product = float(product is not None and product in token_set)
        mentions_aspect = float(aspect is not None and aspect in token_set)
        off_topic = float(any(p in token_set for p in self.products if p != product))
        x = (sentiment_mean + cfg.relevance_bonus * (mentions_product + mentions_aspect)
             - cfg.off_topic_penalty * off_topic - cfg.filler_penalty * n_fillers)

        first = next((t for t in _skip_leading_fillers(tokens) if t.isalpha()), None)
        return {
            "n_sentences": float(n_sentences),
            "n_words": float(sum(t.isalpha() for t in tokens)),
            "n_fillers": float(n_fillers),
            "n_negations": float(n_negations),
            "n_intensifiers": float(n_intensifiers),
            "n_lexicon": float(n_lexicon),
            "sentiment_sum": sentiment_sum,
            "sentiment_mean": sentiment_mean,
            "mentions_product": mentions_product,
            "mentions_aspect": mentions_aspect,
            "off_topic": off_topic,
            "style": float(STYLE_OPENERS.get(first, -1)),
            "gold_reward": math.tanh(x / cfg.reward_scale),
        }

    def gold_reward(self, prompt: str, completion: str) -> float:
        """The gold reward r = tanh(x / reward_scale) of the module docstring."""
        return self.features(prompt, completion)["gold_reward"]

    def gold_rewards(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        """Gold rewards of aligned prompts and completions, float64 of shape [N]."""
        if len(prompts) != len(completions):
            raise ValueError(f"gold_rewards: {len(prompts)} prompts but {len(completions)} completions")
        reward_N = np.fromiter((self.gold_reward(p, c) for p, c in zip(prompts, completions)),
                               dtype=np.float64, count=len(prompts))
        return reward_N


def _skip_leading_fillers(tokens: list[str]) -> list[str]:
    """The tokens after any "<filler> ," that open a completion, so a filler does not set the style."""
    i, moved = 0, True
    while moved:
        moved = False
        for filler in _FILLER_TOKENS:
            end = i + len(filler)
            if tuple(tokens[i:end]) == filler and tokens[end:end + 1] == [","]:
                i, moved = end + 1, True
    return tokens[i:]
