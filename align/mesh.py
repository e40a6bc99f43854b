"""Device mesh, logical-axis rules, shardings and multi-process start-up.

Mesh axes are ("data", "fsdp", "tensor"). Parameters carry logical axis names
("embed", "mlp", "heads", "vocab", ...); a config maps each to zero or more mesh axes.
Dimension letters: B batch, T tokens.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from align.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# (mesh, rules) while a step is traced; models pin activation shardings through it.
_ACTIVATIONS = contextvars.ContextVar("align_activation_sharding", default=None)

def initialize_distributed(dist_cfg: Mapping[str, Any] | None = None) -> None:
    """Starts `jax.distributed` when the config or the environment asks for several processes."""
    dist_cfg = dict(dist_cfg or {})
    address = dist_cfg.get("coordinator_address") or os.environ.get("ALIGN_COORDINATOR", "")
    num = int(dist_cfg.get("num_processes") or os.environ.get("ALIGN_NUM_PROCESSES", 0) or 0)
    pid = dist_cfg.get("process_id", -1)
    pid = int(os.environ.get("ALIGN_PROCESS_ID", -1) if pid in (-1, None) else pid)
    if jax.distributed.is_initialized():
        return
    if address and num > 1:
        if pid < 0:
            raise ConfigError(
                "distributed.process_id (or ALIGN_PROCESS_ID) must be set when "
                f"distributed.num_processes={num} > 1", key="distributed.process_id")
        jax.distributed.initialize(
            coordinator_address=address, num_processes=num, process_id=pid,
            heartbeat_timeout_seconds=int(dist_cfg.get("heartbeat_timeout_s", 100)))
    elif num > 1:
        raise ConfigError(
            f"distributed.num_processes={num} but no coordinator address: set "
            "distributed.coordinator_address (or ALIGN_COORDINATOR)",
            key="distributed.coordinator_address")
    elif os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("TPU_WORKER_HOSTNAMES"):
        # Cluster environments (TPU pods, SLURM with JAX variables) are auto-detected by JAX.
        jax.distributed.initialize()


def barrier(name: str) -> None:
    """Waits until every process reaches the same named point (a no-op for one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def mesh_shape(mesh_cfg: Mapping[str, Any], num_devices: int) -> tuple[int, int, int]:
    """Resolves (data, fsdp, tensor); one axis may be -1 to take the remaining devices."""
    sizes = [int(mesh_cfg.get(a, 1)) for a in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ConfigError(f"mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
    known = int(np.prod([s for s in sizes if s != -1]))
    if any(s == 0 or s < -1 for s in sizes):
        raise ConfigError(
            f"mesh: axis sizes must be positive or -1, got {dict(zip(MESH_AXES, sizes))}")
    if -1 in sizes:
        if num_devices % known:
            raise ConfigError(
                f"mesh: {num_devices} devices cannot be split with fixed axes of {known} devices; "
                f"on a CPU, simulate a multiple of {known} with the environment variable "
                f"XLA_FLAGS=--xla_force_host_platform_device_count=N (set before JAX starts)")
        sizes[sizes.index(-1)] = num_devices // known
    if int(np.prod(sizes)) != num_devices:
        raise ConfigError(
            f"mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices, "
            f"but {num_devices} are available. On a CPU, simulate "
            f"{int(np.prod(sizes))} devices with the environment variable "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={int(np.prod(sizes))} (set "
            "before JAX starts), or set the mesh.* sizes to fit the devices (-1 takes the rest)")
    return tuple(sizes)


def make_mesh(mesh_cfg: Mapping[str, Any], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ("data", "fsdp", "tensor") mesh over all (or the given) devices."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(mesh_cfg, len(devices))
    # Auto axes: the compiler propagates shardings from the explicit in/out shardings of the step.
    return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(shape),
                         devices=devices)


def logical_rules(rules_cfg: Mapping[str, str]) -> dict[str, tuple[str, ...]]:
    """Parses {"embed": "fsdp", "batch": "data,fsdp", "norm": ""} into mesh-axis tuples."""
    rules = {}
    for name, axes in dict(rules_cfg).items():
        parsed = tuple(a.strip() for a in str(axes or "").split(",") if a.strip())
        for a in parsed:
            if a not in MESH_AXES:
                raise ConfigError(f"mesh.rules.{name}: unknown mesh axis {a!r}; valid: {MESH_AXES}",
                                  key=f"mesh.rules.{name}")
        rules[name] = parsed
    return rules


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int], rules, mesh: Mesh) -> P:
    """PartitionSpec for one array; a dim that does not divide evenly stays replicated."""
    if len(names) != len(shape):
        raise ValueError(f"logical names {tuple(names)} do not match shape {tuple(shape)}")
    used: set[str] = set()
    spec = []
    for name, dim in zip(names, shape):
        if name is not None and name not in rules:
            raise ConfigError(f"no mesh rule for logical axis {name!r}; add it to mesh.rules "
                              f"(known: {sorted(rules)})", key=f"mesh.rules.{name}")
        axes = tuple(a for a in rules.get(name, ()) if a not in used and mesh.shape[a] > 1)
        size = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
        if not axes or dim % size:
            spec.append(None)
            continue
        used.update(axes)
        spec.append(axes[0] if len(axes) == 1 else axes)
    return P(*spec)


def tree_shardings(abstract_tree, names_tree, rules, mesh: Mesh):
    """NamedShardings for a pytree of shapes given a matching pytree of logical-name tuples."""
    return jax.tree.map(
        lambda a, n: NamedSharding(mesh, logical_to_spec(n, a.shape, rules, mesh)),
        abstract_tree, names_tree, is_leaf=_is_names)


def _is_names(x) -> bool:
    return isinstance(x, tuple) and all(isinstance(s, (str, type(None))) for s in x)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, rules=None, ndim: int = 1) -> NamedSharding:
    """Leading (batch) dim over the "batch" rule (default data x fsdp); other dims replicated."""
    axes = tuple(a for a in (rules or {}).get("batch", BATCH_AXES) if mesh.shape[a] > 1)
    lead = axes if len(axes) > 1 else (axes[0] if axes else None)
    return NamedSharding(mesh, P(lead, *([None] * (ndim - 1))))


def batch_divisor(mesh: Mesh, rules=None) -> int:
    """How many ways the batch dim is split: global batch sizes must be a multiple of this."""
    axes = (rules or {}).get("batch", BATCH_AXES)
    return int(np.prod([mesh.shape[a] for a in axes]))


def to_host(tree):
    """Global arrays as NumPy on every process (gathered across hosts when there are several)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        tree = multihost_utils.process_allgather(tree, tiled=True)
    return jax.tree.map(np.asarray, tree)


def put_global(batch: Mapping[str, np.ndarray], mesh: Mesh, rules=None) -> dict[str, jax.Array]:
    """A whole global batch, the same on every process, sharded along the batch dim."""
    return {k: jax.device_put(v, batch_sharding(mesh, rules, np.ndim(v)))
            for k, v in batch.items() if np.asarray(v).dtype != object}


def to_global(batch: Mapping[str, np.ndarray], mesh: Mesh, rules=None) -> dict[str, jax.Array]:
    """Assembles each process's rows into global arrays sharded along the batch dim."""
    out = {}
    for k, v in batch.items():
        v = np.asarray(v)
        if v.dtype == object:
            continue  # host-only fields (raw text) never go to devices
        out[k] = jax.make_array_from_process_local_data(batch_sharding(mesh, rules, v.ndim), v)
    return out


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules):
    """Within this context (entered while tracing a step), `constrain` pins activations."""
    token = _ACTIVATIONS.set((mesh, rules))
    try:
        yield
    finally:
        _ACTIVATIONS.reset(token)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Pins an activation's sharding by logical names; a no-op outside `activation_sharding`.

    Without it the partitioner may carry a parameter's sharding into the activations (e.g. the
    embedding's fsdp-split width into the hidden states) and reshard by full replication.
    """
    ctx = _ACTIVATIONS.get()
    if ctx is None:
        return x
    mesh, rules = ctx
    return jax.lax.with_sharding_constraint(
        x, NamedSharding(mesh, logical_to_spec(names, x.shape, rules, mesh)))


def traced_under(fn, mesh: Mesh, rules):
    """`fn` with `activation_sharding(mesh, rules)` active while it runs (i.e. while jit traces it)."""

    def wrapped(*args, **kwargs):
        with activation_sharding(mesh, rules):
            return fn(*args, **kwargs)

    return wrapped
