"""Scorers behind one interface: the synthetic world's gold reward and labeler, a trained reward
model, and a trained pairwise preference model.

Dimension letters: M sequences, L tokens (prompt + completion).

Every scorer answers both questions an online objective asks:
  rewards(...)      -> r_M, a scalar per completion (PPO, best-of-n, RLOO);
  preferences(...)  -> P_M = P(a ≻ b | x) per pair (online DPO / IPO, IPO-MD, Nash-MD).
A reward scorer turns rewards into preferences with Bradley–Terry, σ(r_a − r_b); a preference
model has no rewards of its own, so its `rewards` are P(y ≻ reference completion) when one is
given, and an error otherwise.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import jax
import numpy as np

from align import errors
from align import mesh as mesh_lib
from align.models import specs
from align.objectives import preference_model, reward_model
from align.train import runs
from align.train import state as state_lib


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


class GoldScorer:
    """The synthetic world's gold reward; preferences from its labeler (noise, biases, cycles)."""

    def __init__(self, world, labeler=None):
        self.world, self.labeler = world, labeler

    def rewards(self, prompts: Sequence[str], texts: Sequence[str], **_) -> np.ndarray:
        return np.asarray(self.world.gold_rewards(list(prompts), list(texts)), np.float64)

    def preferences(self, prompts, texts_a, texts_b, **_) -> np.ndarray:
        if self.labeler is None:
            return _sigmoid(self.rewards(prompts, texts_a) - self.rewards(prompts, texts_b))
        return np.asarray([self.labeler.preference_prob(p, a, b)
                           for p, a, b in zip(prompts, texts_a, texts_b)], np.float64)


class _ModelScorer:
    """A trained model from a finished run, evaluated on the training mesh."""

    def __init__(self, run, mesh, rules, kind: str):
        spec, params, _ = runs.final_params(run, mesh, rules)
        if spec.name != kind:
            raise errors.ConfigError(f"{run.workdir} trained a {spec.name!r} model, not a {kind!r} one")
        self.model_def = state_lib.describe(spec.make_fn(run.model_cfg))
        self.params, self.mesh, self.rules = params, mesh, rules

    def _global(self, arrays):
        return mesh_lib.to_global({k: np.asarray(v) for k, v in arrays.items()}, self.mesh,
                                  self.rules)

    @staticmethod
    def _host(x) -> np.ndarray:
        return mesh_lib.to_host(x).astype(np.float64)


class RewardModelScorer(_ModelScorer):
    """A Bradley–Terry reward model, shifted by its saved offset (demonstrations score 0)."""

    def __init__(self, run, mesh, rules):
        super().__init__(run, mesh, rules, specs.scalar_model().name)
        path = os.path.join(run.workdir, reward_model.OFFSET_ARTIFACT + ".json")
        self.offset = json.load(open(path))["offset"] if os.path.exists(path) else 0.0

        def fn(p, b):
            model = state_lib.bind(self.model_def, p)
            return reward_model.reward_scores(model, b["tokens"], b["input_mask"])

        self._fn = jax.jit(mesh_lib.traced_under(fn, mesh, rules))

    def rewards(self, prompts=None, texts=None, *, tokens_MxL, input_mask_MxL, **_):
        del prompts, texts
        raw = self._fn(self.params, self._global({"tokens": tokens_MxL,
                                                  "input_mask": input_mask_MxL}))
        return self._host(raw) - self.offset

    def preferences(self, prompts=None, texts_a=None, texts_b=None, *, tokens_a, mask_a,
                    tokens_b, mask_b, **_):
        r_a = self.rewards(tokens_MxL=tokens_a, input_mask_MxL=mask_a)
        r_b = self.rewards(tokens_MxL=tokens_b, input_mask_MxL=mask_b)
        return _sigmoid(r_a - r_b)


class PreferenceModelScorer(_ModelScorer):
    """A pairwise preference model P(y ≻ y' | x), possibly intransitive."""

    def __init__(self, run, mesh, rules):
        super().__init__(run, mesh, rules, specs.preference_model().name)

        def fn(p, b):
            model = state_lib.bind(self.model_def, p)
            return preference_model.preference_prob(model, b["tokens_a"], b["mask_a"],
                                                    b["tokens_b"], b["mask_b"])

        self._fn = jax.jit(mesh_lib.traced_under(fn, mesh, rules))

    def preferences(self, prompts=None, texts_a=None, texts_b=None, *, tokens_a, mask_a,
                    tokens_b, mask_b, **_):
        del prompts, texts_a, texts_b
        out = self._fn(self.params, self._global(
            {"tokens_a": tokens_a, "mask_a": mask_a, "tokens_b": tokens_b, "mask_b": mask_b}))
        return self._host(out)

    def rewards(self, prompts=None, texts=None, *, tokens_MxL=None, input_mask_MxL=None,
                reference_tokens_MxL=None, reference_mask_MxL=None, **_):
        if reference_tokens_MxL is None:
            raise ValueError("a preference model scores pairs: rewards need reference completions "
                             "(reference_tokens_MxL) to compare against")
        return self.preferences(tokens_a=tokens_MxL, mask_a=input_mask_MxL,
                                tokens_b=reference_tokens_MxL, mask_b=reference_mask_MxL)


def make(kind: str, *, world=None, labeler=None, run=None, mesh=None, rules=None):
    """A scorer by name: "gold" (the synthetic world), "reward_model" or "preference_model" (a run)."""
    if kind not in ("gold", "reward_model", "preference_model"):
        raise errors.ConfigError(f"unknown scorer {kind!r}; valid: gold, reward_model, preference_model")
    if kind == "gold":
        if world is None:
            raise errors.ConfigError("the gold scorer needs the synthetic world (data.source='reviews')")
        return GoldScorer(world, labeler)
    if run is None:
        raise errors.ConfigError(f"scorer {kind!r} needs a finished run (its workdir)")
    if kind == "reward_model":
        return RewardModelScorer(run, mesh, rules)
    return PreferenceModelScorer(run, mesh, rules)
