"""Train state: described without allocation, sharded by logical names, weight decay on matrices."""

import functools

import jax
import numpy as np

from align import config as config_lib
from align import mesh as mesh_lib
from align import objectives
from align.models import transformer
from align.train import optim
from align.train import runs
from align.train import setup as setup_lib
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


def _bytes_per_device(tree) -> dict:
    out = {}
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            out[shard.device] = out.get(shard.device, 0) + shard.data.nbytes
    return out


def test_fsdp_holds_a_1_over_n_share_of_the_train_state_per_device():
    """The real DPO train step on 8 simulated devices: under fsdp=8 each device holds 1/8 of
    the parameters and AdamW moments (all but the norm scales, which stay whole), against
    the whole state per device under data=8; both meshes compute the same step."""
    cfg = config_lib.default_config()
    cfg.model.update(vocab_size=64, d_model=64, n_layers=2, n_heads=4, n_kv_heads=4, d_ff=128,
                     max_len=16)
    cfg.objective = config_lib.objective_config("dpo")
    cfg.train.steps = 10
    model_cfg = transformer.transformer_config(dict(cfg.model))
    rules = mesh_lib.logical_rules(cfg.mesh.rules)
    rng = np.random.default_rng(0)
    pairs = {}
    for side in ("chosen", "rejected"):
        pairs[f"{side}_tokens"] = rng.integers(1, 64, (8, 16)).astype(np.int32)
        pairs[f"{side}_input_mask"] = np.ones((8, 16), np.int32)
        pairs[f"{side}_loss_mask"] = np.concatenate(
            [np.zeros((8, 6), np.int32), np.ones((8, 10), np.int32)], 1)
    results = {}
    for axes in ({"data": 8, "fsdp": 1, "tensor": 1}, {"data": 1, "fsdp": 8, "tensor": 1}):
        mesh = mesh_lib.make_mesh(axes)
        trained = runs.trained(cfg, model_cfg, mesh, rules)
        lm_def = setup_lib.language_model_def(trained, model_cfg)
        steps = setup_lib.make_steps(
            cfg, trained, lm_def, mesh, rules, in_step=True, eos_id=-1,
            reference_sh=setup_lib.reference_shardings(trained, lm_def, mesh, rules))
        state = trained.spec.init_fn()
        frozen = {"reference": trained.spec.init_fn()["params"]}
        state, metrics = steps.train(state, mesh_lib.to_global(pairs, mesh, rules), frozen)
        per_device = _bytes_per_device((state["params"], state["opt_state"]))
        assert len(per_device) == 8
        scalars = sum(leaf.nbytes for leaf in jax.tree.leaves(state["opt_state"])
                      if leaf.ndim == 0)  # Adam's step counts
        results[axes["fsdp"]] = (per_device, float(metrics["loss"]),
                                 jax.device_get(state["params"]), scalars)
    whole, loss_whole, params_whole, scalars = results[1]
    split, loss_split, params_split, _ = results[8]
    norms = sum(int(np.prod(a.shape)) * 4 for path, a in jax.tree_util.tree_leaves_with_path(
        params_whole) if "scale" in jax.tree_util.keystr(path))
    kept_whole = 3 * norms + scalars
    full = max(whole.values())
    assert min(whole.values()) == full  # data parallel: every device holds the whole state
    for nbytes in split.values():
        # Norm scales (params and both Adam moments) and step counts are kept whole; the rest
        # is split 8 ways.
        assert nbytes == (full - kept_whole) // 8 + kept_whole, (nbytes, full, kept_whole)
    assert max(split.values()) < full / 7
    np.testing.assert_allclose(loss_split, loss_whole, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), params_split,
                 params_whole)
