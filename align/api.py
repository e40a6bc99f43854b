"""A Python API for notebooks: train a config, load a finished run, generate from it.

Dimension letters: B prompts, P prompt tokens, N new tokens.

    from align import api
    api.train("configs/sft.py:size=tiny,steps=50", "runs/sft")   # returns the report (Markdown)
    run = api.load("runs/sft")            # config, model, parameters, tokenizer of the last step
    run.generate(["review the kettle :"])  # -> ["the kettle is great . ..."]

Paths follow the command line's rule: relative to the current directory.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import jax
import numpy as np

from align import config as config_lib
from align import errors
from align import main as main_lib
from align import mesh as mesh_lib
from align import samples as policy_eval
from align.data import pipeline, sources
from align.models import specs
from align.train import runs
from align.train import state as state_lib


def train(config: str, workdir: str, overrides: Sequence[str] = ()) -> str:
    """Trains `config` ("configs/x.py:k=v") in `workdir` as `align train` does; returns the report.

    overrides: "a.b=v" or "--config.a.b=v" strings. A finished run is not trained again.
    """
    cfg = config_lib.resolve(config, [o if o.startswith("--") else f"--config.{o}"
                                      for o in overrides])
    return main_lib.run(cfg, workdir)


@dataclasses.dataclass
class LoadedRun:
    """A run's newest parameters with what is needed to use them."""

    workdir: str
    cfg: Any  # the run's validated config
    step: int
    params: Any  # the trained module's parameters (a pure dict of arrays)
    spec: specs.ModelSpec  # the trained module ("lm", "lm_value", "scalar", "preference")
    tokenizer: Any
    mesh: Any
    model_cfg: Any

    @property
    def kind(self) -> str:
        return self.spec.name

    @property
    def lm_params(self):
        """The language model's parameters inside the trained module."""
        if self.spec.language_model is None:
            raise errors.InputError(f"{self.workdir} trained a {self.kind!r} model, which holds no "
                             "language model")
        return self.spec.language_model(self.params)

    @property
    def _lm_def(self):
        return state_lib.describe(specs.language_model().make_fn(self.model_cfg))

    @property
    def model(self):
        """The language model as an NNX module with the run's parameters (call it on tokens)."""
        return state_lib.bind(self._lm_def, self.lm_params)

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int | None = None,
                 temperature: float | None = None, top_k: int | None = None,
                 seed: int = 0) -> list[str]:
        """Completions of `prompts` sampled from the run's policy (eval.* settings by default)."""
        if isinstance(prompts, str):
            raise TypeError("generate takes a list of prompts; wrap one prompt in a list")
        e, c = self.cfg.eval, self.cfg.data
        new = int(max_new_tokens or e.max_new_tokens)
        if c.max_prompt_len + new > self.model_cfg.max_len:
            raise config_lib.ConfigError(
                f"data.max_prompt_len + max_new_tokens = {c.max_prompt_len} + {new} exceeds the "
                f"model's max_len={self.model_cfg.max_len}")
        pad_id = self.tokenizer.pad_id if c.pad_id < 0 else int(c.pad_id)
        rows = [pipeline.prompt_example(i, {"prompt": str(p)}, self.tokenizer,
                                        max_prompt_len=c.max_prompt_len, pad_id=pad_id)
                for i, p in enumerate(prompts)]
        # The batch splits over the mesh's devices: pad it with copies of the first prompt.
        n = len(rows)
        width = mesh_lib.batch_divisor(self.mesh, self._rules)
        rows += [rows[0]] * (-n % width)
        batch = {k: np.stack([r[k] for r in rows]) for k in ("prompt_tokens", "prompt_mask")}
        batch["example_id"] = np.arange(len(rows), dtype=np.int32)
        lm_def = self._lm_def

        def fn(p, b, key):
            return policy_eval.sample_fn(
                state_lib.bind(lm_def, p), b, key, max_new_tokens=new,
                temperature=float(e.temperature if temperature is None else temperature),
                top_k=int(e.top_k if top_k is None else top_k), eos_id=self.tokenizer.eos_id)

        out = mesh_lib.to_host(jax.jit(mesh_lib.traced_under(fn, self.mesh, self._rules))(
            self.lm_params, mesh_lib.put_global(batch, self.mesh, self._rules),
            jax.random.key(seed)))
        return policy_eval.decode(self.tokenizer, out)[:n]

    @property
    def _rules(self):
        return mesh_lib.logical_rules(self.cfg.mesh.rules)


def load(workdir: str, *, devices=None, member: int | None = None) -> LoadedRun:
    """The newest checkpoint of the run in `workdir`, on a data-parallel mesh of `devices`
    (default: all), with its config and tokenizer; of a population run, member `member`'s."""
    workdir = os.path.abspath(workdir)
    run = runs.read_run(workdir)
    if run is None or run.latest_step is None:
        raise FileNotFoundError(f"{workdir} holds no run with a checkpoint")
    # Parameters are replicated over the data axis, whatever mesh the run trained on.
    mesh = mesh_lib.make_mesh({"data": -1, "fsdp": 1, "tensor": 1}, devices)
    spec, params, step = runs.final_params(run, mesh, mesh_lib.logical_rules(run.cfg.mesh.rules),
                                          member=member)
    tokenizer = sources.load_tokenizer(run.tokenizer_path)
    return LoadedRun(workdir=workdir, cfg=run.cfg, step=int(step), params=params, spec=spec,
                     tokenizer=tokenizer, mesh=mesh, model_cfg=run.model_cfg)
