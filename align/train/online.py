"""Online rollouts: prompts -> samples (policy or geometric mixture) -> scores -> a training batch.

Preference-scored objectives get two completions per prompt as a pairs batch (chosen_* = a,
rejected_* = b, pref = P(a ≻ b)); reward-scored ones get S completions per prompt as rows
{tokens, input_mask, loss_mask, score, finished}, prompt-major.

Dimension letters: B prompts, S completions per prompt, P prompt tokens, N new tokens,
L = P + N.

Every process reads the same global prompt batch and, after sampling on the mesh, holds the
same full arrays: scoring (the gold reward is Python on text) then needs no cross-host text
exchange. The scored rollout goes to the devices once, with the batch sharding; `prepare`
and the epochs x minibatches of updates then read it there (minibatches by a jitted gather).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from align import errors
from align import mesh as mesh_lib
from align import sampling
from align import samples as samples_lib
from align.data import sources
from align.objectives.base import SCORES
from align.tasks.labelers import Labeler, LabelerConfig
from align.train import population as population_lib
from align.train import runs
from align.train import scorers as scorers_lib
from align.train import state as state_lib
from align.train import step as step_lib


class Rollouts:
    """Samples and scores the rollouts of an online objective (built by `setup.build`)."""

    def __init__(self, setup):
        self.t = setup
        self.spec = spec = setup.objective.online
        name = setup.objective.name
        if spec.score not in SCORES:
            raise ValueError(f"objective {name!r}: OnlineSpec.score must be one of {SCORES}, "
                             f"got {spec.score!r}")
        if spec.samples < 1 or (spec.mixture and len(spec.mixture) != spec.samples):
            raise ValueError(f"objective {name!r}: OnlineSpec.mixture has one β per sample "
                             f"({spec.samples}), got {spec.mixture}")
        if spec.score == "preference" and spec.samples != 2:
            raise ValueError(f"objective {name!r}: preference-scored rollouts sample two "
                             f"completions per prompt, got samples={spec.samples}")
        if spec.score == "reward" and any(spec.betas()):
            raise ValueError(f"objective {name!r}: reward-scored rollouts sample from the policy "
                             f"(mixture weights 0), got mixture {spec.mixture}")
        if spec.score == "reward" and setup.cfg.online.scorer == "preference_model":
            raise errors.ConfigError(f"objective {name!r} scores each completion with a reward; "
                             "online.scorer='preference_model' only compares pairs (use 'gold' "
                             "or 'reward_model')")
        self.scorer = self._make_scorer()
        self._fns = {mixture: self._sampler(mixture) for mixture in (False, True)}

    def _make_scorer(self):
        cfg, t = self.t.cfg, self.t
        run = None
        if cfg.online.scorer != "gold":
            if not cfg.online.scorer_workdir:
                raise errors.ConfigError(f"online.scorer={cfg.online.scorer!r} needs online.scorer_workdir "
                                 "(a finished run of that model)")
            run = runs.require_finished(cfg.online.scorer_workdir, t.workdir)
        labeler = None
        if t.data.world is not None:
            labeler = Labeler(t.data.world, LabelerConfig(**sources.world_settings(cfg)[1]))
        return scorers_lib.make(cfg.online.scorer, world=t.data.world, labeler=labeler, run=run,
                                mesh=t.mesh, rules=t.rules)

    def _sampler(self, mixture: bool):
        """(params, reference params, β, prompt batch, key) -> samples, jitted. For a
        population: member-stacked params (and reference, when each member has its own), [P]
        keys, and every output with a leading member axis, from one decoding loop."""
        t, o = self.t, self.t.cfg.online
        settings = dict(max_new_tokens=o.max_new_tokens, eos_id=t.data.tokenizer.eos_id,
                        temperature=o.temperature, pad_id=t.pad_id)

        def policy_of(params, ref_params, beta):
            model = state_lib.bind(t.model_def, params)
            return (sampling.mixture_policy(model, state_lib.bind(t.lm_def, ref_params), beta)
                    if mixture else sampling.model_policy(model))

        def outputs(out):
            return {"tokens": out["tokens_BxN"], "mask": out["mask_BxN"],
                    "finished": out["finished_B"],
                    "policy_logp": jnp.sum(out["policy_logp_BxN"], -1),
                    "entropy_sum": jnp.sum(out["entropy_BxN"] * out["mask_BxN"], -1)}

        pop = t.population
        if pop is None:
            def fn(params, ref_params, beta, batch, key):
                return outputs(sampling.sample(
                    policy_of(params, ref_params, beta), batch["prompt_tokens"],
                    batch["prompt_mask"], example_ids_B=batch["example_id"], rng=key,
                    **settings))
        else:
            def vmap(f, *, in_axes, out_axes=0):
                return population_lib.vmap(f, pop, in_axes, out_axes)

            def fn(params, ref_params, beta, batch, keys):
                if t.reference_stacked:  # each member's reference is its own start
                    members, of = (params, ref_params), lambda m: policy_of(m[0], m[1], beta)
                else:
                    members, of = params, lambda p: policy_of(p, ref_params, beta)
                return outputs(sampling.population_sample(
                    of, members, keys, batch["prompt_tokens"], batch["prompt_mask"],
                    example_ids_B=batch["example_id"], vmap=vmap, **settings))

        return jax.jit(mesh_lib.traced_under(fn, t.mesh, t.rules))

    def _draw(self, state, rows, key, *, beta: float, sample_ids):
        """One completion per row, keyed by its sample id (not its position): host arrays."""
        batch = dict(rows, example_id=np.asarray(sample_ids, np.int32))
        dbatch = mesh_lib.put_global(batch, self.t.mesh, self.t.rules)
        out = self._fns[beta > 0](state["params"], self.t.reference, np.float32(beta),
                                      dbatch, key)
        return mesh_lib.to_host(out)

    def collect(self, state, prompts: dict[str, np.ndarray], step: int):
        """(rollout batch of full host arrays, rollout metrics) for one training step. For a
        population every field and metric has a leading member axis: each member samples
        from its own policy on the same prompts, and its samples are scored on their own."""
        pop = self.t.population
        sample_key = lambda rng: jax.random.fold_in(step_lib.stream_key(rng, "train_sample"),
                                                    step)
        key = sample_key(state["rng"]) if pop is None else jax.vmap(sample_key)(state["rng"])
        ids = np.asarray(prompts["example_id"], np.int32)
        start = time.perf_counter()
        if self.spec.score == "preference":
            # Distinct keys per slot, independent of batch position and sharding.
            samples = [self._draw(state, prompts, key, beta=beta, sample_ids=ids * 2 + i)
                       for i, beta in enumerate(self.spec.betas())]
            prompt_rows = prompts
        else:
            # All S completions of a prompt come from the policy: one sampler call on the
            # prompts repeated S times (rows prompt-major: row b·S + s is sample s of prompt b).
            s = self.spec.samples
            prompt_rows = {k: np.repeat(np.asarray(v), s, axis=0) for k, v in prompts.items()}
            slots_M = np.tile(np.arange(s, dtype=np.int32), len(ids))
            samples = [self._draw(state, prompt_rows, key, beta=0.0,
                                  sample_ids=prompt_rows["example_id"] * s + slots_M)]
        sample_s = time.perf_counter() - start
        new_tokens = float(sum(x["mask"].sum() for x in samples))
        if pop is None:
            rollout, metrics = self._scored(prompt_rows, samples)
        else:
            members = [self._scored(prompt_rows, [{k: v[p] for k, v in x.items()}
                                                  for x in samples])
                       for p in range(pop.size)]
            rollout = {k: np.stack([r[k] for r, _ in members]) for k in members[0][0]}
            metrics = {k: np.asarray([m[k] for _, m in members], np.float64)
                       for k in members[0][1]}
        metrics["sampler_tokens_per_s"] = new_tokens / max(sample_s, 1e-9)
        return rollout, metrics

    def _scored(self, prompt_rows, samples):
        """One run's (or member's) sampled completions as a scored rollout, with its metrics."""
        texts_prompt = [str(x) for x in prompt_rows["prompt_text"]]
        texts = [samples_lib.decode(self.t.data.tokenizer, x) for x in samples]
        seqs = [dict(zip(("tokens", "input_mask", "loss_mask"), samples_lib.join(
            prompt_rows["prompt_tokens"], prompt_rows["prompt_mask"], x["tokens"], x["mask"])))
            for x in samples]
        first = samples[0]
        metrics = {
            "sample_length": float(first["mask"].sum(-1).mean()),
            "unfinished_fraction": float(1.0 - first["finished"].mean()),
            "entropy": float(first["entropy_sum"].sum() / max(first["mask"].sum(), 1.0)),
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


def minibatch_rows(m: int, n: int) -> list[np.ndarray]:
    """Rows i, i+n, i+2n, ... of an m-row rollout: n minibatches of equal size."""
    if m % n:
        raise errors.ConfigError(f"online.minibatches={n} does not divide the {m} rollout rows")
    return [np.arange(i, m, n, dtype=np.int32) for i in range(n)]


def count_tokens(batch) -> float:
    return float(sum(np.asarray(v).sum() for k, v in batch.items() if k.endswith("input_mask")))


def advance(setup, state, prompts, step: int):
    """One online train step: sample and score a rollout, `prepare` it once on the devices, then
    epochs x minibatches optimizer steps on minibatches gathered on the devices.

    Returns (state, metrics as device arrays or floats, tokens in the rollout); nothing waits
    for the updates to finish.
    """
    o, pop = setup.cfg.online, setup.population
    rollout, rollout_metrics = setup.rollouts.collect(state, prompts, step)
    n_tokens = count_tokens(rollout)
    prepare_key = lambda rng: jax.random.fold_in(step_lib.stream_key(rng, "rollout_prepare"),
                                                 step)
    if pop is None:
        grollout = mesh_lib.put_global(rollout, setup.mesh, setup.rules)
        key = prepare_key(state["rng"])
    else:  # [P, rows, ...]: each member trains on its own rollout
        grollout = population_lib.to_global(rollout, setup.mesh, setup.rules, pop)
        key = jax.vmap(prepare_key)(state["rng"])
    prepared, obj_state, stats = setup.steps.prepare_rollout(
        state["params"], state["objective"], grollout, setup.frozen, key)
    state = {**state, "objective": jax.device_put(obj_state, setup.spec.shardings["objective"])}
    rows = np.shape(rollout["example_id"])[-1]
    updates = []
    for _ in range(o.epochs):
        for idx in minibatch_rows(rows, o.minibatches):
            state, metrics = setup.steps.train(state, setup.steps.gather(prepared, idx),
                                               setup.frozen)
            updates.append(metrics)
    # Each update's metrics averaged over the epochs and minibatches (finite: all of them).
    merged = {k: (jnp.min if k == "finite" else jnp.mean)(jnp.stack([u[k] for u in updates]),
                                                           axis=0)
              for k in updates[0]}
    merged.update({f"rollout_{k}": v for k, v in stats.items() if k != "rows"})
    return state, {**merged, **rollout_metrics}, n_tokens
