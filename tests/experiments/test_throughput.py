"""The benchmark scripts still run (numbers are measured by running them, never asserted here)."""

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load(name):
    path = os.path.join(ROOT, "experiments", "throughput", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"throughput_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_step_benchmark_reports_its_fields():
    run = _load("run")
    for objective in ("sft", "dpo"):
        r = run.bench("1m", batch=8, seq=16, dtype="float32", remat="none", steps=1,
                      chunk_size=0, peak=1e12, objective=objective)
        assert r["objective"] == objective and r["tokens_per_s"] > 0 and r["mfu"] > 0
        assert r["peak_memory_gib"] > 0


def test_ppo_iteration_benchmark_reports_every_phase(tmp_path, capsys):
    ppo = _load("ppo")
    r = ppo.bench("1m", prompts=16, prompt_len=4, new_tokens=8, epochs=1, minibatches=2,
                  critic="separate", dtype="float32", iterations=1, peak=1e12)
    for phase in ("sample", "prepare", "update"):
        assert r[f"{phase}_s"] > 0 and r[f"{phase}_mfu"] > 0
    assert r["iteration_s"] > 0 and r["critic"] == "separate"
    out = tmp_path / "ppo.json"  # the command line, with the value head
    assert ppo.main(["--sizes", "1m", "--prompts", "16", "--prompt_len", "4", "--new_tokens", "8",
                     "--iterations", "1", "--out", str(out)]) == 0
    assert "| 1m | 1.3M | head |" in capsys.readouterr().out and out.exists()
