"""Online rollouts: prompts -> samples (policy or geometric mixture) -> scores -> a training batch.

Dimension letters: B prompts, S completions per prompt, P prompt tokens, N new tokens,
L = P + N.

Every process reads the same global prompt batch and, after sampling on the mesh, holds the
same full arrays: scoring (the gold reward is Python on text) then needs no cross-host text
exchange, and the rollout goes back to the devices with the batch sharding.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np

from align import mesh as mesh_lib
from align import sampling
from align import scorers as scorers_lib
from align.data import pipeline
from align.evaluate import policy as policy_eval
from align.train import state as state_lib
from align.train import step as step_lib


class Rollouts:
    """Samples and scores the rollouts of an online objective for a Trainer."""

    def __init__(self, trainer):
        self.t = trainer
        cfg = trainer.cfg
        self.spec = trainer.objective.online
        if len(self.spec.mixture) != 2 or self.spec.score != "preference":
            raise ValueError(f"objective {trainer.objective.name!r}: the online loop samples two "
                             "completions per prompt scored by preference")
        self.scorer = self._make_scorer()
        self._fns: dict[str, Any] = {}

    def _make_scorer(self):
        cfg, t = self.t.cfg, self.t
        run = None
        if cfg.online.scorer != "gold":
            from align.train import runs
            if not cfg.online.scorer_workdir:
                raise ValueError(f"online.scorer={cfg.online.scorer!r} needs online.scorer_workdir "
                                 "(a finished run of that model)")
            run = runs.require_finished(cfg.online.scorer_workdir, t.workdir)
        labeler = None
        if t.data.world is not None:
            from align.data import sources
            from align.tasks.labelers import Labeler, LabelerConfig
            labeler = Labeler(t.data.world, LabelerConfig(**sources.world_settings(cfg)[1]))
        return scorers_lib.make(cfg.online.scorer, world=t.data.world, labeler=labeler, run=run,
                                mesh=t.mesh, rules=t.rules)

    def prompt_iterator(self):
        """Global prompt batches (the same on every process), shuffled, repeating forever."""
        c = self.t.cfg.data
        return pipeline.prompt_batches(
            self.t.data.prompts["train"], self.t.data.tokenizer, batch_size=c.batch_size,
            max_prompt_len=c.max_prompt_len, seed=self.t.cfg.seed, shuffle=True,
            num_epochs=None, pad_id=self.t.pad_id, process_index=0, process_count=1)

    def _sampler(self, mixture: bool):
        name = "mixture" if mixture else "policy"
        if name not in self._fns:
            t, o = self.t, self.t.cfg.online

            def fn(params, ref_params, beta, batch, key):
                model = state_lib.bind(t.model_def, params)
                policy = (sampling.mixture_policy(model, state_lib.bind(t.model_def, ref_params),
                                                  beta)
                          if mixture else sampling.model_policy(model))
                out = sampling.sample(
                    policy, batch["prompt_tokens"], batch["prompt_mask"],
                    example_ids_B=batch["example_id"], rng=key,
                    max_new_tokens=o.max_new_tokens, eos_id=t.data.tokenizer.eos_id,
                    temperature=o.temperature)
                return {"tokens": out["tokens_BxN"], "mask": out["mask_BxN"],
                        "finished": out["finished_B"]}

            self._fns[name] = jax.jit(mesh_lib.traced_under(fn, t.mesh, t.rules))
        return self._fns[name]

    def collect(self, state, prompts: dict[str, np.ndarray], step: int):
        """(rollout batch of full host arrays, rollout metrics) for one training step."""
        t = self.t
        dbatch = mesh_lib.put_global(prompts, t.mesh, t.rules)
        texts_prompt = [str(x) for x in prompts["prompt_text"]]
        key = jax.random.fold_in(step_lib.stream_key(state["rng"], "train_sample"), step)
        start = time.perf_counter()
        samples = []
        for slot, beta in enumerate(self.spec.mixture):
            # Distinct per-example keys per slot, independent of batch position and sharding.
            slot_batch = dict(dbatch)
            slot_batch["example_id"] = dbatch["example_id"] * len(self.spec.mixture) + slot
            fn = self._sampler(beta > 0)
            out = fn(state["params"], t.reference, np.float32(beta), slot_batch, key)
            samples.append(mesh_lib.to_host(out))
        sample_s = time.perf_counter() - start
        texts = [policy_eval.decode(t.data.tokenizer, s) for s in samples]
        seqs = [dict(zip(("tokens", "input_mask", "loss_mask"), policy_eval.join(
            prompts["prompt_tokens"], prompts["prompt_mask"], s["tokens"], s["mask"])))
            for s in samples]
        pref = self.scorer.preferences(
            texts_prompt, texts[0], texts[1], tokens_a=seqs[0]["tokens"],
            mask_a=seqs[0]["input_mask"], tokens_b=seqs[1]["tokens"],
            mask_b=seqs[1]["input_mask"])
        rollout = {f"chosen_{k}": v for k, v in seqs[0].items()}
        rollout.update({f"rejected_{k}": v for k, v in seqs[1].items()})
        rollout["pref"] = np.asarray(pref, np.float32)
        rollout["example_id"] = np.asarray(prompts["example_id"], np.int32)
        new_tokens = float(sum(s["mask"].sum() for s in samples))
        metrics = {
            "pref_mean": float(np.mean(pref)),
            "sample_length": float(samples[0]["mask"].sum(-1).mean()),
            "unfinished_fraction": float(1.0 - samples[0]["finished"].mean()),
            "sampler_tokens_per_s": new_tokens / max(sample_s, 1e-9),
        }
        if t.data.world is not None:
            metrics["gold_reward"] = float(np.mean(t.data.world.gold_rewards(texts_prompt,
                                                                             texts[0])))
        return rollout, metrics


def minibatches(rollout: dict[str, np.ndarray], n: int):
    """Rows i, i+n, i+2n, ...: n minibatches of equal size."""
    m = len(rollout["example_id"])
    if m % n:
        raise ValueError(f"online.minibatches={n} does not divide the {m} rollout rows")
    return [{k: v[i::n] for k, v in rollout.items()} for i in range(n)]

