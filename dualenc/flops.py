"""Model FLOPs (matmul FLOPs) of a traced function, and the peak they are measured against.

MFU counts only the FLOPs of matrix multiplications (`dot_general`: 2 * output size * contracted
size), as in PaLM's definition, read off the jaxpr with global shapes. XLA's own cost analysis
also counts elementwise work (softmax, GELU, the dropout hash), which would let a slower,
more elementwise program report a higher MFU.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
from jax.extend import core as jex_core


def jaxpr_matmul_flops(jaxpr) -> int:
  """Matmul FLOPs of a (Closed)Jaxpr, e.g. `jax.jit(f).trace(*args).jaxpr`."""
  if isinstance(jaxpr, jex_core.ClosedJaxpr):
    jaxpr = jaxpr.jaxpr
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      (lhs_contract, _), _ = eqn.params["dimension_numbers"]
      lhs_shape = eqn.invars[0].aval.shape
      contracted = math.prod(lhs_shape[d] for d in lhs_contract)
      total += 2 * math.prod(eqn.outvars[0].aval.shape) * contracted
    repeats = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
    for sub in _subjaxprs(eqn.params):
      total += repeats * jaxpr_matmul_flops(sub)
  return total


def _subjaxprs(params: dict[str, Any]):
  """Jaxprs nested in an equation's params (jit, remat, custom_vjp, scan; cond: every branch,
  an upper bound; while bodies count once, their trip count being unknown)."""
  for value in params.values():
    for item in value if isinstance(value, (tuple, list)) else (value,):
      if isinstance(item, jex_core.ClosedJaxpr):
        yield item.jaxpr
      elif isinstance(item, jex_core.Jaxpr):
        yield item


def matmul_flops(fn: Callable[..., Any], *args, **kwargs) -> int:
  """Matmul FLOPs of one call of fn(*args) (arrays or ShapeDtypeStructs), over global shapes."""
  return jaxpr_matmul_flops(jax.make_jaxpr(fn)(*args, **kwargs))


def peak_units() -> int:
  """How many times the configured peak the job has: one per accelerator, but one per host on
  CPU, where the emulated devices (one per core) share the host's cores."""
  if jax.default_backend() == "cpu":
    return jax.process_count()
  return jax.device_count()
