"""Device mesh, partition rules, multi-host setup and host-batch -> global-array assembly.

Mesh axes: 'data' (batch) and 'fsdp' (batch too, plus the large kernels' largest divisible dim).
The batch is split over both axes, so every device computes on its own slice; kernels matched by
the rules are sharded on 'fsdp' and all-gathered by XLA where used.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

BATCH_AXES = ("data", "fsdp")
LARGE_KERNELS = ("fc6", "fc6_deconv")


# Environment variables of the cluster launchers jax.distributed.initialize() understands.
CLUSTER_ENV = (
    "JAX_COORDINATOR_ADDRESS",
    "SLURM_NTASKS",
    "OMPI_COMM_WORLD_SIZE",
    "TPU_WORKER_HOSTNAMES",
)


def init_distributed(coordinator: str = "", num_processes: int = 0, process_id: int = -1) -> None:
    """`jax.distributed.initialize` from explicit flags, or from the cluster environment.

    With no flags it initialises only when a known cluster environment (SLURM, Open MPI,
    TPU pods, or JAX_COORDINATOR_ADDRESS) is present; a single process needs nothing.
    CPU-only runs (JAX_PLATFORMS=cpu) get gloo collectives unless
    JAX_CPU_COLLECTIVES_IMPLEMENTATION says otherwise: XLA:CPU has no cross-process
    collectives without them.
    """
    cluster = any(k in os.environ for k in CLUSTER_ENV)
    multi = bool(coordinator) or cluster
    if (
        multi
        and os.environ.get("JAX_PLATFORMS", "") == "cpu"
        and "JAX_CPU_COLLECTIVES_IMPLEMENTATION" not in os.environ
    ):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator:
        jax.distributed.initialize(coordinator, num_processes, process_id)
    elif cluster:
        jax.distributed.initialize()


def make_mesh(mesh_config, devices=None) -> Mesh:
    """A ('data', 'fsdp') mesh; -1 on one axis means "all remaining devices"."""
    devices = list(devices if devices is not None else jax.devices())
    n = len(devices)
    sizes = [int(mesh_config.data), int(mesh_config.fsdp)]
    if sizes.count(-1) > 1:
        raise ValueError("at most one of config.mesh.data / config.mesh.fsdp may be -1")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if n % known:
            raise ValueError(f"{n} devices do not divide by mesh axes {sizes}")
        sizes[sizes.index(-1)] = n // known
    if int(np.prod(sizes)) != n:
        raise ValueError(
            f"mesh data={sizes[0]} x fsdp={sizes[1]} needs {np.prod(sizes)} devices, have {n}"
        )
    return Mesh(np.asarray(devices).reshape(sizes), ("data", "fsdp"))


def _path_names(path) -> list[str]:
    names = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                names.append(str(getattr(k, attr)))
                break
    return names


def leaf_spec(path, shape, fsdp_size: int, shard_all: bool) -> P:
    """PartitionSpec of one state leaf (params and the optimiser slots that mirror them)."""
    names = _path_names(path)
    if len(shape) < 2 or fsdp_size == 1 or "kernel" not in names:
        return P()
    if not shard_all and not any(k in names for k in LARGE_KERNELS):
        return P()
    for dim in np.argsort(shape)[::-1]:  # the largest dimension that divides
        if shape[dim] % fsdp_size == 0:
            spec = [None] * len(shape)
            spec[dim] = "fsdp"
            return P(*spec)
    logging.debug("replicating %s %s: no dim divides by fsdp=%d", "/".join(names), shape, fsdp_size)
    return P()


def state_shardings(abstract_state: Any, mesh: Mesh, shard_all: bool = False) -> Any:
    """NamedShardings for every leaf of a (abstract) train state."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree.map_with_path(
        lambda path, leaf: NamedSharding(mesh, leaf_spec(path, leaf.shape, fsdp, shard_all)),
        abstract_state,
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The batch dimension split over every device of the mesh."""
    return NamedSharding(mesh, P(BATCH_AXES))


def global_batch(local: dict, mesh: Mesh) -> dict:
    """This process's slice of the batch -> global jax.Arrays sharded on the batch axes."""
    sharding = batch_sharding(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
        for k, v in local.items()
        if k in ("image", "label")
    }


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


# How long a process waits for the others at `compiled_together`'s barrier: long enough for a
# cold compile on one host while another read the persistent compilation cache.
COMPILE_BARRIER_TIMEOUT_S = 30 * 60


class compiled_together:  # noqa: N801 (used like jax.jit)
    """A jitted function whose every new input signature is compiled on each process, then
    waited on at a coordination-service barrier before its first run.

    Why: a program's first cross-process collective sets up its communicators, and XLA:CPU's
    gloo gives up after 30 s (``Gloo context initialization failed: GetKeyValue() timed out``).
    Processes reach that point at different times whenever their compile times differ: JAX writes
    the persistent compilation cache from process 0 only, so on a rerun process 0 loads a program
    in seconds while the others compile it for a minute. The barrier
    (``jax.distributed``'s key-value service, not a device collective) waits up to
    COMPILE_BARRIER_TIMEOUT_S. One process: the jitted function itself, nothing added.
    """

    def __init__(self, jitted: Any, name: str):
        self.jitted, self.name = jitted, name
        self._compiled: dict = {}

    def __call__(self, *args):
        if jax.process_count() == 1:
            return self.jitted(*args)
        leaves, tree = jax.tree.flatten(args)
        key = (tree, tuple((np.shape(x), np.result_type(x)) for x in leaves))
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = self.jitted.lower(*args).compile()
            barrier(f"deconvnet/{self.name}/{len(self._compiled)}", COMPILE_BARRIER_TIMEOUT_S)
            self._compiled[key] = compiled
        return compiled(*args)


def barrier(name: str, timeout_s: float) -> None:
    """Every process waits here until all arrive (jax.distributed's coordination service)."""
    from jax._src import distributed  # the client jax.distributed.initialize() made

    client = distributed.global_state.client
    if client is None or jax.process_count() == 1:
        return
    client.wait_at_barrier(name, timeout_in_ms=int(timeout_s * 1000))
