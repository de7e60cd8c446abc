"""Stable pseudo-randomness for input order: same values on every machine, process and run.

Nothing here depends on Python's `hash()`, NumPy's generator streams or TF's op seeds, all of
which may change between versions or processes. A key is derived from strings with BLAKE2b;
per-index values come from the SplitMix64 finaliser, vectorised in NumPy uint64.
"""

from __future__ import annotations

import hashlib

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)


def key(*parts) -> np.uint64:
  """A 64-bit key from the parts' string forms, e.g. key(seed, task_name, split, epoch)."""
  digest = hashlib.blake2b("\x1f".join(str(p) for p in parts).encode("utf-8"), digest_size=8)
  return np.uint64(int.from_bytes(digest.digest(), "little"))


def mix64(values: np.ndarray) -> np.ndarray:
  """SplitMix64 finaliser: a bijection on uint64 with good avalanche."""
  z = np.asarray(values, dtype=np.uint64) + _GOLDEN
  z = (z ^ (z >> np.uint64(30))) * _MUL1
  z = (z ^ (z >> np.uint64(27))) * _MUL2
  return z ^ (z >> np.uint64(31))


def hashed(seed_key: np.uint64, indices: np.ndarray) -> np.ndarray:
  """uint64 hash of each index under `seed_key`."""
  return mix64(mix64(np.asarray(indices, dtype=np.uint64)) ^ seed_key)


def permutation(n: int, seed_key: np.uint64) -> np.ndarray:
  """A permutation of range(n) (int64) determined by `seed_key` alone."""
  return np.argsort(hashed(seed_key, np.arange(n, dtype=np.uint64)), kind="stable")


def uniform(seed_key: np.uint64, indices: np.ndarray) -> np.ndarray:
  """float64 in [0, 1) per index, 53 random bits each."""
  return (hashed(seed_key, indices) >> np.uint64(11)).astype(np.float64) * 2.0**-53
