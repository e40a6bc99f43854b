"""Typed settings with bounds: every config value is checked, and bad ones are refused by name
before any compute."""

import dataclasses
import os

import pytest

from align import config as C
from align import config_io
from align import main as main_lib
from align import objectives
from align import settings as S

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Toy(S.Settings):
    beta: float = S.setting(0.1, gt=0)
    eps: float = S.setting(0.1, ge=0, lt=0.5)
    kind: str = S.setting("a", choices=("a", "b"))
    n: int = S.setting(2, ge=1)


def test_settings_accept_values_in_bounds_and_refuse_the_rest_by_name():
    assert Toy.of({"name": "toy", "beta": 3, "n": 5}) == Toy(beta=3.0, n=5)
    assert isinstance(Toy(beta=3).beta, float)
    for bad, key in [(dict(beta=0.0), "objective.beta = 0 .*> 0"),
                     (dict(beta=float("nan")), "objective.beta = nan .*finite"),
                     (dict(eps=0.5), "objective.eps = 0.5 .*< 0.5"),
                     (dict(kind="c"), "'objective.kind' must be one of a, b"),
                     (dict(n=0), "objective.n = 0 .*>= 1"),
                     (dict(n=1.5), "'objective.n' expects int")]:
        with pytest.raises(C.ConfigError, match=key):
            Toy(**bad)
    with pytest.raises(ValueError, match="default"):
        S.setting(-1.0, gt=0)  # a default outside its own bound is a bug in the settings


def test_every_number_in_the_schema_has_a_range_and_every_string_a_choice_or_a_reason():
    free_text = set(C.PATH_KEYS) | {"data.tfds_name", "data.subsets", "data.template",
                                    "init.config", "init.overrides",
                                    "distributed.coordinator_address", "objective.name",
                                    "population.sweep"}  # parsed by align/train/population.py
    flat = config_io.flat(C.default_config().to_dict())
    for key, value in flat.items():
        if key.startswith("mesh.rules.") or isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            assert key in C.BOUNDS, f"{key} has no range"
        elif isinstance(value, str):
            assert key in C.CHOICES or key in free_text, f"{key} has no choices"


def test_every_objective_setting_is_typed_and_bounded():
    objectives.registry()
    for name in objectives.names():
        for key, default in C.OBJECTIVE_SCHEMAS[name].items():
            if isinstance(default, bool):
                continue
            has = (key in C.OBJECTIVE_BOUNDS[name] or key in C.OBJECTIVE_CHOICES[name])
            assert has, f"objective {name!r}: setting {key!r} has no bound or choices"


@pytest.mark.parametrize("spec, override, named", [
    ("configs/online.py:objective=online_dpo", "objective.beta=-1", "objective.beta = -1"),
    ("configs/online.py:objective=nash_md", "objective.tau=0", "objective.tau = 0"),
    ("configs/online.py:objective=nash_md", "objective.mixture_beta=1.5",
     "objective.mixture_beta = 1.5"),
    ("configs/online.py:objective=online_ipo", "objective.tau=0", "objective.tau = 0"),
    ("configs/sft.py", "optim.lr=-0.01", "optim.lr = -0.01"),
    ("configs/sft.py", "train.steps=0", "train.steps = 0"),
    ("configs/sft.py", "optim.b2=1.5", "optim.b2 = 1.5"),
    ("configs/sft.py", "optim.grad_clip=-1.0", "optim.grad_clip = -1"),
    ("configs/sft.py", "train.keep_checkpoints=0", "train.keep_checkpoints = 0"),
    ("configs/sft.py", "train.checkpoint_every=0", "train.checkpoint_every = 0"),
    ("configs/sft.py", "optim.accum_steps=0", "optim.accum_steps = 0"),
    ("configs/online.py:objective=ppo", "online.minibatches=0", "online.minibatches = 0"),
    ("configs/online.py:objective=ppo", "objective.lam=1.5", "objective.lam = 1.5"),
    ("configs/online.py:objective=rloo", "objective.kl_coef=-0.1", "objective.kl_coef = -0.1"),
    ("configs/preference.py:objective=cdpo", "objective.label_smoothing=0.7",
     "objective.label_smoothing = 0.7"),
    ("configs/sft.py", "eval.temperature=0", "eval.temperature = 0"),
    ("configs/sft.py", "data.batch_size=0", "data.batch_size = 0"),
])
def test_bad_settings_are_refused_by_name_before_compute(tmp_path, capsys, spec, override,
                                                         named):
    code = main_lib.main(["--config", os.path.join(ROOT, spec), "--workdir",
                          str(tmp_path / "w"), f"--config.{override}"])
    err = capsys.readouterr().err
    assert code == 2 and "config error" in err and named in err, err
    assert not os.path.exists(tmp_path / "w")
