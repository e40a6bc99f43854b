"""Train state: described without allocation, sharded by logical names, weight decay on matrices."""

import functools

import jax
import numpy as np

from align import config as config_lib
from align import mesh as mesh_lib
from align import objectives
from align.models import transformer
from align.train import optim
from align.train import state as state_lib
from configs import common


def _model(size: str, vocab: int = 32000, **kw):
    cfg = common.model(config_lib.default_config(), size, vocab_size=vocab, max_len=2048, **kw)
    return transformer.transformer_config(cfg.model)


def test_a_7b_model_is_described_and_sharded_without_allocating():
    model_cfg = _model("7b", tie_embeddings=False, scan_layers=True)
    make_fn = functools.partial(lambda c, rngs: transformer.Transformer(c, rngs=rngs), model_cfg)
    model_def = state_lib.describe(make_fn)  # eval_shape only: 27 GB of fp32 is never allocated
    n = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(model_def.abstract_params))
    assert n == transformer.num_params(model_cfg) == 6_738_415_616
    mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    rules = mesh_lib.logical_rules(config_lib.default_config().mesh.rules)
    opt, _ = optim.make(config_lib.default_config().optim, 10,
                        decay_mask=optim.decay_mask_from_names(model_def.names))
    abstract, shardings, _, _ = state_lib.create(
        model_def, make_fn, opt, objectives.make(config_lib.objective_config("sft")), seed=0,
        mesh=mesh, rules=rules)
    # Every weight matrix is split 4 ways (fsdp x tensor): each device holds a quarter.
    for a, names in zip(jax.tree.leaves(abstract["params"]), jax.tree.leaves(
            model_def.names, is_leaf=lambda x: isinstance(x, tuple))):
        if sum(n != "layers" for n in names) >= 2:
            shard = a.sharding.shard_shape(a.shape)
            assert np.prod(shard) * 4 == np.prod(a.shape), (names, a.shape, a.sharding.spec)
    # Adam moments follow their parameters' shardings.
    mu = abstract["opt_state"][1][0].mu
    for p, m in zip(jax.tree.leaves(abstract["params"]), jax.tree.leaves(mu)):
        assert p.sharding == m.sharding


def test_weight_decay_mask_skips_norm_scales_even_when_stacked():
    names = {"w": ("embed", "mlp"), "scale": ("norm",), "stacked_scale": ("layers", "norm"),
             "stacked_w": ("layers", "embed", "mlp")}
    assert optim.decay_mask_from_names(names) == {
        "w": True, "scale": False, "stacked_scale": False, "stacked_w": True}


def test_schedule_warms_up_then_decays_to_the_floor():
    cfg = config_lib.default_config().optim
    lr_fn = optim.schedule(cfg, 100)
    assert float(lr_fn(0)) == 0.0
    np.testing.assert_allclose(float(lr_fn(cfg.warmup_steps)), cfg.lr, rtol=1e-6)
    np.testing.assert_allclose(float(lr_fn(100)), cfg.lr * cfg.min_lr_ratio, rtol=1e-5)
