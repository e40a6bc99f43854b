"""Command line: `align train --config configs/X.py[:args] --workdir DIR [--config.a.b=v ...]`.

`python -m align.main --config ... --workdir ...` is the same as `align train ...`;
`align best-of-n ...` runs `align.evaluate.best_of_n`. Relative paths (the workdir and every
path in the config) are taken from the current directory; see `config.absolute_path`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap

import numpy as np

from align import atomic
from align import config as config_lib
from align import config_io
from align import errors
from align import objectives  # registers every objective's settings before configs load
from align import supervise
from align.evaluate import best_of_n
from align.evaluate import stats
from align.train import checkpoint as ckpt_lib
from align.train import evaluation, loop, runs
from align.train import setup as setup_lib

REPORT_FILE = "report.md"


def _help_epilog() -> str:
    """The objectives and every config key with its default, for --help."""
    defaults = config_io.flat(config_lib.default_config().to_dict())
    lines = ["objectives (--config.objective.name, or the config's objective= argument):",
             textwrap.fill(", ".join(objectives.names()), width=96, initial_indent="  ",
                           subsequent_indent="  "),
             "", "config keys and defaults (override with --config.KEY=VALUE or --config.KEY "
             "VALUE; objective.* keys depend on the objective, see docs/formulas.md):"]
    section = None
    for key, value in sorted(defaults.items()):
        head = key.split(".")[0]
        if head != section:
            section = head
            lines.append(f"  {head}:")
        lines.append(f"    {key} = {value!r}")
    return "\n".join(lines)


def parse_args(argv, prog: str = "python -m align.main"):
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Train as a config describes; rerun the same command to resume.",
        epilog=_help_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True,
                        help="config file, optionally with structural arguments: configs/x.py:k=v")
    parser.add_argument("--workdir", required=True, help="where checkpoints, metrics and the "
                        "resolved config are written (relative to the current directory)")
    parser.add_argument("--continue-with-changes", action="store_true",
                        help="resume a run whose config differs from the stored one in keys "
                        "that change results, and record the change in the workdir's "
                        "config_history.jsonl (without it such a resume is refused)")
    args, rest = parser.parse_known_args(argv)
    overrides, i = [], 0
    while i < len(rest):
        item = rest[i]
        if not item.startswith("--config."):
            parser.error(f"unrecognised argument {item!r}; overrides look like --config.optim.lr=3e-4")
        if "=" not in item:
            # absl-style "--config.optim.lr 3e-4": the value is the next argument.
            if i + 1 >= len(rest) or rest[i + 1].startswith("--config."):
                parser.error(f"{item} has no value; write {item}=VALUE or {item} VALUE")
            item, i = f"{item}={rest[i + 1]}", i + 1
        overrides.append(item)
        i += 1
    return args, overrides


def _pm(mean, se) -> str:
    return f"{mean:+.3f} ± {1.96 * se:.3f}"


# Columns of a population's report: (metric, header, scale).
_MEMBER_COLUMNS = (("loss", "held-out loss", 1.0), ("accuracy", "accuracy", 1.0),
                   ("gold_agreement", "gold agreement", 1.0),
                   ("sample_gold_reward", "gold reward", 1.0), ("win_rate", "win rate %", 100.0),
                   ("kl", "KL (nats)", 1.0), ("kl_per_token", "KL per token", 1.0))


def _value(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def population_report(cfg, setup, result) -> str:
    """The report of a population run: one row per member, then each swept value's mean over
    its seeds with a 95% Student-t interval."""
    pop, ev = setup.population, result["eval"]
    cols = [c for c in _MEMBER_COLUMNS if c[0] in ev]
    key = f"objective.{pop.key}" if pop.swept else ""
    lines = [f"# {cfg.objective.name}: {result['step']} steps, a population of {pop.size} "
             f"members" + (f" over {key}" if key else ""), "",
             "| member | seed |" + (f" {key} |" if key else "") +
             "".join(f" {h} |" for _, h, _ in cols),
             "|---|---|" + ("---|" if key else "") + "---|" * len(cols)]
    for m in pop.members():
        p = m["member"]
        lines.append(f"| {p} | {m['seed']} |" + (f" {_value(m[key])} |" if key else "") +
                     "".join(f" {ev[n][p] * s:.{1 if s > 1 else 3}f} |" for n, _, s in cols))
    lines += ["", "Mean over seeds ± 95% interval:", ""]
    groups = [v for v, _ in pop.groups()] if pop.swept else [None]
    for value in groups:
        idx = [p for p in range(pop.size) if value is None or pop.values[p] == value]
        cells = [f"{h} {stats.fmt_ci(*stats.mean_ci(np.asarray(ev[n])[idx]), scale=s, digits=1 if s > 1 else 3)}"
                 for n, h, s in cols]
        head = (f"- {key} = {_value(value)} ({len(idx)} seeds): " if key
                else f"- {len(idx)} seeds: ")
        lines.append(head + "; ".join(cells))
    return "\n".join(lines) + "\n"


def report(cfg, setup, result) -> str:
    """A short Markdown report of the run (intervals are 95%, from standard errors)."""
    if setup.population is not None:
        return population_report(cfg, setup, result)
    ev = result["eval"]
    lines = [f"# {cfg.objective.name}: {result['step']} steps", ""]
    if "loss" in ev:
        lines.append(f"- held-out loss: {ev['loss']:.4f}")
    for name in ("accuracy", "pair_accuracy", "gold_agreement", "gold_pair_accuracy", "margin"):
        if name in ev:
            lines.append(f"- held-out {name.replace('_', ' ')}: {ev[name]:.3f}")
    if "sample_gold_reward" in ev:
        n = len(result["samples"].get("completions", []))
        demo = evaluation.demo_gold(setup)
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
                         f"{ev['kl']:.2f} ± {1.96 * ev['kl_se']:.2f} "
                         f"({ev['kl_per_token']:.3f} per generated token)")
        if setup.parent is None:
            lines.append(f"- gold reward of the untrained policy's samples: "
                         f"{evaluation.initial_gold(setup.workdir):+.3f}")
    if "reward_offset" in result:
        lines.append(f"- reward offset (mean raw reward of the demonstrations, subtracted): "
                     f"{result['reward_offset']['offset']:+.4f}")
    samples = result["samples"]
    if samples and cfg.eval.show_samples:
        lines += ["", "Samples (prompt -> completion [gold reward]):", ""]
        golds = samples.get("gold", [np.nan] * len(samples["prompts"]))
        for p, c, g in list(zip(samples["prompts"], samples["completions"], golds))[
                :cfg.eval.show_samples]:
            lines.append(f"    {p} -> {c}   [{g:+.3f}]")
    return "\n".join(lines) + "\n"


def finished_report(cfg, workdir: str) -> str | None:
    """The report of a run in `workdir` that has reached cfg.train.steps, or None."""
    run = runs.read_run(workdir)
    path = os.path.join(workdir, REPORT_FILE)
    if run is None or run.latest_step is None or run.latest_step < cfg.train.steps:
        return None
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return f.read()


def _checkpoint_steps(workdir: str) -> list[int]:
    """The complete checkpoint steps in workdir (by name; none are read)."""
    return ckpt_lib.steps_in(os.path.join(workdir, "checkpoints"))


def check_workdir(workdir: str) -> None:
    """Makes `workdir` and proves it writable, or raises one line naming it and the cause."""
    probe = os.path.join(workdir, f".align-write-test-{os.getpid()}")
    try:
        os.makedirs(workdir, exist_ok=True)
        with open(probe, "w") as f:
            f.write("ok\n")
        os.remove(probe)
    except OSError as e:
        raise errors.InputError(
            f"the workdir {workdir} cannot be written ({e.strerror or type(e).__name__}); "
            "choose another --workdir, or fix its permissions") from None


def resume_changes(cfg, workdir: str, *, continue_with_changes: bool = False):
    """How `cfg` differs from the config of the run already in `workdir`.

    Returns (changes, kind): ({} , None) for a new run or the same config; kind "settings" when
    only keys that cannot change a result differ (config_io.RESUMABLE_CHANGES); "continued" for
    other differences under `continue_with_changes`. Other differences raise a ConfigError
    naming the keys and both values: the checkpoints were trained with the stored ones.
    """
    previous = os.path.join(workdir, "config.json")
    if not os.path.exists(previous):
        return {}, None
    old = config_lib.config_from_json(previous)
    if old.objective.name != cfg.objective.name:
        # Another objective's checkpoints may even have the same structure and would be picked
        # up silently.
        raise errors.InputError(f"{workdir} holds a {old.objective.name!r} run; "
                                f"train {cfg.objective.name!r} in another workdir")
    steps = _checkpoint_steps(workdir)
    if not steps:
        return {}, None  # nothing was trained with the stored config
    changes = config_io.differences(old, cfg)
    if not changes:
        return {}, None
    fixed = {k: v for k, v in changes.items() if not config_io.resumable(k)}
    if fixed and not continue_with_changes:
        raise config_lib.ConfigError(
            f"{workdir} holds a run trained to step {max(steps)} with another config: "
            f"{config_io.fmt_changes(fixed)} (stored -> given). Rerun with the stored values, "
            f"train this config in another workdir, or add --continue-with-changes to continue "
            f"this run with the new values (recorded in "
            f"{os.path.join(workdir, config_io.HISTORY_FILE)})", key=next(iter(fixed)))
    return changes, ("continued" if fixed else "settings")


def run(cfg, workdir: str, *, continue_with_changes: bool = False) -> str:
    """Trains one config in `workdir` (after the run it starts from, if that is unfinished).

    A run that has already finished is not touched: its report is returned as it is. A run
    that resumes must have the same config, apart from settings that cannot change a result
    (see `resume_changes`), unless `continue_with_changes`.
    """
    workdir = os.path.abspath(workdir)
    cfg = config_lib.absolute_paths(cfg, workdir)
    setup_lib.check_lengths(cfg, objectives.make(cfg.objective))
    check_workdir(workdir)
    changes, kind = resume_changes(cfg, workdir, continue_with_changes=continue_with_changes)
    text = finished_report(cfg, workdir) if kind != "continued" else None
    if text is not None:
        print(f"== {cfg.objective.name} in {workdir}: finished ({cfg.train.steps} steps); "
              f"nothing to do. Report: {os.path.join(workdir, REPORT_FILE)}", flush=True)
        return text
    if cfg.init.workdir and cfg.init.config:
        parent_dir = cfg.init.workdir
        parent = runs.read_run(parent_dir)
        if parent is None or not parent.finished:
            overrides = [f"--config.{o.strip()}" for o in cfg.init.overrides.split(";")
                         if o.strip()]
            print(f"== first: {cfg.init.config} in {parent_dir}", flush=True)
            parent_text = run(config_lib.resolve(cfg.init.config, overrides), parent_dir)
            print(parent_text, flush=True)
    if kind is None:
        config_lib.write_config(cfg, workdir)

    def on_resume(step: int) -> None:
        # The stored config changes only once the checkpoints have restored into this one.
        if kind is not None and step:
            config_lib.write_config(cfg, workdir)
            where = config_io.record_change(workdir, step, changes, kind)
            what = ("continuing with new values" if kind == "continued"
                    else "resuming with changed settings that cannot change a result")
            print(f"{what}: {config_io.fmt_changes(changes)} (recorded in {where})", flush=True)

    print(f"== {cfg.objective.name} in {workdir}\n{config_lib.describe(cfg)}", flush=True)
    setup = setup_lib.build(cfg, workdir)
    try:
        result = loop.train(setup, on_resume=on_resume)
        text = report(cfg, setup, result)
        if setup.primary:
            atomic.write_text(os.path.join(workdir, REPORT_FILE), text)
    except BaseException:
        try:
            setup.close()
        except OSError:
            pass  # e.g. a full disk, which the error in flight already reports
        raise
    setup.close()
    return text


def main(argv=None, prog: str = "python -m align.main") -> int:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv, prog)
    try:
        cfg = config_lib.resolve(args.config, overrides)
    except config_lib.ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    # A process of a multi-process job runs under a supervisor, which names a peer that died.
    code = supervise.run_supervised(
        sys.argv[1:] if argv is None else list(argv),
        num_processes=cfg.distributed.num_processes, process_id=cfg.distributed.process_id,
        workdir=args.workdir, prog=prog)
    if code is not None:
        return code
    logging.basicConfig(level=logging.WARNING)

    try:
        text = run(cfg, args.workdir, continue_with_changes=args.continue_with_changes)
    except loop.NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except loop.Preempted as e:
        print(str(e), file=sys.stderr, flush=True)
        return e.exit_code
    except config_lib.ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except errors.INPUT_ERRORS as e:
        # One line naming the problem; anything else (ValueError included) is a bug and keeps
        # its traceback. ALIGN_TRACEBACK=1 shows where an input error was raised.
        if os.environ.get("ALIGN_TRACEBACK"):
            raise
        print(f"error ({type(e).__name__}): {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in errors.WRITE_ERRNOS or os.environ.get("ALIGN_TRACEBACK"):
            raise
        # The file system's fault, not the code's: a full disk, a quota, a read-only mount.
        print(f"error: {e.strerror} writing {e.filename or 'a file'}; the checkpoints already "
              f"written are intact: fix the cause and rerun the same command to resume",
              file=sys.stderr)
        return 2
    print(text, flush=True)
    return 0


COMMANDS = {"train": "train a config (rerun the same command to resume)",
            "best-of-n": "best-of-n rewards and KL of a finished policy run"}


def cli(argv=None) -> int:
    """The `align` console script: `align COMMAND ...`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = [f"  {name:<10} {text}" for name, text in COMMANDS.items()]
        print("usage: align COMMAND [options]\n\ncommands:\n" + "\n".join(lines) +
              "\n\n`align COMMAND --help` describes each.",
              file=sys.stdout if argv[:1] in (["-h"], ["--help"]) else sys.stderr)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"align: unknown command {argv[0]!r}", file=sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    if argv[0] == "train":
        return main(argv[1:], prog="align train")
    return best_of_n.main(argv[1:], prog="align best-of-n")


if __name__ == "__main__":
    sys.exit(main())
