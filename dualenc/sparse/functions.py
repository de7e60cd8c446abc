"""The inference-free sparse retriever's pure functions (Geng et al. 2024; SPLADE).

Shapes: B rows, L positions, V vocabulary entries, C candidates per query, H hidden size.
Every JAX function here jits, accepts float32 or bfloat16 inputs, computes in float32 and has
finite gradients (masked entries use zeros, never infinities).

  document_weights(mlm_logits [B, L, V], mask [B, L]) -> [B, V]
      log1p(relu(max over unmasked positions))  (SPLADE-max); `splade_max_pool` computes the
      same from hidden states in chunks of positions without holding [B, L, V]
  query_weights(token_ids [B, L], mask [B, L], idf [V], special_ids) -> [B, V]
      1 for each distinct (non-special, unmasked) token, times relu(idf)
  flops(weights [B, V]) = sum_t (mean_i |w_it|)^2
  flops_weight(step, lam, warmup_steps) = lam * min(1, (step + 1) / warmup_steps)^2
  ensemble_teacher_scores([scores [B, C]] * M, scale) -> [B, C]
      per-row min-max normalisation of each teacher, mean over teachers, times scale
  kl_distillation(student [B, C], teacher [B, C], temperature) = mean_rows KL(p_teacher || q)
  margin_mse(student [B, C], teacher [B, C]): column 0 is the positive
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp

from dualenc.encoders import layers

ACTIVATIONS = ("log1p_relu", "log1p_log1p_relu")


def _f32(x) -> jax.Array:
  return jnp.asarray(x).astype(jnp.float32)


def activate(x: jax.Array, activation: str = "log1p_relu") -> jax.Array:
  """SPLADE's saturation: log1p(relu(x)), or the l0-style log1p(log1p(relu(x)))."""
  if activation == "log1p_relu":
    return jnp.log1p(jax.nn.relu(x))
  if activation == "log1p_log1p_relu":
    return jnp.log1p(jnp.log1p(jax.nn.relu(x)))
  raise ValueError(f"unknown sparse activation {activation!r}; expected one of {ACTIVATIONS}")


def document_weights(mlm_logits: jax.Array, mask: jax.Array,
                     activation: str = "log1p_relu") -> jax.Array:
  """[B, L, V] MLM logits, [B, L] mask -> [B, V] term weights (SPLADE-max).

  relu(max_l x_l) = max_l relu(x_l), so masked positions enter as 0 and never win.
  """
  relu = jax.nn.relu(_f32(mlm_logits)) * _f32(mask)[..., None]
  return activate(jnp.max(relu, axis=-2), activation)


@functools.partial(jax.jit, static_argnames=("chunk_size", "activation"))
def splade_max_pool(hidden: jax.Array, mask: jax.Array, embedding: jax.Array,
                    bias: jax.Array, *, chunk_size: int = 32,
                    activation: str = "log1p_relu") -> jax.Array:
  """document_weights(hidden @ embedding.T + bias, mask) without the [B, L, V] logits.

  hidden [B, L, H] (the MLM head's transformed states), mask [B, L], embedding [V, H] (the
  tied decoder), bias [V] -> [B, V]. Positions are scanned `chunk_size` at a time keeping a
  running [B, V] maximum; each chunk is rematerialised in the backward pass, so the step holds
  [B, chunk_size, V] logits instead of [B, L, V] (sentence-transformers' SpladePooling does the
  same with its `chunk_size`).
  """
  batch, length, features = hidden.shape
  chunk_size = max(1, min(chunk_size, length))
  pad = -length % chunk_size
  hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
  mask = jnp.pad(_f32(mask), ((0, 0), (0, pad)))
  num_chunks = hidden.shape[1] // chunk_size
  hidden = hidden.reshape(batch, num_chunks, chunk_size, features).swapaxes(0, 1)
  mask = mask.reshape(batch, num_chunks, chunk_size).swapaxes(0, 1)
  embedding, bias = jnp.asarray(embedding), _f32(bias)

  @jax.checkpoint
  def chunk_max(h, m):
    # "bch,vh->bcv" in h's dtype, accumulated and returned in float32 (bfloat16 backward
    # products too: layers.mixed_dot_general).
    logits = layers.mixed_dot_general(h, embedding, (((2,), (1,)), ((), ())), h.dtype,
                                      out_dtype=jnp.float32) + bias
    return jnp.max(jax.nn.relu(logits) * m[..., None], axis=1)

  def step(best, chunk):
    return jnp.maximum(best, chunk_max(*chunk)), None

  best, _ = jax.lax.scan(step, jnp.zeros((batch, embedding.shape[0]), jnp.float32),
                         (hidden, mask))
  return activate(best, activation)


