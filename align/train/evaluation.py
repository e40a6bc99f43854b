"""Evaluation during training, as functions of (setup, state).

Held-out loss and the objective's metrics over test batches; for policies, samples on held-out
prompts with their gold reward, and against the reference: win rate and KL.

For a population (align/train/population.py) every metric is a [P] vector over members (all
members are evaluated on the same test batches and prompts), and the samples' fields are lists
over members. Dimension letters: P members, B prompts.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from align import errors
from align import mesh as mesh_lib
from align import samples as samples_lib
from align.data import sources
from align.train import metrics as metrics_lib
from align.train import population as population_lib
from align.train import setup as setup_lib
from align.train import step as step_lib

SUMMARY_METRICS = ("loss", "accuracy", "gold_agreement", "sample_gold_reward", "win_rate", "kl")


def held_out_loss(setup, state) -> dict[str, float]:
    """Held-out loss and the objective's metrics over `eval.num_batches` test batches."""
    totals = None
    for i, batch in enumerate(setup_lib.batches(setup, setup.objective.data, "test",
                                                train=False)):
        if i >= setup.cfg.eval.num_batches:
            break
        gbatch = mesh_lib.to_global(batch, setup.mesh, setup.rules)
        out = jax.device_get(setup.steps.eval(state, gbatch, setup.eval_frozen))
        totals = out if totals is None else jax.tree.map(np.add, totals, out)
    if totals is None:
        raise errors.ConfigError("the test split is smaller than one eval batch "
                         f"({setup.cfg.data.eval_batch_size} rows)")
    value = (lambda x: np.asarray(x, np.float64)) if setup.population else float
    result = {k: value(n / np.maximum(d, 1e-9)) for k, (n, d) in totals["parts"].items()}
    result["loss"] = value(totals["loss_sum"] / np.maximum(totals["weight"], 1e-9))
    return result


def policy_samples(setup, state, step: int) -> dict[str, Any]:
    """Policy samples with their gold reward; against the reference: KL and its samples' gold."""
    if not setup.is_policy or not setup.data.prompts or not setup.cfg.eval.num_samples:
        return {}
    # Every process samples the same prompts (a full copy each), so the gathered completions
    # line up with the prompt texts on every host.
    batch = next(iter(setup_lib.prompt_batches(setup, "test", train=False,
                                               batch_size=setup.cfg.eval.num_samples)))
    prompts = [str(t) for t in batch["prompt_text"]]
    dbatch = mesh_lib.put_global(batch, setup.mesh, setup.rules)
    if setup.population is not None:
        return _population_samples(setup, state, step, prompts, dbatch)
    key = jax.random.fold_in(step_lib.stream_key(state["rng"], "sample"), step)
    samples = setup.steps.sample(state["params"], dbatch, key)
    host = mesh_lib.to_host(samples)
    world, tok = setup.data.world, setup.data.tokenizer
    result = {"prompts": prompts, "completions": samples_lib.decode(tok, host),
              "lengths": host["mask"].sum(-1)}
    if world is not None:
        result["gold"] = world.gold_rewards(prompts, result["completions"])
    if setup.reference is not None:
        result["kl"] = mesh_lib.to_host(setup.steps.kl(state["params"], setup.reference, dbatch,
                                                       samples))
        if world is not None:
            if "reference_gold" not in setup.memo:
                # The reference never changes: its samples are drawn once, on a fixed key.
                ref_key = step_lib.stream_key(state["rng"], "reference_sample")
                ref = mesh_lib.to_host(setup.steps.sample_reference(setup.reference, dbatch,
                                                                    ref_key))
                setup.memo["reference_gold"] = world.gold_rewards(
                    prompts, samples_lib.decode(tok, ref))
            result["reference_gold"] = setup.memo["reference_gold"]
    return result


def _by_chunks(setup, fn, *stacked):
    """fn on blocks of population.eval_chunk members of member-stacked trees, its outputs
    brought to the host and joined over members. Sampling every member's rows at once would
    hold all their caches and logits."""
    size = setup.population.size
    blocks = population_lib.chunks(size, int(setup.cfg.population.eval_chunk))
    if len(blocks) == 1:  # all members at once: no sliced copies of their parameters
        return mesh_lib.to_host(fn(*stacked))
    parts = [mesh_lib.to_host(fn(*(jax.tree.map(lambda x: x[sl], t) for t in stacked)))
             for sl in blocks]
    return jax.tree.map(lambda *xs: np.concatenate(xs), *parts)


