"""Side by side: align, TRL and Tunix on the same model, batch and machine, in one command.

    python experiments/throughput/side_by_side.py                 # the ~29M model, every workload
    python experiments/throughput/side_by_side.py --quick --out /tmp/sbs.json   # a smoke run

Why: "is align's sampler / DPO step slower than TRL's and Tunix's?" has one honest answer: run
them on the same weights, batch and machine and divide. This script
  1. creates (once) a virtual environment per peer under ${ALIGN_PEERS:-~/.cache/align-peers}
     with pinned pip packages (VENVS below); the peers are never dependencies of align;
  2. makes a LLaMA-style model with random weights in align (d_model 512, 8 layers, 8 heads, no
     GQA, d_ff 1344, vocab 8000, tied embeddings, float32: 29M parameters; --quick: a 0.1M one)
     and a second one as the reference, and writes both with
     `align.models.hf_checkpoint.export_hf(..., "llama", ...)`: TRL loads them as
     LlamaForCausalLM, Tunix with its own safetensors loader, so all three run the same weights;
  3. times every workload in every framework, each cell in its own process (its peak RSS is its
     own), one after another, and prints a Markdown table with the ratio of align's throughput
     to the best peer's. Workloads and what each framework runs: peers/protocol.py and the
     workers' docstrings (peers/*_worker.py).

A cell that cannot run prints "n/a" with the reason (a framework without that feature, a failure
with its error); no number is ever made up. Timings are medians of --repeats calls after
--warmup untimed ones (compilation); speed depends on the machine and its load, so the ratios,
not the absolute figures, are the result, and only from a machine nothing else is using.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PEERS = os.path.join(HERE, "peers")
sys.path.insert(0, PEERS)
import protocol  # noqa: E402  (standard library only)

# Each peer lives in its own virtual environment: name -> the exact pip requirements.
# TRL 1.16 for DPO, GRPO and plain sampling; TRL 1.13 for NashMD's GeometricMixtureWrapper (the
# last release with NashMD, under trl.experimental.nash_md); Tunix with the jax/flax stack it
# resolves for itself.
VENVS = {
    "trl": ("trl==1.16.0", "torch==2.13.0", "transformers"),
    # requests: trl.experimental.nash_md imports it (through the vLLM client) without declaring it.
    "trl-nashmd": ("trl==1.13.0", "torch==2.13.0", "transformers", "requests"),
    "tunix": ("google-tunix==0.1.7",),
}
_STAMP = "align-peer-requirements.txt"  # written into a venv after its install succeeded

FRAMEWORKS = ("align", "TRL", "Tunix")
WORKER = {"align": "align_worker.py", "TRL": "trl_worker.py", "Tunix": "tunix_worker.py"}
WORKLOAD_NAMES = {
    "dpo": "DPO step",
    "sample": "sampling, one model",
    "mixture": "sampling, geometric mixture",
    "grpo": "GRPO iteration",
}

# Workload sizes (protocol.parser's arguments) and the model of each mode.
FULL = dict(size="30m", pairs=8, seq=256, prompt_tokens=64, prompts=16, prompt_len=64,
            new_tokens=128, samples=4, beta=0.5, warmup=1, repeats=3, budget_s=300.0)
QUICK = dict(size="quick", pairs=2, seq=32, prompt_tokens=8, prompts=4, prompt_len=8,
             new_tokens=8, samples=2, beta=0.5, warmup=1, repeats=2, budget_s=30.0)
_WORKER_ARGS = ("pairs", "seq", "prompt_tokens", "prompts", "prompt_len", "new_tokens",
                "samples", "beta", "warmup", "repeats", "budget_s")


# --- peer environments --------------------------------------------------------------------------

def peers_root() -> str:
    return os.environ.get("ALIGN_PEERS") or os.path.expanduser("~/.cache/align-peers")


def venv_python(name: str) -> str:
    return os.path.join(peers_root(), name, "bin", "python")


class MissingVenv(RuntimeError):
    pass


def ensure_venv(name: str, *, install: bool) -> str:
    """The python of peer venv `name`, created with `python -m venv` and pip-installed once
    (cached: its stamp file records the requirements it was built with)."""
    root = os.path.join(peers_root(), name)
    stamp = os.path.join(root, _STAMP)
    want = "\n".join(VENVS[name]) + "\n"
    have = open(stamp).read() if os.path.isfile(stamp) else None
    if have == want and os.path.isfile(venv_python(name)):
        return venv_python(name)
    if not install:
        raise MissingVenv(
            f"peer venv {root} is missing or was built for other requirements; run without "
            f"--no-install to create it (pip install {' '.join(VENVS[name])})")
    print(f"creating peer venv {root}: pip install {' '.join(VENVS[name])} (minutes)",
          file=sys.stderr, flush=True)
    if not os.path.isfile(venv_python(name)):
        subprocess.run([sys.executable, "-m", "venv", root], check=True)
    subprocess.run([venv_python(name), "-m", "pip", "install", "--quiet", *VENVS[name]],
                   check=True)
    with open(stamp, "w") as f:
        f.write(want)
    return venv_python(name)


def venv_for(framework: str, workload: str) -> str | None:
    """Which peer venv runs a cell (None: align's own interpreter)."""
    if framework == "align":
        return None
    if framework == "TRL":
        return "trl-nashmd" if workload == "mixture" else "trl"
    return "tunix"


# --- running the workers ------------------------------------------------------------------------

def worker_env(framework: str) -> dict[str, str]:
    """The environment of a worker: one device each (a forced host device count, as the test
    suite sets, is dropped), no PYTHONPATH leaking into a peer venv, quiet logs."""
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    if flags:
        env["XLA_FLAGS"] = " ".join(flags)
    else:
        env.pop("XLA_FLAGS", None)
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    if framework == "align":
        env["PYTHONPATH"] = ROOT
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def _last_json(stdout: str) -> dict | None:
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def _tail(text: str, n: int = 1) -> str:
    lines = [l for l in text.strip().splitlines() if l.strip()]
    return " | ".join(lines[-n:])[-300:] if lines else ""


def run_worker(python: str, framework: str, argv: list[str], timeout_s: float) -> dict:
    """One worker process -> its JSON row; a crash, a time-out or no JSON becomes an `ok: false`
    row that says so."""
    cmd = [python, os.path.join(PEERS, WORKER[framework]), *argv]
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                              env=worker_env(framework), cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"ok": False, "framework": framework, "reason": f"timed out after {timeout_s:.0f} s"}
    row = _last_json(proc.stdout)
    if row is None:
        return {"ok": False, "framework": framework,
                "reason": f"worker exited {proc.returncode} without a result: "
                          f"{_tail(proc.stderr) or _tail(proc.stdout)}"}
    row["process_s"] = time.perf_counter() - t
    return row


