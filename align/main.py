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
        description="Train a model as a config describes; rerun the same command to resume.")
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


def report(cfg, trainer, result) -> str:
    """A short Markdown report of the run."""
    ev = result["eval"]
    lines = [f"# Run report ({cfg.objective.name}, {result['step']} steps)", "",
             f"- held-out loss (nll per token): {ev['loss']:.4f}"]
    demo, demo_se = trainer.demo_gold
    if "sample_gold_reward" in ev:
        n = len(trainer.last_samples.get("completions", []))
        lines += [
            f"- gold reward of {n} samples: {ev['sample_gold_reward']:+.3f} "
            f"± {1.96 * ev['sample_gold_reward_se']:.3f} (95% interval)",
            f"- gold reward of the held-out demonstrations: {demo:+.3f} ± {1.96 * demo_se:.3f}",
            f"- gold reward of the untrained policy's samples: {trainer.initial_gold:+.3f}"]
    samples = trainer.last_samples
    if samples:
        lines += ["", "Samples (prompt -> completion [gold reward]):", ""]
        for p, c, g in list(zip(samples["prompts"], samples["completions"],
                                samples.get("gold", [np.nan] * len(samples["prompts"]))))[
                                    :cfg.eval.show_samples]:
            lines.append(f"    {p} -> {c}   [{g:+.3f}]")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    from align import config as config_lib
    try:
        cfg = config_lib.resolve(args.config, overrides)
    except config_lib.ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    os.makedirs(args.workdir, exist_ok=True)
    config_lib.write_config(cfg, args.workdir)
    print(config_lib.describe(cfg), flush=True)

    from align.train import checkpoint, loop
    # Problems with the user's input (files, data rows, settings, checkpoints) end the run
    # with their message; ALIGN_TRACEBACK=1 shows where they were raised.
    user_errors = (FileNotFoundError, ValueError, checkpoint.CheckpointError)
    trainer = None
    try:
        trainer = loop.Trainer(cfg, args.workdir)
        result = trainer.train()
    except loop.NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except user_errors as e:
        if os.environ.get("ALIGN_TRACEBACK"):
            raise
        print(f"error ({type(e).__name__}): {e}", file=sys.stderr)
        return 2
    finally:
        if trainer is not None:
            trainer.close()
    text = report(cfg, trainer, result)
    if trainer.primary:
        with open(os.path.join(args.workdir, "report.md"), "w") as f:
            f.write(text)
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