def _population_samples(setup, state, step: int, prompts, dbatch) -> dict[str, Any]:
    """policy_samples for every member: each field a list over members ([P][B])."""
    pop = setup.population
    key_P = jax.vmap(lambda r: jax.random.fold_in(step_lib.stream_key(r, "sample"), step))(
        state["rng"])
    stacked_ref = setup.reference if setup.reference_stacked else None

    def sample_and_kl(params, keys, own_ref):
        out = setup.steps.sample(params, dbatch, keys)
        if setup.reference is None:
            return out, None
        ref = own_ref if own_ref is not None else setup.reference
        return out, setup.steps.kl(params, ref, dbatch, out)

    host, kl_PxB = _by_chunks(setup, sample_and_kl, state["params"], key_P, stacked_ref)
    world, tok = setup.data.world, setup.data.tokenizer
    completions = [samples_lib.decode(tok, {k: v[p] for k, v in host.items()})
                   for p in range(pop.size)]
    result = {"prompts": prompts, "completions": completions,
              "lengths": [host["mask"][p].sum(-1) for p in range(pop.size)]}
    if world is not None:
        result["gold"] = [world.gold_rewards(prompts, c) for c in completions]
    if setup.reference is not None:
        result["kl"] = list(kl_PxB)
        if world is not None:
            if "reference_gold" not in setup.memo:
                # Drawn once, on fixed keys: member p's own reference on its key, or the shared
                # reference on member 0's (the key a single run with the config's seed uses).
                if setup.reference_stacked:
                    ref_key = jax.vmap(lambda r: step_lib.stream_key(r, "reference_sample"))(
                        state["rng"])
                    ref = _by_chunks(setup, lambda r, k: setup.steps.sample_reference(
                        r, dbatch, k), setup.reference, ref_key)
                    gold = [world.gold_rewards(prompts, samples_lib.decode(
                        tok, {k: v[p] for k, v in ref.items()})) for p in range(pop.size)]
                else:
                    ref_key = step_lib.stream_key(state["rng"][0], "reference_sample")
                    ref = mesh_lib.to_host(setup.steps.sample_reference(setup.reference, dbatch,
                                                                        ref_key))
                    gold = [world.gold_rewards(prompts, samples_lib.decode(tok, ref))] * pop.size
                setup.memo["reference_gold"] = gold
            result["reference_gold"] = setup.memo["reference_gold"]
    return result


def evaluate(setup, state, step: int) -> tuple[dict[str, float], dict[str, Any]]:
    """(metrics, samples) at a step; the metrics are written under eval/."""
    # Online objectives have no held-out loss (it needs fresh samples): they are judged by
    # their samples' gold reward, win rate and KL.
    metrics = {} if setup.objective.online else held_out_loss(setup, state)
    samples = policy_samples(setup, state, step)
    metrics.update(_population_metrics(samples) if setup.population is not None
                   else _sample_metrics(samples))
    setup.writer.write(step, metrics, prefix="eval")
    show = setup.cfg.eval.show_samples
    if samples and show:
        shown = samples["completions"][0] if setup.population else samples["completions"]
        text = "\n\n".join(f"{p} -> {c}" for p, c in zip(samples["prompts"][:show],
                                                         shown[:show]))
        setup.writer.write_text(step, "samples", text)
    return metrics, samples


def _sample_metrics(samples) -> dict[str, float]:
    """Gold reward, length, KL and win rate of one run's evaluation samples."""
    m = {}
    if "gold" in samples:
        m["sample_gold_reward"], m["sample_gold_reward_se"] = (
            samples_lib.mean_and_se(samples["gold"]))
        m["sample_length"] = float(np.mean(samples["lengths"]))
    if "kl" in samples:
        m["kl"], m["kl_se"] = samples_lib.mean_and_se(samples["kl"])
        m["kl_per_token"] = _per_token(samples["kl"], samples["lengths"])
    if "reference_gold" in samples:
        m["win_rate"], m["win_rate_se"] = samples_lib.win_rate(
            samples["gold"], samples["reference_gold"])
        m["reference_gold_reward"], _ = samples_lib.mean_and_se(samples["reference_gold"])
    return m


def _per_token(kl_B, lengths_B) -> float:
    """KL per generated token: the samples' summed sequence KL over their summed lengths (a
    long policy and a short one compared at one per-token rate)."""
    return float(np.sum(kl_B) / max(float(np.sum(lengths_B)), 1.0))


# The fields of a population's samples that hold one entry per member.
_MEMBER_FIELDS = ("gold", "lengths", "kl", "reference_gold")


def _population_metrics(samples) -> dict[str, np.ndarray]:
    """The sample metrics of evaluate(), each a [P] vector over members: `_sample_metrics`
    of every member's samples."""
    fields = [k for k in _MEMBER_FIELDS if k in samples]
    if not fields:
        return {}
    per_member = [_sample_metrics({k: samples[k][p] for k in fields})
                  for p in range(len(samples[fields[0]]))]
    return {k: np.array([m[k] for m in per_member], np.float64) for k in per_member[0]}


def _fmt(value) -> str:
    """A metric for the log: '0.512', or for a population 'mean 0.512 [min 0.48, max 0.55]'."""
    if np.ndim(value) == 0:
        return f"{float(value):.4g}"
    v = np.asarray(value, np.float64)
    return f"{v.mean():.4g} [{v.min():.4g}, {v.max():.4g}]"


def summary(step: int, metrics: dict[str, Any], samples: dict[str, Any]) -> str:
    """One line of held-out metrics and the first evaluation sample, for the log (for a
    population: the members' mean with their range, and member 0's sample)."""
    parts = [f"{n} {_fmt(metrics[n])}" for n in SUMMARY_METRICS if n in metrics]
    line = f"eval step {step}: " + ("  ".join(parts) if parts else "(no metrics)")
    completions = samples.get("completions")
    if completions:
        first = completions[0][0] if isinstance(completions[0], list) else completions[0]
        line += f"\n  sample: {samples['prompts'][0]} -> {first}"
    return line


def demo_gold(setup) -> tuple[float, float]:
    """Mean gold reward of the held-out demonstrations and its standard error."""
    return sources.demo_gold_reward(setup.data.sft["test"])


def initial_gold(workdir: str) -> float:
    """Gold reward of the untrained policy's samples, from the step-0 evaluation."""
    for row in metrics_lib.read_metrics(workdir):
        if row.get("step") == 0 and "eval/sample_gold_reward" in row:
            return float(row["eval/sample_gold_reward"])
    return float("nan")
