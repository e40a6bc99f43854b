"""side_by_side.py's offline parts: venv caching, ratios with "n/a" cells, the table, and align's
worker on the --quick model. No network, no peer venvs; speed is never asserted."""

import importlib.util
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load():
    path = os.path.join(ROOT, "experiments", "throughput", "side_by_side.py")
    spec = importlib.util.spec_from_file_location("throughput_side_by_side", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sbs = _load()


def _cell(framework, throughput, ok=True, **kw):
    if not ok:
        return {"ok": False, "framework": framework, "reason": kw.get("reason", "not here")}
    return {"ok": True, "framework": framework, "throughput": throughput, "seconds": 2.0,
            "unit": "tokens/s", "peak_rss_gib": 1.5, "version": "v", "path": "p",
            "weights": "w", "warmup_s": 1.0, "times": [2.0], **kw}


def test_ratio_is_align_over_the_best_peer_and_skips_missing_cells():
    cells = {"align": _cell("align", 300.0), "TRL": _cell("TRL", 100.0),
             "Tunix": _cell("Tunix", 150.0)}
    assert sbs.ratio(cells) == (2.0, "Tunix")
    cells["Tunix"] = _cell("Tunix", 0, ok=False)
    assert sbs.ratio(cells) == (3.0, "TRL")
    assert sbs.ratio({"align": _cell("align", 1.0), "TRL": _cell("TRL", 0, ok=False)}) == (
        None, None)
    assert sbs.ratio({"align": _cell("align", 0, ok=False), "TRL": _cell("TRL", 5.0)}) == (
        None, None)
    assert sbs.ratio({"TRL": _cell("TRL", 5.0)}) == (None, None)


def test_markdown_table_formats_numbers_and_na():
    results = {
        "mixture": {"align": _cell("align", 1234.0), "TRL": _cell("TRL", 617.0),
                    "Tunix": _cell("Tunix", 0, ok=False, reason="no mixture sampler")},
        "dpo": {"align": _cell("align", 0, ok=False, reason="boom"), "TRL": _cell("TRL", 10.0)},
    }
    table = sbs.markdown_table(results).splitlines()
    assert table[0] == "| workload | align | TRL | Tunix | align / best peer |"
    assert table[1] == "|---|---|---|---|---|"
    # Rows follow WORKLOAD_NAMES' order, not the dict's.
    assert table[2].startswith("| DPO step | n/a (boom) | 10 tok/s (2 s, 1.50 GiB) | not run |")
    assert table[2].endswith("| n/a |")
    assert "1,234 tok/s (2 s, 1.50 GiB)" in table[3]
    assert "n/a (no mixture sampler)" in table[3] and table[3].endswith("| 2.00x (vs TRL) |")
    assert sbs.format_ratio(None, None) == "n/a"
    assert "first-step loss 0.500000" in sbs.details(
        {"dpo": {"TRL": _cell("TRL", 1.0, first_loss=0.5)}})


def test_rounds_table_lists_each_rounds_throughput_and_ratio(capsys):
    one = {"dpo": {"align": _cell("align", 600.0), "TRL": _cell("TRL", 598.0),
                   "Tunix": _cell("Tunix", 439.0)}}
    two = {"dpo": {"align": _cell("align", 550.0), "TRL": _cell("TRL", 0, ok=False),
                   "Tunix": _cell("Tunix", 500.0)}}
    assert sbs.rounds_table([one]) == sbs.markdown_table(one)
    with pytest.raises(SystemExit):
        sbs.main(["--rounds", "0", "--frameworks", "align", "--no-install"])
    assert "--rounds must be >= 1" in capsys.readouterr().err
    line = sbs.rounds_table([one, two]).splitlines()[2]
    assert line == ("| DPO step | 600 / 550 tok/s | 598 / n/a tok/s | 439 / 500 tok/s "
                    "| 1.00x / 1.10x (vs TRL, Tunix) |")


def test_cells_run_in_the_right_venv(tmp_path, monkeypatch):
    assert sbs.venv_for("align", "dpo") is None
    assert sbs.venv_for("TRL", "mixture") == "trl-nashmd"  # NashMD's wrapper: TRL <= 1.13
    assert sbs.venv_for("TRL", "grpo") == "trl" and sbs.venv_for("Tunix", "sample") == "tunix"
    for reqs in sbs.VENVS.values():  # every peer package pinned exactly
        assert any("==" in r for r in reqs)
    monkeypatch.setenv("ALIGN_PEERS", str(tmp_path))
    with pytest.raises(sbs.MissingVenv, match="--no-install"):
        sbs.ensure_venv("tunix", install=False)
    # A venv built for these requirements is reused without pip.
    venv = tmp_path / "tunix"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("")
    (venv / sbs._STAMP).write_text("\n".join(sbs.VENVS["tunix"]) + "\n")
    assert sbs.ensure_venv("tunix", install=False) == str(venv / "bin" / "python")
    (venv / sbs._STAMP).write_text("google-tunix==0.0.1\n")  # other pins: rebuilt
    with pytest.raises(sbs.MissingVenv):
        sbs.ensure_venv("tunix", install=False)


def test_worker_env_gives_one_device_and_keeps_peer_paths_clean(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_foo=1")
    monkeypatch.setenv("PYTHONPATH", "/somewhere")
    env = sbs.worker_env("Tunix")
    assert env["XLA_FLAGS"] == "--xla_foo=1" and "PYTHONPATH" not in env
    assert sbs.worker_env("align")["PYTHONPATH"] == sbs.ROOT


def test_a_crashing_worker_becomes_an_na_cell(tmp_path):
    row = sbs.run_worker(sys.executable, "align", ["--workload", "nope", "--model_dir", "x"],
                         timeout_s=120)
    assert row["ok"] is False and "without a result" in row["reason"]


def test_align_worker_on_the_quick_model_reports_sane_fields(tmp_path):
    settings = dict(sbs.QUICK, repeats=1)
    model = sbs.export_models(str(tmp_path), settings, timeout_s=600)
    assert model["params"] > 0 and model["vocab"] == 512
    for name in ("policy", "reference"):
        with open(tmp_path / name / "config.json") as f:
            assert json.load(f)["architectures"] == ["LlamaForCausalLM"]
        assert (tmp_path / name / "model.safetensors").stat().st_size > 0
    for workload in ("dpo", "mixture"):
        row = sbs.run_worker(sys.executable, "align",
                             sbs.worker_argv(workload, str(tmp_path), settings), timeout_s=600)
        assert row["ok"], row
        assert row["framework"] == "align" and row["workload"] == workload
        assert row["tokens"] == sbs.protocol.units(
            sbs.protocol.parser("t").parse_args(sbs.worker_argv(workload, "d", settings)),
            workload)
        assert row["throughput"] > 0 and row["seconds"] > 0 and len(row["times"]) == 1
        assert row["peak_rss_gib"] > 0 and row["weights"] == "the exported checkpoints"
    assert 0 < row["tokens"] == settings["prompts"] * settings["new_tokens"]


def test_the_command_with_align_alone_needs_no_peer_venv(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ALIGN_PEERS", str(tmp_path / "no-venvs-here"))
    out = tmp_path / "sbs.json"
    assert sbs.main(["--quick", "--no-install", "--frameworks", "align", "--workloads", "sample",
                     "--repeats", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| workload | align | align / best peer |" in printed
    assert "| sampling, one model | " in printed and printed.count("| n/a |") == 1
    saved = json.loads(out.read_text())
    assert saved["results"]["sample"]["align"]["ok"] and saved["ratios"]["sample"]["ratio"] is None
    assert saved["model"]["vocab"] == 512 and saved["settings"]["repeats"] == 1
    # A peer whose venv is missing stops the command before any work, saying how to make it.
    assert sbs.main(["--quick", "--no-install", "--frameworks", "align,Tunix"]) == 2
    assert "--no-install" in capsys.readouterr().err
