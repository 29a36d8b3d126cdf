"""Data parallelism over every device of every process, via jit + NamedSharding.

A 1-D mesh with a 'data' axis spans all devices (`jax.devices()` is global in
multi-process runs). Batches are split along 'data'; parameters and optimizer
state are replicated. A plain `jax.jit` over a batch sharded this way computes
BatchNorm statistics and gradients over the *global* batch: XLA inserts the
all-reduces, no pmap/psum needed.
"""

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def create_mesh(devices=None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over 'data', the rest whole."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_size_problem(global_batch_size: int, mesh: Mesh) -> str | None:
    """Why `global_batch_size` cannot be split over the mesh, or None if it can."""
    n = mesh.devices.size
    if global_batch_size <= 0:
        return f'batch_size must be positive, got {global_batch_size}'
    if global_batch_size % n:
        return (f'batch_size {global_batch_size} is not divisible by the {n} '
                f'devices; use a multiple of {n}')
    return None


def local_batch_size(global_batch_size: int) -> int:
    """The rows of each global batch that this process feeds."""
    return global_batch_size // jax.process_count()


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Host-local numpy batch (this process's rows) -> global jax.Arrays."""
    sharding = data_sharding(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
        batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Host values identical on every process -> replicated global jax.Arrays."""
    sharding = replicated(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
        tree)
