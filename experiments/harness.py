"""What the paper-reproduction experiments share: running configs, reading results, tables, plots.

An experiment's run.py imports this file by path (`sys.path.insert(0, <experiments dir>)`).
Outputs go to $ALIGN_RUNS/experiments/<name> (~/align-runs by default), outside the repository;
only `--publish` after a full run copies its tables and plots next to run.py.
Runs are cached: `train` skips a run whose workdir already holds `result.json`, so a killed
experiment resumes where it stopped, and a finished one re-renders its tables at once.

Dimension letters: R runs (seeds), M measurements, B prompts, K samples per prompt.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from typing import Callable, Sequence

import numpy as np

EXPERIMENTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(EXPERIMENTS)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from align import atomic  # noqa: E402
from align import config as config_lib  # noqa: E402
from align.evaluate import stats  # noqa: E402

RESULT = "result.json"
# Default home of every experiment's outputs; trial runs must never land on committed results.
RUNS_ENV = "ALIGN_RUNS"
DEFAULT_RUNS = os.path.join("~", "align-runs")
# Small world settings every experiment can start from (test-sized data, one eval batch).
TINY_DATA = ["--config.data.num_train=2048", "--config.data.num_test=256",
             "--config.data.num_prompts=256", "--config.eval.num_batches=1"]


def lengths(prompt_len: int, new_tokens: int) -> list[str]:
    """Overrides giving data and model one length, prompt + new tokens: demonstrations, pairs,
    rollouts and samples then fit both, and reward models see sequences as long as they score."""
    total = prompt_len + new_tokens
    return [f"--config.data.max_prompt_len={prompt_len}", f"--config.data.max_len={total}",
            f"--config.model.max_len={total}", f"--config.online.max_new_tokens={new_tokens}",
            f"--config.eval.max_new_tokens={new_tokens}"]


def parser(doc: str) -> argparse.ArgumentParser:
    """--quick, --seeds, --out and --publish, the flags every experiment takes."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a few-minute version of the protocol")
    p.add_argument("--seeds", type=int, default=0, help="seeds per setting (0: the mode's default)")
    p.add_argument("--out", default="", help="where runs, results.md, results.json and plots go "
                   f"(default: ${RUNS_ENV}/experiments/<name>, ${RUNS_ENV} being "
                   f"{DEFAULT_RUNS} unless set)")
    p.add_argument("--publish", action="store_true",
                   help="after a full run, copy results.md and the plots next to run.py (the "
                        "committed results); without it nothing is written into the repository")
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # the test suite's size
    return p


