"""Gradient caching (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory
Limited Setup"): the full global batch's loss and gradients with one microbatch of activations.

1. Embed the global batch M rows at a time, keeping only the embeddings (no activations).
2. Compute the loss and its gradient with respect to every embedding on the whole global batch,
   so each example keeps all B - 1 in-batch and all same-tower negatives (T5X-style gradient
   accumulation would shrink the pool to the microbatch).
3. Re-run each microbatch's towers and pull its cached embedding gradient back to the
   parameters (a VJP), summing over microbatches.

Both passes of a microbatch use the same dropout key, so they see the same dropout masks.
Memory: activations of one microbatch plus [B, D] embeddings; the loss's [B, B] logits stay.

Microbatch k takes rows k*m .. (k+1)*m of every data shard (m = M / data shards), so under a
data-parallel mesh every microbatch stays spread over all devices with no data movement, and
multi-host runs need nothing more.
"""

from __future__ import annotations

from typing import Any, Callable, Tuple

import jax
import jax.numpy as jnp
from flax import linen as nn


def check_microbatch_size(batch_size: int, microbatch_size: int, num_data_shards: int) -> int:
  """Number of microbatches; a clear error for sizes that do not split evenly."""
  if microbatch_size <= 0 or batch_size % microbatch_size:
    raise ValueError(f"train.microbatch_size={microbatch_size} must be a positive divisor of "
                     f"BATCH_SIZE={batch_size}")
  if microbatch_size % num_data_shards:
    raise ValueError(f"train.microbatch_size={microbatch_size} must divide evenly over the "
                     f"mesh's {num_data_shards} data shards")
  return batch_size // microbatch_size


def _constrain_rows(x: jax.Array, leading: Tuple[Any, ...]) -> jax.Array:
  """Keeps the batch rows on the `data` axis (a no-op without logical axis rules)."""
  return nn.with_logical_constraint(x, leading + ("batch",) + (None,) * (x.ndim - len(leading) - 1))


def split(x: jax.Array, num_microbatches: int, num_data_shards: int) -> jax.Array:
  """[B, ...] -> [K, M, ...]: microbatch k holds the k-th slice of every data shard."""
  shards, rest = num_data_shards, x.shape[1:]
  per_shard = x.shape[0] // (shards * num_microbatches)
  x = x.reshape((shards, num_microbatches, per_shard) + rest).swapaxes(0, 1)
  return _constrain_rows(x.reshape((num_microbatches, shards * per_shard) + rest), (None,))


def merge(x: jax.Array, num_data_shards: int) -> jax.Array:
  """Inverse of `split`: [K, M, ...] -> [B, ...] in the original row order."""
  num_microbatches, rest = x.shape[0], x.shape[2:]
  per_shard = x.shape[1] // num_data_shards
  x = x.reshape((num_microbatches, num_data_shards, per_shard) + rest).swapaxes(0, 1)
  return _constrain_rows(x.reshape((-1,) + rest), ())


def cached_value_and_grad(embed_fn: Callable[[Any, Any, jax.Array], Any],
                          loss_fn: Callable[[Any], Tuple[jax.Array, Any]],
                          params: Any, batch: Any, dropout_rng: jax.Array, *,
                          microbatch_size: int, num_data_shards: int = 1):
  """`jax.value_and_grad(lambda p: loss_fn(embed_fn(p, batch, rng)), has_aux=True)(params)`
  with one microbatch of tower activations alive at a time.

  Args:
    embed_fn: (params, batch rows [M, ...], dropout key) -> embeddings, any pytree of [M, ...]
      arrays (e.g. queries [M, D], documents [M, D], hard negatives [M, N, D] or None).
    loss_fn: embeddings of the global batch -> (scalar loss, aux); it may read the global batch
      through a closure but must depend on the parameters only through the embeddings.
    params: the parameters to differentiate.
    batch: a pytree of [B, ...] arrays.
    dropout_rng: key for dropout; microbatch k uses fold_in(dropout_rng, k) in both passes
      (None: deterministic).
    microbatch_size: M, a divisor of B and a multiple of num_data_shards.
    num_data_shards: the mesh's `data` size (how the batch rows are laid out over devices).

  Returns:
    ((loss, aux), grads) like `jax.value_and_grad(..., has_aux=True)`; grads in the params' dtypes.
  """
  batch_size = jax.tree.leaves(batch)[0].shape[0]
  num_microbatches = check_microbatch_size(batch_size, microbatch_size, num_data_shards)
  microbatches = jax.tree.map(lambda x: split(x, num_microbatches, num_data_shards), batch)
  rngs = None if dropout_rng is None else jax.vmap(
      lambda k: jax.random.fold_in(dropout_rng, k))(jnp.arange(num_microbatches))

  # Pass 1: embeddings only; nothing here is differentiated, so no activation outlives its step.
  def embed_one(carry, inputs):
    rows, rng = inputs
    return carry, embed_fn(params, rows, rng)

  _, stacked = jax.lax.scan(embed_one, None, (microbatches, rngs))
  embeddings = jax.tree.map(lambda x: merge(x, num_data_shards), stacked)

  # The loss on the whole global batch, and its gradient with respect to every embedding.
  (loss, aux), embedding_grads = jax.value_and_grad(loss_fn, has_aux=True)(embeddings)
  cached = jax.tree.map(lambda x: split(x, num_microbatches, num_data_shards), embedding_grads)

  # Pass 2: re-run each microbatch and pull its cached gradient back to the parameters.
  def backward_one(grads, inputs):
    rows, rng, cotangent = inputs
    _, pull_back = jax.vjp(lambda p: embed_fn(p, rows, rng), params)
    (microbatch_grads,) = pull_back(cotangent)
    return jax.tree.map(jnp.add, grads, microbatch_grads), None

  zeros = jax.tree.map(jnp.zeros_like, params)
  grads, _ = jax.lax.scan(backward_one, zeros, (microbatches, rngs, cached))
  return (loss, aux), grads
