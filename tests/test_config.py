"""Config loading, validation, overrides and writing."""

import json
import os
import textwrap

import ml_collections
import pytest

from align import config as C


def _write_config(tmp_path, body, name="exp.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


@pytest.fixture
def objective_schema(monkeypatch):
    """Registers a throwaway objective schema, removed after the test."""
    monkeypatch.setitem(C.OBJECTIVE_SCHEMAS, "toy", ml_collections.ConfigDict())
    monkeypatch.setitem(C.OBJECTIVE_CHOICES, "toy", {})
    C.register_objective_schema("toy", {"beta": 0.1, "normalize": "sum", "k": 2},
                                choices={"normalize": ("sum", "mean")})


def test_validate_fills_defaults_and_locks():
    cfg = C.validate({"optim": {"lr": 3}})
    expected = C.default_config().to_dict()
    expected["optim"]["lr"] = 3.0
    assert C.config_to_dict(cfg) == expected
    assert isinstance(cfg.optim.lr, float)
    with pytest.raises(AttributeError):
        cfg.optim.new_key = 1


def test_misspelt_key_in_file_names_key_file_and_suggestion(tmp_path):
    path = _write_config(tmp_path, """
        import ml_collections
        def get_config():
            c = ml_collections.ConfigDict()
            c.optim = ml_collections.ConfigDict({"learning_rte": 1e-3})
            return c
    """)
    with pytest.raises(C.ConfigError) as e:
        C.resolve(path, [])
    msg = str(e.value)
    assert "'optim.learning_rte'" in msg and "did you mean 'optim.lr'" in msg
    assert "exp.py" in msg and "warmup_steps" in msg
    assert e.value.key == "optim.learning_rte"


def test_misspelt_override_names_key_and_suggestion():
    with pytest.raises(C.ConfigError) as e:
        C.apply_overrides(C.default_config(), ["--config.optim.weight_decy=0.1"])
    msg = str(e.value)
    assert "'optim.weight_decy'" in msg and "did you mean 'optim.weight_decay'" in msg
    assert "--config.optim.weight_decy=0.1" in msg
    with pytest.raises(C.ConfigError, match=r"'train\.lr' \(did you mean 'optim\.lr'"):
        C.apply_overrides({}, ["train.lr=1"])


def test_wrong_types_name_key_and_types(tmp_path):
    with pytest.raises(C.ConfigError, match=r"config key 'train\.steps' expects int, got str 'abc'"):
        C.apply_overrides({}, ["train.steps=abc"])
    with pytest.raises(C.ConfigError, match=r"'train\.progress' expects bool, got int 1"):
        C.validate({"train": {"progress": 1}})
    with pytest.raises(C.ConfigError, match=r"'train\.steps' expects int, got bool True"):
        C.validate({"train": {"steps": True}})
    with pytest.raises(C.ConfigError, match=r"'optim\.lr' expects float, got bool"):
        C.validate({"optim": {"lr": False}})
    with pytest.raises(C.ConfigError, match=r"'model\.d_model' expects int, got float 64\.5"):
        C.validate({"model": {"d_model": 64.5}})
    with pytest.raises(C.ConfigError, match=r"'optim' is a section"):
        C.validate({"optim": 3})
    path = _write_config(tmp_path, """
        import ml_collections
        def get_config():
            return ml_collections.ConfigDict({"data": {"batch_size": "32"}})
    """)
    with pytest.raises(C.ConfigError, match=r"exp\.py.*'data\.batch_size' expects int, got str '32'"):
        C.resolve(path)


def test_bad_choice_lists_choices():
    with pytest.raises(C.ConfigError, match=r"'model\.dtype' must be one of float32, bfloat16; got 'fp16'"):
        C.apply_overrides({}, ["model.dtype=fp16"])
    with pytest.raises(C.ConfigError, match=r"'model\.remat' must be one of none, full, dots"):
        C.validate({"model": {"remat": "some"}})
    with pytest.raises(C.ConfigError, match=r"'model\.attention' must be one of einsum, "
                                            r"dot_product_attention; got 'flash'"):
        C.apply_overrides({}, ["model.attention=flash"])
    with pytest.raises(C.ConfigError, match=r"mesh\.rules\.embed.*'fsdpp'.*data, fsdp, tensor"):
        C.validate({"mesh": {"rules": {"embed": "data,fsdpp"}}})


def test_config_arg_reaches_get_config(tmp_path):
    path = _write_config(tmp_path, """
        import ml_collections
        from align.config import parse_config_arg
        def get_config(arg=None):
            a = parse_config_arg(arg)
            c = ml_collections.ConfigDict()
            c.train = ml_collections.ConfigDict({"steps": a.get("steps", 7)})
            c.model = ml_collections.ConfigDict({"dtype": a.get("dtype", "float32")})
            c.task = ml_collections.ConfigDict({"temperature": 2.0 if a.get("name") == "hot" else 1.0})
            return c
    """)
    assert C.resolve(path).train.steps == 7
    cfg = C.resolve(path + ":steps=12,dtype=bfloat16,hot")
    assert (cfg.train.steps, cfg.model.dtype, cfg.task.temperature) == (12, "bfloat16", 2.0)
    seen = _write_config(tmp_path, """
        def get_config(arg):
            return {"data": {"tfds_name": repr(arg)}}
    """, name="seen.py")
    assert C.resolve(seen).data.tfds_name == "None"
    assert C.resolve(seen + ":a=1,b").data.tfds_name == "'a=1,b'"
    noarg = _write_config(tmp_path, "def get_config():\n    return {}\n", name="noarg.py")
    with pytest.raises(C.ConfigError, match=r"noarg\.py.*takes no argument.*'x=1'"):
        C.load_config(noarg + ":x=1")


def test_parse_config_arg():
    assert C.parse_config_arg(None) == {}
    assert C.parse_config_arg("k=3,lr=1e-4,s=abc,t=(1, 2),q='x,y',flag=True,big") == {
        "k": 3, "lr": 1e-4, "s": "abc", "t": (1, 2), "q": "x,y", "flag": True, "name": "big"}
    with pytest.raises(C.ConfigError, match="more than one bare word"):
        C.parse_config_arg("a,b")
    with pytest.raises(C.ConfigError, match="'k' given twice"):
        C.parse_config_arg("k=1,k=2")
    defaults = {"size": "small", "steps": 400, "lr": 1e-3}
    assert C.parse_config_arg("steps=5,lr=1,size=7", defaults) == {
        "size": "7", "steps": 5, "lr": 1.0}
    assert C.parse_config_arg(None, defaults) == defaults
    with pytest.raises(C.ConfigError, match=r"unknown key 'sizee' \(did you mean 'size'\?\)"):
        C.parse_config_arg("sizee=tiny", defaults)
    with pytest.raises(C.ConfigError, match=r"key 'steps' expects int, got str 'many'"):
        C.parse_config_arg("steps=many", defaults)
    with pytest.raises(C.ConfigError, match=r"unknown bare word 'tiny'"):
        C.parse_config_arg("tiny", defaults)


def test_nested_overrides(objective_schema):
    cfg = C.apply_overrides(C.default_config(), [
        "--config.optim.lr=3e-4", "config.train.steps=5", "data.tfds_name=123",
        "mesh.rules.embed=data,fsdp", "mesh.rules.experts=tensor", "train.progress=False",
        "objective.name=toy", "objective.beta=0.5", "objective.normalize=mean"])
    assert cfg.optim.lr == 3e-4 and cfg.train.steps == 5 and cfg.train.progress is False
    assert cfg.data.tfds_name == "123"
    assert cfg.mesh.rules.embed == "data,fsdp" and cfg.mesh.rules.experts == "tensor"
    assert cfg.objective.to_dict() == {"name": "toy", "beta": 0.5, "normalize": "mean", "k": 2}
    with pytest.raises(C.ConfigError, match=r"'objective\.normalize' must be one of sum, mean"):
        C.apply_overrides({}, ["objective.name=toy", "objective.normalize=avg"])
    with pytest.raises(C.ConfigError, match=r"unknown config key 'objective\.beta'.*objective 'sft'"):
        C.apply_overrides({}, ["objective.beta=0.5"])
    with pytest.raises(C.ConfigError, match=r"unknown objective 'toyy'.*did you mean 'toy'.*sft"):
        C.validate({"objective": {"name": "toyy"}})
    with pytest.raises(C.ConfigError, match=r"'optim' is a section"):
        C.apply_overrides({}, ["optim=1"])
    with pytest.raises(C.ConfigError, match="must look like"):
        C.apply_overrides({}, ["optim.lr"])


def test_objective_config(objective_schema):
    section = C.objective_config("toy", beta=0.3)
    assert section.to_dict() == {"name": "toy", "beta": 0.3, "normalize": "sum", "k": 2}
    with pytest.raises(C.ConfigError, match=r"'objective\.bta' \(did you mean 'objective\.beta'"):
        C.objective_config("toy", bta=0.3)


def test_project_config_resolves_from_any_cwd(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # configs/ is then found next to the package
    cfg = C.resolve("configs/sft.py", ["--config.train.steps=3"])
    assert cfg.train.steps == 3 and cfg.objective.name == "sft"


def test_overrides_move_referencing_fields():
    cfg = ml_collections.ConfigDict({"model": {"max_len": 128}})
    cfg.data = ml_collections.ConfigDict()
    cfg.data.max_len = cfg.model.get_ref("max_len")
    out = C.apply_overrides(cfg, ["model.max_len=32"])
    assert out.model.max_len == 32 and out.data.max_len == 32
    assert cfg.model.max_len == 128  # the input is left alone


def test_objective_found_by_module_name(monkeypatch):
    # align.objectives registers each module's settings; config.py imports no objective.
    from align import objectives
    monkeypatch.delitem(C.OBJECTIVE_SCHEMAS, "sft")
    objectives.registry()
    assert C.validate({"objective": {"name": "sft"}}).objective.name == "sft"
    assert "sft" in C.OBJECTIVE_SCHEMAS


def test_write_config_round_trips(tmp_path, objective_schema):
    cfg = C.apply_overrides({}, ["objective.name=toy", "optim.lr=2e-4", "mesh.rules.x=tensor"])
    path = C.write_config(cfg, str(tmp_path / "run"))
    assert path == str(tmp_path / "run" / "config.json")
    assert json.load(open(path))["optim"]["lr"] == 2e-4
    back = C.config_from_json(path)
    assert C.config_to_dict(back) == C.config_to_dict(cfg)
    text = (tmp_path / "run" / "config.txt").read_text()
    assert "optim.lr = 0.0002\n" in text and "objective.name = 'toy'\n" in text
    assert not [f for f in os.listdir(tmp_path / "run") if f.startswith(".tmp")]
    (tmp_path / "bad.json").write_text('{"optim": {"lrr": 1}}')
    with pytest.raises(C.ConfigError, match=r"bad\.json.*'optim\.lrr'"):
        C.config_from_json(str(tmp_path / "bad.json"))


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(C.ConfigError, match=r"config file 'nowhere/x\.py' not found"):
        C.load_config("nowhere/x.py:a=1")
    empty = _write_config(tmp_path, "x = 1\n", name="empty.py")
    with pytest.raises(C.ConfigError, match=r"empty\.py.*no get_config"):
        C.load_config(empty)
    boom = _write_config(tmp_path, "def get_config(arg=None):\n    raise KeyError('oops')\n",
                         name="boom.py")
    with pytest.raises(C.ConfigError, match=r"boom\.py.*raised KeyError"):
        C.load_config(boom)
    broken = _write_config(tmp_path, "def get_config(:\n", name="broken.py")
    with pytest.raises(C.ConfigError, match=r"broken\.py.*failed to import: SyntaxError"):
        C.load_config(broken)
    other = _write_config(tmp_path, "def get_config():\n    return 3\n", name="other.py")
    with pytest.raises(C.ConfigError, match=r"other\.py.*returned int 3"):
        C.load_config(other)


def test_describe_lists_changes():
    text = C.describe(C.apply_overrides({}, ["optim.lr=3e-4", "train.steps=20"]))
    assert "objective  sft" in text and "steps=20" in text
    assert "changed    optim.lr=0.0003, train.steps=20" in text
    assert "(all defaults)" in C.describe(C.validate({}))
