"""Evaluation during training, as functions of (setup, state).

Held-out loss and the objective's metrics over test batches; for policies, samples on held-out
prompts with their gold reward, and against the reference: win rate and KL.
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
    result = {k: float(n / max(d, 1e-9)) for k, (n, d) in totals["parts"].items()}
    result["loss"] = float(totals["loss_sum"] / max(totals["weight"], 1e-9))
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


def evaluate(setup, state, step: int) -> tuple[dict[str, float], dict[str, Any]]:
    """(metrics, samples) at a step; the metrics are written under eval/."""
    # Online objectives have no held-out loss (it needs fresh samples): they are judged by
    # their samples' gold reward, win rate and KL.
    metrics = {} if setup.objective.online else held_out_loss(setup, state)
    samples = policy_samples(setup, state, step)
    if "gold" in samples:
        metrics["sample_gold_reward"], metrics["sample_gold_reward_se"] = (
            samples_lib.mean_and_se(samples["gold"]))
        metrics["sample_length"] = float(np.mean(samples["lengths"]))
    if "kl" in samples:
        metrics["kl"], metrics["kl_se"] = samples_lib.mean_and_se(samples["kl"])
    if "reference_gold" in samples:
        metrics["win_rate"], metrics["win_rate_se"] = samples_lib.win_rate(
            samples["gold"], samples["reference_gold"])
        metrics["reference_gold_reward"], _ = samples_lib.mean_and_se(samples["reference_gold"])
    setup.writer.write(step, metrics, prefix="eval")
    show = setup.cfg.eval.show_samples
    if samples and show:
        text = "\n\n".join(f"{p} -> {c}" for p, c in zip(samples["prompts"][:show],
                                                         samples["completions"][:show]))
        setup.writer.write_text(step, "samples", text)
    return metrics, samples


def summary(step: int, metrics: dict[str, float], samples: dict[str, Any]) -> str:
    """One line of held-out metrics and the first evaluation sample, for the log."""
    parts = [f"{n} {metrics[n]:.4g}" for n in SUMMARY_METRICS if n in metrics]
    line = f"eval step {step}: " + ("  ".join(parts) if parts else "(no metrics)")
    if samples.get("completions"):
        line += f"\n  sample: {samples['prompts'][0]} -> {samples['completions'][0]}"
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
