"""Dropout whose mask is one fused elementwise kernel on every backend.

`flax.linen.Dropout` draws its mask with `jax.random.bernoulli`. On CPU, JAX lowers the
Threefry-2x32 hash behind it as a rolled `while` loop (to keep compile times down), so XLA
materialises every round's uint32 arrays in memory: measured on the 2-core dev box, that cost
about a quarter of an all-MiniLM-L6-v2 train step (batch 64, length 128). Here the same hash is
written out unrolled, so XLA fuses counter, hash, threshold and select into one loop.

The bits are exactly `jax.random.bits(key, shape)` (partitionable Threefry: each element hashes
its own flat index, so a sharded array draws the same mask as an unsharded one) and the mask is
exactly `jax.random.bernoulli(key, 1 - rate, shape)`: `Dropout` is a drop-in for
`nn.Dropout`, output for output (tests/test_encoders.py checks both).
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_KEY_PARITY = np.uint32(0x1BD11BDA)


def _rotate_left(x: jax.Array, distance: int) -> jax.Array:
  return (x << np.uint32(distance)) | (x >> np.uint32(32 - distance))


def threefry2x32(key: jax.Array, x0: jax.Array, x1: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Threefry-2x32 (20 rounds, Salmon et al. 2011) of counters (x0, x1) under key uint32[2]."""
  k0, k1 = key[0], key[1]
  schedule = (k0, k1, k0 ^ k1 ^ _KEY_PARITY)
  x0, x1 = x0 + schedule[0], x1 + schedule[1]
  for block in range(5):
    for rotation in _ROTATIONS[block % 2]:
      x0 = x0 + x1
      x1 = _rotate_left(x1, rotation) ^ x0
    x0 = x0 + schedule[(block + 1) % 3]
    x1 = x1 + schedule[(block + 2) % 3] + np.uint32(block + 1)
  return x0, x1


def _flat_index(shape: Sequence[int]) -> jax.Array:
  """uint32 row-major flat index of every element (the low word of JAX's 64-bit counter; the
  high word is 0 below 2**32 elements)."""
  strides = np.cumprod((1,) + tuple(shape[::-1]))[:-1][::-1]
  return jnp.asarray(sum(jax.lax.broadcasted_iota(jnp.uint32, tuple(shape), axis)
                         * np.uint32(stride) for axis, stride in enumerate(strides)), jnp.uint32)


def random_bits(key: jax.Array, shape: Sequence[int]) -> jax.Array:
  """uint32 bits of `shape` (fewer than 2**32 elements), equal to `jax.random.bits(key, shape)`
  for a Threefry key."""
  if math.prod(shape) >= 2**32:
    raise ValueError(f"random_bits: shape {tuple(shape)} has 2**32 or more elements")
  low = _flat_index(shape)
  bits0, bits1 = threefry2x32(jax.random.key_data(key), jnp.zeros_like(low), low)
  return bits0 ^ bits1


def bernoulli(key: jax.Array, p: float, shape: Sequence[int]) -> jax.Array:
  """bool mask, True with probability p: `jax.random.bernoulli(key, p, shape)`, bit for bit."""
  mantissa = random_bits(key, shape) >> np.uint32(32 - 23)  # float32 uniform in [0, 1)
  uniform = jax.lax.bitcast_convert_type(mantissa | np.uint32(0x3F800000), jnp.float32) - 1.0
  return uniform < jnp.float32(p)


def _is_threefry(key: jax.Array) -> bool:
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    return str(jax.random.key_impl(key)) == "threefry2x32"
  return key.dtype == jnp.uint32 and key.shape == (2,) and (
      jax.config.jax_default_prng_impl == "threefry2x32")


class Dropout(nn.Module):
  """`nn.Dropout(rate)` with a fused mask (see the module docstring); x [...] -> [...].

  Non-Threefry keys and inputs of 2**32 or more elements use `jax.random.bernoulli` itself.
  """

  rate: float
  rng_collection: str = "dropout"

  @nn.compact
  def __call__(self, inputs: jax.Array, deterministic: bool) -> jax.Array:
    if self.rate == 0.0 or deterministic:
      return inputs
    if self.rate == 1.0:
      return jnp.zeros_like(inputs)
    keep_prob = 1.0 - self.rate
    key = self.make_rng(self.rng_collection)
    if (_is_threefry(key) and jax.config.jax_threefry_partitionable
        and math.prod(inputs.shape) < 2**32):
      keep = bernoulli(key, keep_prob, inputs.shape)
    else:  # another PRNG implementation, or a 64-bit counter: jax.random's own sampler
      keep = jax.random.bernoulli(key, keep_prob, inputs.shape)
    return jax.lax.select(keep, inputs / keep_prob, jnp.zeros_like(inputs))