def worker_argv(workload: str, model_dir: str, settings: dict) -> list[str]:
    argv = ["--workload", workload, "--model_dir", model_dir]
    for k in _WORKER_ARGS:
        argv += [f"--{k}", str(settings[k])]
    return argv


def export_models(model_dir: str, settings: dict, timeout_s: float) -> dict:
    """The policy and reference checkpoints, written by align (peers/align_worker.py export)."""
    max_len = max(settings["seq"], settings["prompt_len"] + settings["new_tokens"])
    row = run_worker(sys.executable, "align", ["export", "--size", settings["size"],
                                               "--max_len", str(max_len), "--model_dir",
                                               model_dir], timeout_s)
    if "params" not in row:
        raise RuntimeError(f"exporting the shared model failed: {row.get('reason', row)}")
    return row


# --- the table ----------------------------------------------------------------------------------

def ratio(cells: dict[str, dict]) -> tuple[float | None, str | None]:
    """(align's throughput / the best peer's, that peer); None where align or every peer has no
    number."""
    align = cells.get("align") or {}
    peers = {f: c for f, c in cells.items() if f != "align" and c.get("ok")}
    if not align.get("ok") or not peers:
        return None, None
    best = max(peers, key=lambda f: peers[f]["throughput"])
    return align["throughput"] / peers[best]["throughput"], best


def _short_unit(unit: str) -> str:
    return {"tokens/s": "tok/s", "new tokens/s": "new tok/s"}.get(unit, unit)


def format_cell(cell: dict | None) -> str:
    if not cell:
        return "not run"
    if not cell.get("ok"):
        return f"n/a ({cell.get('reason', 'no result')})"
    unit = _short_unit(cell["unit"])
    return (f"{cell['throughput']:,.0f} {unit} ({cell['seconds']:.3g} s, "
            f"{cell['peak_rss_gib']:.2f} GiB)")