def mode(p: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """'tiny', 'quick' or 'full' from the flags; --publish is refused for anything but full."""
    name = "tiny" if args.tiny else "quick" if args.quick else "full"
    # A short run's tables would silently replace the committed full-protocol ones.
    if args.publish and name != "full":
        p.error(f"--publish copies a full run's results next to run.py; a {name} run is not one")
    return name


def mode_settings(p: argparse.ArgumentParser, args: argparse.Namespace, modes: dict, *,
                  min_seeds: int, why: str) -> tuple[str, dict]:
    """(mode name, a copy of its settings with --seeds applied); fewer than `min_seeds` seeds
    is a usage error (`why` says what needs them)."""
    name = mode(p, args)
    settings = dict(modes[name])
    if args.seeds:
        settings["seeds"] = args.seeds
    if settings["seeds"] < min_seeds:
        p.error(f"--seeds must be at least {min_seeds} ({why}), got {settings['seeds']}")
    return name, settings


def output_dir(out: str, name: str) -> str:
    """`out` made absolute, or by default $ALIGN_RUNS/experiments/<name>, outside the repository."""
    if out:
        return os.path.abspath(os.path.expanduser(out))
    runs = os.environ.get(RUNS_ENV) or DEFAULT_RUNS
    return os.path.abspath(os.path.join(os.path.expanduser(runs), "experiments", name))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def train(config: str, workdir: str, overrides: Sequence[str] = (), *, devices=None) -> dict:
    """Trains `config` ("configs/x.py:k=v", relative to the repository) in `workdir`.

    Returns {"eval": final evaluation, "step": steps}; cached in workdir/result.json, so a
    finished run is read back instead of retrained.
    """
    import jax

    from align.train import loop

    path = os.path.join(workdir, RESULT)
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    spec = config if os.path.isabs(config) else os.path.join(ROOT, config)
    cfg = config_lib.resolve(spec, ["--config.train.progress=False", *overrides])
    workdir = os.path.abspath(workdir)
    cfg = config_lib.absolute_paths(cfg, workdir)  # as the CLI does: config.json says what ran
    config_lib.write_config(cfg, workdir)
    start = time.time()
    setup = loop.build(cfg, workdir, devices=devices or jax.devices()[:1])
    try:
        result = loop.train(setup)
    finally:
        setup.close()
    # A population's metrics are [P] vectors over its members: stored as lists.
    as_json = lambda v: float(v) if np.ndim(v) == 0 else [float(x) for x in np.ravel(v)]
    out = {"step": int(result["step"]), "eval": {k: as_json(v) for k, v in result["eval"].items()},
           "seconds": time.time() - start}
    atomic.write_text(path, json.dumps(out, indent=2) + "\n")
    return out


def metrics(workdir: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of every record of `key` ("eval/kl", "train/reward", ...) in a run."""
    from align.train import metrics as metrics_lib
    return [(int(r["step"]), float(r[key])) for r in metrics_lib.read_metrics(workdir) if key in r]


def seeds_summary(values_R: Sequence[float], digits: int = 3, scale: float = 1.0) -> str:
    """'mean ± 95% half-width' over seeds."""
    return stats.fmt_ci(*stats.mean_ci(values_R), digits=digits, scale=scale)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(map(str, headers)) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines)


def cached(path: str, spec: dict, compute: Callable[[], dict]) -> dict:
    """compute()'s result, stored in `path` beside the spec it ran with (and its seconds):
    read back while the spec is unchanged, recomputed when it differs."""
    if os.path.exists(path):
        with open(path) as f:
            stored = json.load(f)
        if stored.get("spec") == spec:
            return stored["result"]
    start = time.time()
    result = dict(compute(), seconds=time.time() - start)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic.write_text(path, json.dumps({"spec": spec, "result": result}) + "\n")
    return result


def write_outputs(out: str, results: dict, markdown: str) -> None:
    """results.json and results.md in `out`."""
    os.makedirs(out, exist_ok=True)
    atomic.write_text(os.path.join(out, "results.json"),
                      json.dumps(results, indent=2, default=float) + "\n")
    atomic.write_text(os.path.join(out, "results.md"), markdown.rstrip() + "\n")


def experiment_output(args: argparse.Namespace, mode_name: str, name: str) -> str:
    """`output_dir` for an experiment's mode (`name`, or `name_<mode>` for the short modes,
    so a quick run never replaces a full one's cache), made."""
    out = output_dir(args.out, name if mode_name == "full" else f"{name}_{mode_name}")
    os.makedirs(out, exist_ok=True)
    return out


def finish(out: str, results: dict, markdown: str, *, publish_to: str = "",
           results_md: str = "results.md", plots: Sequence[str] = ()) -> int:
    """Writes results.json / results.md to `out`; with `publish_to` (--publish: the
    experiment's folder) copies results.md there as `results_md`, and the plots; prints the
    markdown. Returns main's exit status."""
    write_outputs(out, results, markdown)
    if publish_to:
        shutil.copyfile(os.path.join(out, "results.md"), os.path.join(publish_to, results_md))
        publish(out, publish_to, plots)
    print(markdown)
    return 0


def publish(out: str, here: str, names: Sequence[str]) -> None:
    """Copies results.md and the plots of a full run next to the experiment's run.py (--publish)."""
    for name in names:
        shutil.copyfile(os.path.join(out, name), os.path.join(here, name))


def sample_texts(workdir: str, *, num_prompts: int, samples: int = 1, seed: int = 0,
                 devices=None) -> tuple[list[str], np.ndarray]:
    """Held-out prompts (the first `num_prompts`, unshuffled) and a finished policy's samples.

    Returns (prompts_B, texts_BxK). Two policies sampled with the same arguments answer the
    same prompts, which is what a head-to-head comparison needs.
    """
    from align.evaluate import best_of_n
    _, _, prompts, texts = best_of_n.sample_and_score(
        workdir, samples=samples, num_prompts=num_prompts, scorer="gold", seed=seed,
        devices=devices)
    return prompts, texts


def head_to_head(prompts_B: Sequence[str], texts_a_BxK, texts_b_BxK,
                 preference: Callable[[str, str, str], float]) -> tuple[float, float]:
    """P(a ≻ b) averaged over prompts and sample pairs, with its standard error over prompts.

    `preference(prompt, a, b)` is the judge's probability that a beats b (for example the
    world's labeler, `Labeler.preference_prob`).
    """
    a, b = np.asarray(texts_a_BxK, object), np.asarray(texts_b_BxK, object)
    if a.shape != b.shape or a.shape[0] != len(prompts_B):
        raise ValueError(f"head_to_head: shapes {a.shape} and {b.shape} for {len(prompts_B)} prompts")
    per_prompt = np.array([np.mean([preference(p, x, y) for x, y in zip(ra, rb)])
                           for p, ra, rb in zip(prompts_B, a.reshape(len(prompts_B), -1),
                                                b.reshape(len(prompts_B), -1))])
    return float(per_prompt.mean()), float(per_prompt.std(ddof=1) / np.sqrt(per_prompt.size))


def plot(path: str, draw: Callable, *, title: str = "", xlabel: str = "", ylabel: str = "",
         figsize=(6.0, 4.0)) -> None:
    """Draws with `draw(ax)` and saves a PNG (headless backend)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=figsize)
    draw(ax)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
