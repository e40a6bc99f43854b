"""Trained reward models as text scorers: `rewards(prompts, completions) -> r_N` (float64).

Dimension letters: N texts, B batch rows, T tokens.

`from_run(workdir, member=p)` scores with the reward model a run trained (one member of a
population run). A (prompt, completion) is encoded as the run's data pipeline encodes it for
training ([bos] + prompt, cut from the left to data.max_prompt_len, then the completion and
[eos]), and its reward is the model's value at the last token minus the run's saved offset, so
that the scores equal those the run's own scorer gives online. A text longer than the model's
max_len is an error naming its row: nothing is cut, since a reward read off a cut text is the
reward of another text. Batches are right-padded to a power-of-two length, so few shapes
compile. `from_function(fn)` wraps any (prompts, completions) -> rewards function (the world's
gold reward, say) in the same interface; `align.analysis.pretrained_reward` loads Hugging Face
sequence-classification reward models.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Sequence

import jax
import numpy as np

from align import errors
from align import mesh as mesh_lib
from align.data import encoding, sources
from align.models import specs
from align.objectives import reward_model
from align.train import runs
from align.train import state as state_lib


class FunctionRewardModel:
    """Any function of (prompts, completions) as a reward model."""

    def __init__(self, fn: Callable[[Sequence[str], Sequence[str]], np.ndarray], name: str):
        self.fn, self.name = fn, name

    def rewards(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        _check_aligned(prompts, completions)
        return np.asarray(self.fn(list(prompts), list(completions)), np.float64).reshape(-1)


def from_function(fn, name: str = "function") -> FunctionRewardModel:
    return FunctionRewardModel(fn, name)


def _check_aligned(prompts, completions) -> None:
    if len(prompts) != len(completions):
        raise ValueError(f"rewards: {len(prompts)} prompts but {len(completions)} completions")


def _bucket(n: int, cap: int) -> int:
    return min(cap, 1 << max(3, (n - 1).bit_length()))


def _offset(workdir: str, member: int | None) -> float:
    path = os.path.join(workdir, reward_model.OFFSET_ARTIFACT + ".json")
    if not os.path.exists(path):
        return 0.0
    with open(path) as f:
        data = json.load(f)
    if "members" in data:
        return float(data["members"][member or 0]["offset"])
    return float(data["offset"])


class RunRewardModel:
    """The reward model of a finished run (one member of a population); module docstring."""

    def __init__(self, workdir: str, *, member: int | None = None, devices=None,
                 batch_size: int = 64):
        workdir = os.path.abspath(workdir)
        run = runs.read_run(workdir)
        if run is None or not run.finished:
            raise FileNotFoundError(f"{workdir} holds no finished run")
        self.mesh = mesh_lib.make_mesh({"data": -1, "fsdp": 1, "tensor": 1},
                                       list(devices or jax.devices())[:1])
        self.rules = mesh_lib.logical_rules(run.cfg.mesh.rules)
        spec, self.params, _ = runs.final_params(run, self.mesh, self.rules, member=member)
        if spec.name != specs.scalar_model().name:
            raise errors.ConfigError(f"{workdir} trained a {spec.name!r} model, not a reward "
                                     "model (a scalar head)", key="objective.name")
        self.cfg, self.workdir, self.member = run.cfg, workdir, member
        self.name = os.path.basename(workdir) + ("" if member is None else f"[{member}]")
        self.offset = _offset(workdir, member)
        self.tokenizer = sources.load_tokenizer(run.tokenizer_path,
                                                sources.joint_encoding(run.cfg))
        self.max_len = int(run.model_cfg.max_len)
        self.batch_size = int(batch_size)
        c = run.cfg.data
        self.pad_id = self.tokenizer.pad_id if c.pad_id < 0 else int(c.pad_id)
        model_def = state_lib.describe(spec.make_fn(run.model_cfg))

        def fn(p, b):
            return reward_model.reward_scores(state_lib.bind(model_def, p), b["tokens"],
                                              b["input_mask"])

        self._fn = jax.jit(mesh_lib.traced_under(fn, self.mesh, self.rules))

    def token_ids(self, i: int, prompt: str, completion: str) -> list[int]:
        """The ids the model scores for row i, by the run's training encoding: the prompt cut
        from the left to data.max_prompt_len as in training, the completion never cut."""
        prefix, (comp,), _ = encoding.encode_record(
            self.tokenizer, i, prompt, [("completion", completion)],
            max_prompt_len=int(self.cfg.data.max_prompt_len), joint=None)
        ids = list(prefix) + list(comp.ids)
        if len(ids) > self.max_len:
            raise errors.DataError(f"row {i}: prompt + completion is {len(ids)} tokens, more "
                                   f"than the model's max_len {self.max_len}")
        return ids

    def rewards(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        _check_aligned(prompts, completions)
        seqs = [self.token_ids(i, p, c) for i, (p, c) in enumerate(zip(prompts, completions))]
        out = np.zeros(len(seqs), np.float64)
        for start in range(0, len(seqs), self.batch_size):
            rows = seqs[start:start + self.batch_size]
            t = _bucket(max(len(r) for r in rows), self.max_len)
            tokens = np.full((self.batch_size, t), self.pad_id, np.int32)
            mask = np.zeros((self.batch_size, t), np.int32)
            for j, r in enumerate(rows):
                tokens[j, :len(r)], mask[j, :len(r)] = r, 1
            batch = mesh_lib.to_global({"tokens": tokens, "input_mask": mask}, self.mesh,
                                       self.rules)
            raw = mesh_lib.to_host(self._fn(self.params, batch)).astype(np.float64)
            out[start:start + len(rows)] = raw[:len(rows)] - self.offset
        return out


def from_run(workdir: str, *, member: int | None = None, devices=None,
             batch_size: int = 64) -> RunRewardModel:
    return RunRewardModel(workdir, member=member, devices=devices, batch_size=batch_size)


def members(workdir: str, *, devices=None, batch_size: int = 64) -> list[RunRewardModel]:
    """Every member's reward model of a run (one for a single run)."""
    run = runs.read_run(os.path.abspath(workdir))
    if run is None:
        raise FileNotFoundError(f"{workdir} holds no run")
    if not runs.is_population(run):
        return [from_run(workdir, devices=devices, batch_size=batch_size)]
    return [from_run(workdir, member=p, devices=devices, batch_size=batch_size)
            for p in range(runs.population_size(run))]
