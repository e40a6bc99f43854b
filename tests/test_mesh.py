"""Mesh shapes, logical-axis rules and batch assembly."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from align import mesh as mesh_lib

RULES = mesh_lib.logical_rules({"embed": "fsdp", "mlp": "tensor", "heads": "tensor",
                                "vocab": "tensor", "norm": "", "batch": "data,fsdp"})


def test_mesh_shape_fills_the_free_axis_and_rejects_bad_shapes():
    assert mesh_lib.mesh_shape({"data": -1, "fsdp": 2, "tensor": 2}, 8) == (2, 2, 2)
    assert mesh_lib.mesh_shape({"data": 8, "fsdp": 1, "tensor": 1}, 8) == (8, 1, 1)
    with pytest.raises(ValueError, match="needs 16 devices") as e:
        mesh_lib.mesh_shape({"data": 4, "fsdp": 4, "tensor": 1}, 8)
    # The message says how to get the devices on a CPU.
    assert "XLA_FLAGS=--xla_force_host_platform_device_count=16" in str(e.value)
    with pytest.raises(ValueError, match="at most one axis"):
        mesh_lib.mesh_shape({"data": -1, "fsdp": -1, "tensor": 1}, 8)
    with pytest.raises(ValueError, match="cannot be split"):
        mesh_lib.mesh_shape({"data": -1, "fsdp": 3, "tensor": 1}, 8)


def test_logical_to_spec_maps_names_and_replicates_what_does_not_divide():
    mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    assert mesh_lib.logical_to_spec(("embed", "mlp"), (8, 6), RULES, mesh) == P("fsdp", "tensor")
    # 5 does not divide over 2 tensor devices: that dim stays whole.
    assert mesh_lib.logical_to_spec(("embed", "vocab"), (8, 5), RULES, mesh) == P("fsdp", None)
    # A mesh axis is used at most once per array.
    assert mesh_lib.logical_to_spec(("mlp", "heads"), (4, 4), RULES, mesh) == P("tensor", None)
    assert mesh_lib.logical_to_spec(("norm",), (8,), RULES, mesh) == P(None)
    with pytest.raises(ValueError, match="no mesh rule for logical axis 'kv_heads'"):
        mesh_lib.logical_to_spec(("kv_heads",), (4,), RULES, mesh)
    with pytest.raises(ValueError, match="unknown mesh axis 'model'"):
        mesh_lib.logical_rules({"embed": "model"})


def test_size_one_axes_are_not_used():
    mesh = mesh_lib.make_mesh({"data": 8, "fsdp": 1, "tensor": 1})
    assert mesh_lib.logical_to_spec(("embed", "mlp"), (8, 8), RULES, mesh) == P(None, None)
    assert mesh_lib.batch_sharding(mesh, RULES, 2).spec == P("data", None)


def test_to_global_shards_rows_over_data_and_fsdp_and_keeps_values():
    mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    batch = {"tokens": np.arange(32, dtype=np.int32).reshape(8, 4),
             "text": np.array(["a"] * 8, dtype=object)}
    out = mesh_lib.to_global(batch, mesh, RULES)
    assert set(out) == {"tokens"}  # host-only text stays on the host
    assert out["tokens"].sharding.spec == P(("data", "fsdp"), None)
    np.testing.assert_array_equal(np.asarray(out["tokens"]), batch["tokens"])
    assert mesh_lib.batch_divisor(mesh, RULES) == 4


def test_distributed_settings_are_checked():
    with pytest.raises(ValueError, match="no coordinator address"):
        mesh_lib.initialize_distributed({"num_processes": 2, "coordinator_address": ""})
    with pytest.raises(ValueError, match="process_id"):
        mesh_lib.initialize_distributed({"num_processes": 2, "coordinator_address": "localhost:1",
                                         "process_id": -1})
    mesh_lib.initialize_distributed({})  # one process: nothing to do
    assert jax.process_count() == 1


def test_constrain_pins_activations_only_inside_the_context():
    mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    x = jax.numpy.ones((8, 4, 6))
    f = lambda x: mesh_lib.constrain(x * 2, ("batch", None, None))
    assert jax.jit(f)(x).sharding.is_fully_replicated  # no context: untouched
    out = jax.jit(mesh_lib.traced_under(f, mesh, RULES))(x)
    assert out.sharding.is_equivalent_to(
        jax.sharding.NamedSharding(mesh, P(("data", "fsdp"), None, None)), 3)
    np.testing.assert_array_equal(np.asarray(out), 2 * np.ones((8, 4, 6)))