def query_weights(token_ids: jax.Array, mask: jax.Array, idf: jax.Array,
                  special_ids: Sequence[int] = ()) -> jax.Array:
  """[B, L] ids, [B, L] mask, [V] idf -> [B, V]: relu(idf_t) for each distinct token present.

  A token counts once however often it occurs; special ids and masked positions give 0.
  """
  token_ids = jnp.asarray(token_ids).astype(jnp.int32)
  keep = _f32(mask) > 0
  for special in special_ids:
    keep = keep & (token_ids != special)
  vocab = jnp.asarray(idf).shape[-1]
  rows = jnp.arange(token_ids.shape[0])[:, None]
  present = jnp.zeros((token_ids.shape[0], vocab), jnp.float32).at[rows, token_ids].max(
      keep.astype(jnp.float32))
  return present * jax.nn.relu(_f32(idf))


def flops(weights: jax.Array) -> jax.Array:
  """FLOPS regulariser (Paria et al. 2020): sum over terms of the squared mean |weight|."""
  return jnp.sum(jnp.square(jnp.mean(jnp.abs(_f32(weights)), axis=0)))


def flops_weight(step, lam: float, warmup_steps: int) -> jax.Array:
  """lam * min(1, (step + 1) / warmup_steps)^2, quadratic warm-up; lam when warmup_steps is 0."""
  if not warmup_steps:
    return jnp.asarray(lam, jnp.float32)
  ramp = jnp.minimum(1.0, (_f32(step) + 1.0) / float(warmup_steps))
  return jnp.asarray(lam, jnp.float32) * jnp.square(ramp)


def _min_max_rows(scores: jax.Array) -> jax.Array:
  scores = _f32(scores)
  low = jnp.min(scores, axis=-1, keepdims=True)
  high = jnp.max(scores, axis=-1, keepdims=True)
  return (scores - low) / (high - low + 1e-6)


def ensemble_teacher_scores(scores: Sequence[jax.Array], scale: float = 30.0) -> jax.Array:
  """M teachers' [B, C] scores -> [B, C]: each row min-max normalised per teacher
  ((s - min) / (max - min + 1e-6)), averaged over teachers, times `scale`."""
  if not len(scores):
    raise ValueError("ensemble_teacher_scores needs at least one teacher's scores")
  shapes = {tuple(jnp.shape(s)) for s in scores}
  if len(shapes) != 1:
    raise ValueError(f"teacher scores differ in shape: {sorted(shapes)}")
  normalised = jnp.stack([_min_max_rows(s) for s in scores])
  return jnp.mean(normalised, axis=0) * scale


def kl_distillation(student: jax.Array, teacher: jax.Array,
                    temperature: float = 1.0) -> jax.Array:
  """mean over rows of KL(softmax(teacher / T) || softmax(student / T)); no T^2 factor."""
  log_q = jax.nn.log_softmax(_f32(student) / temperature, axis=-1)
  log_p = jax.nn.log_softmax(_f32(teacher) / temperature, axis=-1)
  return jnp.mean(jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1))


def margin_mse(student: jax.Array, teacher: jax.Array) -> jax.Array:
  """mean over rows and j >= 1 of ((s_0 - s_j) - (t_0 - t_j))^2 (column 0: the positive)."""
  student, teacher = _f32(student), _f32(teacher)
  margins = (student[:, :1] - student[:, 1:]) - (teacher[:, :1] - teacher[:, 1:])
  return jnp.mean(jnp.square(margins))


def top_k_prune(weights: jax.Array, k: Optional[int] = None,
                ratio: Optional[float] = None) -> jax.Array:
  """Keeps each row's k largest weights (or those >= ratio x the row's maximum); zeros the rest.

  Inference-time pruning of document vectors; ties at the k-th value are all kept.
  """
  weights = _f32(weights)
  if k is not None:
    kth = jax.lax.top_k(weights, k)[0][..., -1:]
    weights = jnp.where(weights >= jnp.maximum(kth, 1e-30), weights, 0.0)
  if ratio is not None:
    weights = jnp.where(weights >= ratio * jnp.max(weights, axis=-1, keepdims=True),
                        weights, 0.0)
  return weights
