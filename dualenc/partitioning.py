"""Sharding as data: a device mesh, logical-axis rules, and the shardings they imply.

Modules name their parameter and activation axes logically (`batch`, `embed`, `mlp`, ...);
`LOGICAL_AXIS_RULES` maps those names onto the mesh axes `data` and `model` (T5X's standard
rules: data parallelism over `batch`, tensor parallelism over `vocab`, `mlp` and `heads`).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import gin
import jax
import numpy as np
from flax import linen as nn
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

LogicalRules = Sequence[Tuple[str, Optional[str]]]

LOGICAL_AXIS_RULES: LogicalRules = (
    ("batch", "data"),
    ("vocab", "model"),
    ("mlp", "model"),
    ("heads", "model"),
    ("embed", None),
    ("kv", None),
    ("length", None),
    ("projection", None),
    ("relpos_buckets", None),
    ("abspos", None),
    ("token_types", None),
)


@gin.configurable
def make_mesh(data: int = -1, model: int = 1,
              devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A ('data', 'model') mesh; `data=-1` takes every device that `model` leaves, otherwise the
  first data x model devices are used.

  Axes are Auto so GSPMD propagates shardings through ops such as `q @ d.T` of two
  batch-sharded arrays (Explicit axes, this JAX's default, reject that product).
  """
  devices = list(devices if devices is not None else jax.devices())
  if model < 1 or len(devices) % model:
    raise ValueError(f"make_mesh.model={model} must divide the device count {len(devices)}")
  if data == -1:
    data = len(devices) // model
  if data < 1 or data * model > len(devices):
    raise ValueError(f"make_mesh: data={data} x model={model} needs more than the "
                     f"{len(devices)} devices available")
  devices = devices[:data * model]
  return jax.make_mesh((data, model), ("data", "model"), devices=devices,
                       axis_types=(AxisType.Auto, AxisType.Auto))


def logical_shardings(abstract_boxed_tree: Any, mesh: Mesh,
                      rules: LogicalRules = LOGICAL_AXIS_RULES) -> Any:
  """NamedShardings for a tree of `nn.LogicallyPartitioned` leaves (from `jax.eval_shape(init)`)."""
  specs = nn.get_partition_spec(abstract_boxed_tree)
  mesh_specs = nn.logical_to_mesh(specs, rules)
  return jax.tree.map(lambda spec: NamedSharding(mesh, spec), mesh_specs,
                      is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  """Leading (batch) dimension over `data`, the rest replicated."""
  return NamedSharding(mesh, P("data", *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
  """Process-local numpy arrays -> global jax.Arrays sharded over `data`.

  Each process passes its own slice of the global batch (leading dimension); on one process
  this simply places the batch.
  """
  def to_global(x):
    x = np.asarray(x)
    return jax.make_array_from_process_local_data(batch_sharding(mesh, x.ndim), x)
  return {k: to_global(v) for k, v in local_batch.items()}
