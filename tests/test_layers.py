"""The package's import layers: every import of an align module points to its own layer or a
lower one, no import is hidden inside a function, and there is no cycle.

The layers, top to bottom (README, "Layout"):

    main, api                          entry points
    evaluate, analysis                 evaluation of finished runs (best-of-n, statistics); what
                                       RLHF does (imprints, influence, evaluator errors)
    train                              Setup, the loop, steps, checkpoints, rollouts, scorers
    objectives                         losses, their settings, models and reference fields
    samples, sampling                  a policy's samples (the KV-cache sampler)
    models, data                       modules; datasets, tokenizers, batches
    tasks                              the synthetic world
    mesh, matmul, logprobs, config*, settings, atomic, summary, errors, supervise
"""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = [
    ("main", "api"),
    ("evaluate", "analysis"),
    ("train",),
    ("objectives",),
    ("samples", "sampling"),
    ("models", "data"),
    ("tasks",),
    ("mesh", "matmul", "logprobs", "config", "config_io", "config_schema", "settings", "atomic",
     "summary", "errors", "supervise"),
]
LEVEL = {group: i for i, groups in enumerate(LAYERS) for group in groups}


def _modules():
    out = {}
    for root, _, files in os.walk(os.path.join(ROOT, "align")):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(root, f)
                name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                out[name.removesuffix(".__init__")] = path
    return out


def _group(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(modules):
    """(importer, imported module, at top level) for every import of an align module."""
    for name, path in modules.items():
        tree = ast.parse(open(path).read())
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and target != "align":
                    yield name, target, id(node) in top


def test_every_group_has_a_layer():
    groups = {_group(m) for m in _modules()} - {""}
    assert groups <= set(LEVEL), sorted(groups - set(LEVEL))


def test_imports_point_down_and_none_is_hidden():
    modules = _modules()
    upward, hidden = [], []
    for name, target, at_top in _imports(modules):
        if LEVEL[_group(target)] < LEVEL[_group(name)]:
            upward.append(f"{name} -> {target}")
        if not at_top:
            hidden.append(f"{name} -> {target}")
    assert not upward, upward
    assert not hidden, hidden


def test_no_cycle():
    modules = _modules()
    edges = {}
    for name, target, _ in _imports(modules):
        edges.setdefault(name, set()).add(target)
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in edges.get(node, ()):
            if state.get(nxt) == "open":
                raise AssertionError("import cycle: " + " -> ".join(path + [node, nxt]))
            if nxt not in state:
                visit(nxt, path + [node])
        state[node] = "done"

    for node in sorted(modules):
        if node not in state:
            visit(node, [])


def test_the_check_finds_an_upward_import(tmp_path, monkeypatch):
    # A criterion that must be able to fail: a models module importing train is caught.
    fake = tmp_path / "align" / "models"
    fake.mkdir(parents=True)
    (tmp_path / "align" / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("")
    (fake / "bad.py").write_text("def f():\n    from align.train import loop\n")
    (tmp_path / "align" / "train").mkdir()
    (tmp_path / "align" / "train" / "__init__.py").write_text("")
    (tmp_path / "align" / "train" / "loop.py").write_text("")
    monkeypatch.setattr(__import__(__name__), "ROOT", str(tmp_path))
    found = [(n, t, top) for n, t, top in _imports(_modules())]
    assert ("align.models.bad", "align.train.loop", False) in found
    assert LEVEL[_group("align.train.loop")] < LEVEL[_group("align.models.bad")]