def format_ratio(value: float | None, peer: str | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x (vs {peer})"


def markdown_table(results: dict[str, dict[str, dict]], frameworks=FRAMEWORKS) -> str:
    """results: workload -> framework -> row. One line per workload, in WORKLOAD_NAMES order."""
    header = ["workload", *frameworks, "align / best peer"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for w in [w for w in WORKLOAD_NAMES if w in results]:
        cells = results[w]
        r, peer = ratio(cells)
        lines.append("| " + " | ".join(
            [WORKLOAD_NAMES[w], *(format_cell(cells.get(f)) for f in frameworks),
             format_ratio(r, peer)]) + " |")
    return "\n".join(lines)


def rounds_table(rounds: list[dict[str, dict[str, dict]]], frameworks=FRAMEWORKS) -> str:
    """The table of several rounds of the same cells: each cell lists its throughput per round
    ("602 / 611 tok/s"), and the last column each round's ratio; one round is `markdown_table`."""
    if len(rounds) == 1:
        return markdown_table(rounds[0], frameworks)
    header = ["workload", *frameworks, "align / best peer"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for w in [w for w in WORKLOAD_NAMES if w in rounds[0]]:
        row = [WORKLOAD_NAMES[w]]
        for f in frameworks:
            cells = [r[w].get(f) or {} for r in rounds]
            ok = [c for c in cells if c.get("ok")]
            if not ok:
                row.append(format_cell(cells[0]))
                continue
            row.append(" / ".join(f"{c['throughput']:,.0f}" if c.get("ok") else "n/a"
                                  for c in cells) + f" {_short_unit(ok[0]['unit'])}")
        ratios = [ratio(r[w]) for r in rounds]
        peers = {p for _, p in ratios if p}
        row.append(" / ".join("n/a" if v is None else f"{v:.2f}x" for v, _ in ratios)
                   + (f" (vs {', '.join(sorted(peers))})" if peers else ""))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def details(results: dict[str, dict[str, dict]]) -> str:
    """What ran in each cell: framework versions, the code path, weights, warm-up, losses."""
    out = []
    for w in [w for w in WORKLOAD_NAMES if w in results]:
        for f, c in results[w].items():
            if not c.get("ok"):
                continue
            extra = f", first-step loss {c['first_loss']:.6f}" if c.get("first_loss") else ""
            extra += f"; note: {c['notes']}" if c.get("notes") else ""
            out.append(f"- {WORKLOAD_NAMES[w]}, {f} ({c.get('version', '?')}): {c.get('path')}; "
                       f"weights: {c.get('weights')}; warm-up {c.get('warmup_s', 0):.1f} s, "
                       f"{len(c.get('times', []))} timed{extra}")
    return "\n".join(out)


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    except OSError:
        pass
    mem = None
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    except (ValueError, OSError, AttributeError):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": mem, "load_1min": load,
            "platform": platform.platform(), "python": platform.python_version()}


# --- the command --------------------------------------------------------------------------------

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a 0.1M model and tiny batches")
    p.add_argument("--out", default="", help="also write everything as JSON here")
    p.add_argument("--no-install", dest="install", action="store_false",
                   help="use the peer venvs as they are; a missing one is an error")
    p.add_argument("--frameworks", default=",".join(FRAMEWORKS))
    p.add_argument("--workloads", default=",".join(WORKLOAD_NAMES))
    p.add_argument("--repeats", type=int, default=None, help="timed calls (default 3; quick 2)")
    p.add_argument("--rounds", type=int, default=1,
                   help="run every cell this many times, in alternating framework order")
    p.add_argument("--model_dir", default="",
                   help="write (and keep) the shared checkpoints here (default: a temporary "
                        "directory)")
    p.add_argument("--timeout_s", type=float, default=3600.0, help="per cell")
    args = p.parse_args(argv)
    frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    for f in frameworks:
        if f not in FRAMEWORKS:
            p.error(f"unknown framework {f!r}; valid: {', '.join(FRAMEWORKS)}")
    for w in workloads:
        if w not in WORKLOAD_NAMES:
            p.error(f"unknown workload {w!r}; valid: {', '.join(WORKLOAD_NAMES)}")
    settings = dict(QUICK if args.quick else FULL)
    if args.repeats is not None:
        if args.repeats < 1:
            p.error("--repeats must be >= 1")
        settings["repeats"] = args.repeats
    if args.rounds < 1:
        p.error("--rounds must be >= 1")

    pythons = {}
    for f in frameworks:
        for w in workloads:
            name = venv_for(f, w)
            if name is None or name in pythons:
                continue
            try:
                pythons[name] = ensure_venv(name, install=args.install)
            except MissingVenv as e:
                print(f"error: {e}", file=sys.stderr)
                return 2

    load_at_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    model_dir = args.model_dir or tempfile.mkdtemp(prefix="align-side-by-side-")
    try:
        model = export_models(model_dir, settings, args.timeout_s)
        print(f"model: {model['params'] / 1e6:.1f}M parameters (d_model {model['d_model']}, "
              f"{model['n_layers']} layers, {model['n_heads']} heads / {model['n_kv_heads']} kv, "
              f"d_ff {model['d_ff']}, vocab {model['vocab']}, {model['dtype']}) in {model_dir}",
              file=sys.stderr, flush=True)
        rounds: list[dict[str, dict[str, dict]]] = []
        for r in range(args.rounds):
            # Every other round runs the frameworks in reverse, so a drift in the machine's
            # load does not always favour the same one.
            order = frameworks if r % 2 == 0 else frameworks[::-1]
            results: dict[str, dict[str, dict]] = {}
            for w in workloads:
                results[w] = {}
                for f in order:
                    name = venv_for(f, w)
                    python = sys.executable if name is None else pythons[name]
                    print(f"{WORKLOAD_NAMES[w]}: {f}"
                          + (f" (round {r + 1} of {args.rounds})" if args.rounds > 1 else "")
                          + " ...", file=sys.stderr, flush=True)
                    row = run_worker(python, f, worker_argv(w, model_dir, settings),
                                     args.timeout_s)
                    results[w][f] = row
                    print(f"  {format_cell(row)}", file=sys.stderr, flush=True)
            rounds.append(results)
    finally:
        if not args.model_dir:
            shutil.rmtree(model_dir, ignore_errors=True)

    info = {**machine(), "load_1min_start": load_at_start}
    results = rounds[0]
    table = rounds_table(rounds, frameworks)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"machine": info, "model": model, "settings": settings,
                       "venvs": {k: list(v) for k, v in VENVS.items()}, "results": results,
                       "ratios": {w: dict(zip(("ratio", "peer"), ratio(c)))
                                  for w, c in results.items()},
                       "rounds": rounds,
                       "ratios_by_round": [{w: dict(zip(("ratio", "peer"), ratio(c)))
                                            for w, c in rr.items()} for rr in rounds],
                       "table": table}, f, indent=1)
    print(f"machine: {info['cpu']}, {info['cores']} cores, "
          + (f"{info['memory_gib']:.0f} GiB, " if info["memory_gib"] else "")
          + (f"1-min load {load_at_start:.1f} at the start, {info['load_1min']:.1f} at the end "
             "(a load above 0 slows the cells it overlaps)" if load_at_start is not None else ""))
    print(f"model: {model['params'] / 1e6:.1f}M parameters, LLaMA-style (d_model "
          f"{model['d_model']}, {model['n_layers']} layers, {model['n_heads']} heads, "
          f"{model['n_kv_heads']} kv heads, d_ff {model['d_ff']}, vocab {model['vocab']}), "
          f"{model['dtype']}; every framework runs the same exported weights")
    print(f"workloads: DPO {settings['pairs']} pairs x {settings['seq']} tokens; sampling "
          f"{settings['prompts']} prompts x ({settings['prompt_len']} + "
          f"{settings['new_tokens']} new); mixture beta {settings['beta']}; GRPO "
          f"{settings['prompts']} prompts x {settings['samples']} samples x "
          f"{settings['new_tokens']} new; median of {settings['repeats']} after "
          f"{settings['warmup']} warm-up"
          + (f"; {args.rounds} rounds" if args.rounds > 1 else "") + "\n")
    print(table)
    print("\nthroughput (median call time, peak RSS of the cell's process); align / best peer "
          "> 1: align is faster\n")
    print(details(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
