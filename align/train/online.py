"""Online rollouts: prompts -> samples (policy or geometric mixture) -> scores -> a training batch.

Preference-scored objectives get two completions per prompt as a pairs batch (chosen_* = a,
rejected_* = b, pref = P(a ≻ b)); reward-scored ones get S completions per prompt as rows
{tokens, input_mask, loss_mask, score, finished}, prompt-major.

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
import jax.numpy as jnp
import numpy as np

from align import mesh as mesh_lib
from align import sampling
from align import scorers as scorers_lib
from align.data import pipeline
from align.evaluate import policy as policy_eval
from align.objectives.base import SCORES
from align.train import state as state_lib
from align.train import step as step_lib


class Rollouts:
    """Samples and scores the rollouts of an online objective for a Trainer."""

    def __init__(self, trainer):
        self.t = trainer
        self.spec = spec = trainer.objective.online
        name = trainer.objective.name
        if spec.score not in SCORES:
            raise ValueError(f"objective {name!r}: OnlineSpec.score must be one of {SCORES}, "
                             f"got {spec.score!r}")
        if spec.score == "preference" and len(spec.mixture) != 2:
            raise ValueError(f"objective {name!r}: preference-scored rollouts sample two "
                             f"completions per prompt, got mixture {spec.mixture}")
        if spec.score == "reward" and (not spec.mixture or any(spec.mixture)):
            raise ValueError(f"objective {name!r}: reward-scored rollouts sample from the policy "
                             f"(mixture weights 0), got mixture {spec.mixture}")
        if spec.score == "reward" and trainer.cfg.online.scorer == "preference_model":
            raise ValueError(f"objective {name!r} scores each completion with a reward; "
                             "online.scorer='preference_model' only compares pairs (use 'gold' "
                             "or 'reward_model')")
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
                policy = (sampling.mixture_policy(model, state_lib.bind(t.lm_def, ref_params),
                                                  beta)
                          if mixture else sampling.model_policy(model))
                out = sampling.sample(
                    policy, batch["prompt_tokens"], batch["prompt_mask"],
                    example_ids_B=batch["example_id"], rng=key,
                    max_new_tokens=o.max_new_tokens, eos_id=t.data.tokenizer.eos_id,
                    temperature=o.temperature, pad_id=t.pad_id)
                return {"tokens": out["tokens_BxN"], "mask": out["mask_BxN"],
                        "finished": out["finished_B"],
                        "policy_logp": jnp.sum(out["policy_logp_BxN"], -1),
                        "entropy_sum": jnp.sum(out["entropy_BxN"] * out["mask_BxN"], -1)}

            self._fns[name] = jax.jit(mesh_lib.traced_under(fn, t.mesh, t.rules))
        return self._fns[name]

    def _draw(self, state, rows, key, *, beta: float, sample_ids):
        """One completion per row, keyed by its sample id (not its position): host arrays."""
        batch = dict(rows, example_id=np.asarray(sample_ids, np.int32))
        dbatch = mesh_lib.put_global(batch, self.t.mesh, self.t.rules)
        out = self._sampler(beta > 0)(state["params"], self.t.reference, np.float32(beta),
                                      dbatch, key)
        return mesh_lib.to_host(out)

    def collect(self, state, prompts: dict[str, np.ndarray], step: int):
        """(rollout batch of full host arrays, rollout metrics) for one training step."""
        key = jax.random.fold_in(step_lib.stream_key(state["rng"], "train_sample"), step)
        ids = np.asarray(prompts["example_id"], np.int32)
        start = time.perf_counter()
        if self.spec.score == "preference":
            # Distinct keys per slot, independent of batch position and sharding.
            samples = [self._draw(state, prompts, key, beta=beta, sample_ids=ids * 2 + i)
                       for i, beta in enumerate(self.spec.mixture)]
            prompt_rows = prompts
        else:
            # All S completions of a prompt come from the policy: one sampler call on the
            # prompts repeated S times (rows prompt-major: row b·S + s is sample s of prompt b).
            s = len(self.spec.mixture)
            prompt_rows = {k: np.repeat(np.asarray(v), s, axis=0) for k, v in prompts.items()}
            slots_M = np.tile(np.arange(s, dtype=np.int32), len(ids))
            samples = [self._draw(state, prompt_rows, key, beta=0.0,
                                  sample_ids=prompt_rows["example_id"] * s + slots_M)]
        sample_s = time.perf_counter() - start
        texts_prompt = [str(x) for x in prompt_rows["prompt_text"]]
        texts = [policy_eval.decode(self.t.data.tokenizer, x) for x in samples]
        seqs = [dict(zip(("tokens", "input_mask", "loss_mask"), policy_eval.join(
            prompt_rows["prompt_tokens"], prompt_rows["prompt_mask"], x["tokens"], x["mask"])))
            for x in samples]
        first = samples[0]
        new_tokens = float(sum(x["mask"].sum() for x in samples))
        metrics = {
            "sample_length": float(first["mask"].sum(-1).mean()),
            "unfinished_fraction": float(1.0 - first["finished"].mean()),
            "entropy": float(first["entropy_sum"].sum() / max(first["mask"].sum(), 1.0)),
            "sampler_tokens_per_s": new_tokens / max(sample_s, 1e-9),
        }
        if self.t.data.world is not None:
            metrics["gold_reward"] = float(np.mean(self.t.data.world.gold_rewards(
                texts_prompt, texts[0])))
        if self.spec.score == "preference":
            rollout = self._pairs(texts_prompt, texts, seqs, samples)
            metrics["pref_mean"] = float(np.mean(rollout["pref"]))
        else:
            rollout = dict(seqs[0])
            rollout["score"] = np.asarray(self.scorer.rewards(
                texts_prompt, texts[0], tokens_MxL=seqs[0]["tokens"],
                input_mask_MxL=seqs[0]["input_mask"]), np.float32)
            rollout["finished"] = first["finished"].astype(np.float32)
            metrics["reward"] = float(np.mean(rollout["score"]))
        rollout["example_id"] = np.asarray(prompt_rows["example_id"], np.int32)
        return rollout, metrics

    def _pairs(self, texts_prompt, texts, seqs, samples):
        """a as chosen_*, b as rejected_* (names only), P(a ≻ b) as pref."""
        pref = self.scorer.preferences(
            texts_prompt, texts[0], texts[1], tokens_a=seqs[0]["tokens"],
            mask_a=seqs[0]["input_mask"], tokens_b=seqs[1]["tokens"],
            mask_b=seqs[1]["input_mask"])
        rollout = {f"chosen_{k}": v for k, v in seqs[0].items()}
        rollout.update({f"rejected_{k}": v for k, v in seqs[1].items()})
        rollout["pref"] = np.asarray(pref, np.float32)
        # log π_θ(a) as sampled: the KL estimate when a comes from the policy itself.
        rollout["chosen_policy_logp"] = samples[0]["policy_logp"].astype(np.float32)
        return rollout


def minibatches(rollout: dict[str, np.ndarray], n: int):
    """Rows i, i+n, i+2n, ...: n minibatches of equal size."""
    m = len(next(iter(rollout.values())))
    if m % n:
        raise ValueError(f"online.minibatches={n} does not divide the {m} rollout rows")
    return [{k: v[i::n] for k, v in rollout.items()} for i in range(n)]

