"""The KTO of docs/examples/kto.py: an objective outside align, named by a config.

Float64 oracle, exact values, gradients, its own data kind, and the property the split of
`prepare` exists for: a batch-level statistic of the policy (z₀) gives identical losses under
reference.mode=cached and in_step, on 1 and 8 devices.

Dimension letters: B pairs, R rows (completions).
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from align import config as config_lib
from align import objectives
from align.data import pipeline
from align.train import loop

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "docs", "examples"))
import kto  # noqa: E402  (docs/examples/kto.py)


def o_kto(r, z0, desirable, beta, lam_d=1.0, lam_u=1.0):
    sig = lambda x: 1 / (1 + np.exp(-x))
    lam = np.where(desirable > 0, lam_d, lam_u)
    v = np.where(desirable > 0, sig(beta * (r - z0)), sig(beta * (z0 - r)))
    return lam - lam * v


def make(**settings):
    return objectives.make(config_lib.objective_config("kto:kto", **settings))


def test_config_names_it_and_checks_its_settings():
    obj = make(beta=0.3)
    assert (obj.name, obj.data, obj.model.name, obj.uses_reference) == ("kto", "pairs", "lm",
                                                                        True)
    assert obj.settings.beta == 0.3
    with pytest.raises(config_lib.ConfigError, match="objective.beta = -1"):
        make(beta=-1.0)
    with pytest.raises(config_lib.ConfigError, match="has no 'ktx'"):
        config_lib.objective_config("kto:ktx")


def test_loss_matches_the_float64_oracle(tiny_lm, pairs_batch, step_batch, np_sequence_logp):
    policy, reference = tiny_lm(0), tiny_lm(1)
    batch = pairs_batch(seed=3)
    obj = make(beta=0.5, undesirable_weight=1.5)
    prepared, stats = step_batch(obj, policy, reference, batch)
    out = obj.loss(policy, prepared, obj.init(), rng=None)
    side = lambda model, s: np_sequence_logp(model, batch[f"{s}_tokens"],
                                             batch[f"{s}_input_mask"], batch[f"{s}_loss_mask"])
    r = np.concatenate([side(policy, s) - side(reference, s) for s in ("chosen", "rejected")])
    desirable = np.repeat([1.0, 0.0], len(r) // 2)
    z0 = max(r.mean(), 0.0)
    np.testing.assert_allclose(float(stats["z0"]), z0, rtol=1e-4, atol=1e-5)
    want = o_kto(r, z0, desirable, 0.5, lam_u=1.5)
    np.testing.assert_allclose(float(out.loss_sum), want.sum(), rtol=1e-4)
    assert float(out.weight) == len(r)


def test_policy_equal_to_reference_gives_exact_values(tiny_lm, pairs_batch, step_batch):
    policy = tiny_lm(0)
    obj = make(beta=0.1)
    prepared, stats = step_batch(obj, policy, policy, pairs_batch(seed=1))
    out = obj.loss(policy, prepared, obj.init(), rng=None)
    # r = 0 and z₀ = 0: v = σ(0) = ½ on every row.
    assert float(stats["z0"]) == 0.0
    np.testing.assert_allclose(float(out.loss_sum) / float(out.weight), 0.5, rtol=1e-6)


def test_gradients():
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        r = jnp.asarray(rng.normal(size=6), jnp.float64)
        desirable = jnp.asarray([1, 0, 1, 1, 0, 0], jnp.float64)
        check_grads(lambda x: kto.kto_loss(x, 0.2, desirable, beta=0.7, desirable_weight=1.0,
                                           undesirable_weight=1.3), (r,), order=2,
                    modes=("rev",), eps=1e-5)


def test_its_own_data_kind(tiny_lm, step_batch):
    class Tok:  # characters as ids, as the pipeline tests do
        bos_id, eos_id, pad_id, vocab_size, joint = 2, 1, 0, 64, False

        def encode(self, text):
            return [3 + (ord(c) % 60) for c in text]

    records = [{"prompt": f"p{i}", "completion": "abcdef"[:i % 5 + 1], "label": i % 2}
               for i in range(8)]
    batch = next(pipeline.batches("unpaired", records, Tok(), batch_size=8, max_len=12,
                                  max_prompt_len=4, seed=0, shuffle=False, process_index=0,
                                  process_count=1))
    assert batch["label"].tolist() == [0, 1] * 4
    obj = make(data="unpaired")
    assert obj.data == "unpaired"
    policy = tiny_lm(0)
    prepared, _ = step_batch(obj, policy, policy, batch)
    out = obj.loss(policy, prepared, obj.init(), rng=None)
    np.testing.assert_allclose(float(out.loss_sum) / float(out.weight), 0.5, rtol=1e-6)
    with pytest.raises(ValueError, match="'label' must be 0 or 1"):
        next(pipeline.batches("unpaired", [dict(records[0], label=2)] * 8, Tok(), batch_size=8,
                              max_len=12, max_prompt_len=4, seed=0, process_index=0,
                              process_count=1))


TINY = ["--config.model.d_model=32", "--config.model.n_layers=1", "--config.model.n_heads=2",
        "--config.model.n_kv_heads=1", "--config.model.d_ff=64",
        "--config.data.num_train=64", "--config.data.num_test=16",
        "--config.data.num_prompts=16", "--config.data.batch_size=16",
        "--config.data.eval_batch_size=8", "--config.eval.num_samples=0",
        "--config.train.progress=False", "--config.train.eval_every=0",
        "--config.init.workdir=", "--config.init.config=", "--config.optim.lr=3e-3",
        "--config.optim.warmup_steps=0", "--config.optim.accum_steps=2"]


def _run(tmp_path, data_dir, name, devices, *overrides, steps=6):
    cfg = config_lib.resolve(
        os.path.join(ROOT, f"configs/preference.py:objective=kto:kto,size=tiny,steps={steps}"),
        TINY + [f"--config.data.data_dir={data_dir}", "--config.objective.beta=0.5",
                *overrides])
    setup = loop.build(cfg, str(tmp_path / name), devices=devices)
    try:
        state = setup.spec.init_fn()
        it = loop.train_iterator(setup)
        losses, z0 = [], []
        for step in range(steps):
            state, metrics, _ = loop.advance(setup, state, next(it), step)
            metrics = jax.device_get(metrics)
            losses.append(float(metrics["loss"]))
            z0.append(float(metrics["z0"]))
        return np.asarray(losses), np.asarray(z0), bool(setup.frozen)
    finally:
        setup.close()


def test_cached_reference_equals_in_step_on_one_and_eight_devices(tmp_path):
    data_dir = str(tmp_path / "data")
    in_step, z0, ran_reference = _run(tmp_path, data_dir, "in_step", jax.devices()[:1])
    cached, z0_cached, cached_ran_reference = _run(
        tmp_path, data_dir, "cached", jax.devices()[:8], "--config.reference.mode=cached",
        "--config.mesh.data=4", "--config.mesh.fsdp=2")
    assert ran_reference and not cached_ran_reference  # the cached run never runs the reference
    # z₀ follows the policy: had it been frozen at its step-0 value, the losses would differ.
    assert z0[0] == 0.0 and np.all(z0[2:] > 0) and len(set(np.round(z0[1:], 6))) > 3
    np.testing.assert_allclose(cached, in_step, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(z0_cached, z0, rtol=1e-4, atol=1e-6)


def test_the_template_in_the_docs_is_a_working_objective(tmp_path, monkeypatch, tiny_lm,
                                                          pairs_batch, step_batch):
    text = open(os.path.join(ROOT, "docs", "objectives.md")).read()
    code = text.split("## A template", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "my_template.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    obj = objectives.make(config_lib.objective_config("my_template:my_loss", beta=0.2))
    policy, reference = tiny_lm(0), tiny_lm(1)
    batch, _ = step_batch(obj, policy, reference, pairs_batch(seed=0))
    out = obj.loss(policy, batch, obj.init(), rng=None)
    b = len(batch["example_id"])
    assert np.isfinite(float(out.loss_sum)) and float(out.weight) == b
    # At policy = reference the margin is 0: log(1 + e^0) = log 2 per pair.
    same, _ = step_batch(obj, policy, policy, pairs_batch(seed=0))
    np.testing.assert_allclose(float(obj.loss(policy, same, {}, rng=None).loss_sum) / b,
                               np.log(2.0), rtol=1e-5)
