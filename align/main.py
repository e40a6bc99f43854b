"""Command line: python -m align.main --config configs/X.py[:args] --workdir DIR [--config.a.b=v ...]."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import numpy as np


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m align.main",
        description="Train as a config describes; rerun the same command to resume.")
    parser.add_argument("--config", required=True,
                        help="config file, optionally with structural arguments: configs/x.py:k=v")
    parser.add_argument("--workdir", required=True, help="where checkpoints, metrics and the "
                        "resolved config are written")
    args, rest = parser.parse_known_args(argv)
    overrides = []
    for item in rest:
        if not item.startswith("--config."):
            parser.error(f"unrecognised argument {item!r}; overrides look like --config.optim.lr=3e-4")
        overrides.append(item)
    return args, overrides


def _pm(mean, se) -> str:
    return f"{mean:+.3f} ± {1.96 * se:.3f}"


def report(cfg, trainer, result) -> str:
    """A short Markdown report of the run (intervals are 95%, from standard errors)."""
    ev = result["eval"]
    lines = [f"# {cfg.objective.name}: {result['step']} steps", ""]
    if "loss" in ev:
        lines.append(f"- held-out loss: {ev['loss']:.4f}")
    for name in ("accuracy", "pair_accuracy", "gold_agreement", "gold_pair_accuracy", "margin"):
        if name in ev:
            lines.append(f"- held-out {name.replace('_', ' ')}: {ev[name]:.3f}")
    if "sample_gold_reward" in ev:
        n = len(trainer.last_samples.get("completions", []))
        demo = trainer.demo_gold
        lines.append(f"- gold reward of {n} samples: "
                     f"{_pm(ev['sample_gold_reward'], ev['sample_gold_reward_se'])}")
        if "reference_gold_reward" in ev:
            lines.append(f"- gold reward of the reference policy's samples: "
                         f"{ev['reference_gold_reward']:+.3f}")
        lines.append(f"- gold reward of the held-out demonstrations: {_pm(*demo)}")
        if "win_rate" in ev:
            lines.append(f"- gold win rate against the reference policy: "
                         f"{100 * ev['win_rate']:.1f}% ± {196 * ev['win_rate_se']:.1f}")
        if "kl" in ev:
            lines.append(f"- KL(policy ‖ reference), nats per sequence: "
                         f"{ev['kl']:.2f} ± {1.96 * ev['kl_se']:.2f}")
        if trainer.parent is None:
            lines.append(f"- gold reward of the untrained policy's samples: "
                         f"{trainer.initial_gold:+.3f}")
    if "reward_offset" in result:
        lines.append(f"- reward offset (mean raw reward of the demonstrations, subtracted): "
                     f"{result['reward_offset']:+.4f}")
    samples = trainer.last_samples
    if samples and cfg.eval.show_samples:
        lines += ["", "Samples (prompt -> completion [gold reward]):", ""]
        golds = samples.get("gold", [np.nan] * len(samples["prompts"]))
        for p, c, g in list(zip(samples["prompts"], samples["completions"], golds))[
                :cfg.eval.show_samples]:
            lines.append(f"    {p} -> {c}   [{g:+.3f}]")
    return "\n".join(lines) + "\n"


def run(cfg, workdir: str) -> str:
    """Trains one config in `workdir` (after the run it starts from, if that is unfinished)."""
    from align import config as config_lib
    from align.train import loop, runs
    if cfg.init.workdir and cfg.init.config:
        parent_dir = runs.resolve_workdir(cfg.init.workdir, workdir)
        parent = runs.read_run(parent_dir)
        if parent is None or not parent.finished:
            overrides = [f"--config.{o.strip()}" for o in cfg.init.overrides.split(";")
                         if o.strip()]
            print(f"== first: {cfg.init.config} in {parent_dir}", flush=True)
            parent_text = run(config_lib.resolve(cfg.init.config, overrides), parent_dir)
            print(parent_text, flush=True)
    previous = os.path.join(workdir, "config.json")
    if os.path.exists(previous):
        # Resuming is only meaningful for the same kind of run: another objective's checkpoints
        # may even have the same structure and would be picked up silently.
        old = config_lib.config_from_json(previous)
        if old.objective.name != cfg.objective.name:
            raise ValueError(f"{workdir} holds a {old.objective.name!r} run; "
                             f"train {cfg.objective.name!r} in another workdir")
    os.makedirs(workdir, exist_ok=True)
    config_lib.write_config(cfg, workdir)
    print(f"== {cfg.objective.name} in {workdir}\n{config_lib.describe(cfg)}", flush=True)
    trainer = loop.Trainer(cfg, workdir)
    try:
        result = trainer.train()
        text = report(cfg, trainer, result)
        if trainer.primary:
            with open(os.path.join(workdir, "report.md"), "w") as f:
                f.write(text)
        return text
    finally:
        trainer.close()


def main(argv=None) -> int:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    from align import config as config_lib
    try:
        cfg = config_lib.resolve(args.config, overrides)
    except config_lib.ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)

    from align.train import checkpoint, loop
    # Problems with the user's input (files, data rows, settings, checkpoints) end the run
    # with their message; ALIGN_TRACEBACK=1 shows where they were raised.
    user_errors = (FileNotFoundError, ValueError, checkpoint.CheckpointError,
                   config_lib.ConfigError)
    try:
        text = run(cfg, args.workdir)
    except loop.NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except user_errors as e:
        if os.environ.get("ALIGN_TRACEBACK"):
            raise
        print(f"error ({type(e).__name__}): {e}", file=sys.stderr)
        return 2
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
