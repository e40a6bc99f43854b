"""Packaging: the requirements files and pyproject.toml agree; a non-editable install runs the
shipped configs from any directory and provides the `align` command."""

import ast
import os
import shutil
import subprocess
import sys
import tomllib

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _requirements(name):
    out = []
    with open(os.path.join(ROOT, name)) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line and not line.startswith("-r"):
                out.append(line.replace(" ", ""))
    return sorted(out)


def test_requirements_files_and_pyproject_agree():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    assert _requirements("requirements.txt") == sorted(project["dependencies"])
    test_only = [r for r in _requirements("requirements-test.txt")
                 if not r.startswith(("setuptools", "wheel"))]
    assert test_only == sorted(project["optional-dependencies"]["test"])
    # The main job installs no test-only package (PyTorch is several GB where it is not CPU-only).
    assert not any(r.startswith(("torch", "transformers", "pytest"))
                   for r in project["dependencies"])
    assert project["scripts"]["align"] == "align.main:cli"


def test_every_imported_third_party_module_is_declared():
    # The runtime imports of align/ and configs/ map onto declared distributions.
    declared = {r.split(">")[0].split("<")[0].split("=")[0].lower().replace("_", "-")
                for r in _requirements("requirements.txt")}
    module_to_dist = {"jax": "jax", "flax": "flax", "optax": "optax", "orbax": "orbax-checkpoint",
                      "grain": "grain", "sentencepiece": "sentencepiece",
                      "tokenizers": "tokenizers", "tensorflow_datasets": "tensorflow-datasets",
                      "ml_collections": "ml-collections", "tensorboardX": "tensorboardx",
                      "tqdm": "tqdm", "numpy": "numpy", "scipy": "scipy",
                      "matplotlib": "matplotlib"}
    # Installed with the ones above (jaxlib with jax, etils with orbax, ml_dtypes with jax).
    transitive = {"jaxlib", "etils", "ml_dtypes", "absl"}
    stdlib = set(sys.stdlib_module_names)
    local = {"align", "configs", "third_party"}
    local |= {"harness", "run"}  # experiments import their shared runner and each other by path
    found = set()
    # The peer workers of the side-by-side benchmark run in the peers' own venvs
    # (experiments/throughput/side_by_side.py makes them): never align's requirements.
    peers = os.path.join(ROOT, "experiments", "throughput", "peers")
    local.add("protocol")  # the workers' shared module, imported by path
    for folder in ("align", "configs", "experiments"):
        for base, _, files in os.walk(os.path.join(ROOT, folder)):
            if base.startswith(peers):
                continue
            for name in files:
                if name.endswith(".py"):
                    with open(os.path.join(base, name)) as f:
                        tree = ast.parse(f.read())
                    for node in ast.walk(tree):
                        if isinstance(node, ast.Import):
                            found |= {a.name.split(".")[0] for a in node.names}
                        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                            found.add(node.module.split(".")[0])
    unknown = sorted(m for m in found - stdlib - local - transitive - {"__future__"}
                     if m not in module_to_dist)
    assert not unknown, f"imported but not mapped to a declared requirement: {unknown}"
    for module in found & set(module_to_dist):
        assert module_to_dist[module].lower() in declared, module


@pytest.mark.skipif(not os.path.exists(os.path.join(ROOT, "pyproject.toml")),
                    reason="needs the source tree")
def test_a_non_editable_install_runs_the_shipped_configs(tmp_path):
    # A copy of the sources, so the build leaves nothing (build/, *.egg-info) in the checkout.
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".ci-venv", "runs", "build", "*.egg-info", "__pycache__", "*.png"))
    target = tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(target), str(source)],
        capture_output=True, text=True, cwd=tmp_path)
    assert build.returncode == 0, build.stderr[-3000:]
    assert (target / "bin" / "align").exists()
    script = (
        "import align, sys\n"
        f"assert align.__file__.startswith({str(target)!r}), align.__file__\n"
        "from align import config\n"
        "cfg = config.resolve('configs/quickstart.py')\n"
        "assert cfg.objective.name == 'dpo' and cfg.init.config.startswith('configs/sft.py')\n"
        "config.resolve(cfg.init.config)\n"
        "from align.main import cli\n"
        "sys.exit(cli(['--help']))\n")
    env = {**os.environ, "PYTHONPATH": str(target)}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "train" in run.stdout
