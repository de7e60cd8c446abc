"""Train state and the jitted, sharded train step.

The contrastive loss sees the global batch: under `jax.jit` with the batch sharded over the
mesh's `data` axis, `q @ d.T` inside the loss is a global product that GSPMD partitions, so
every example's negatives are the whole global batch with no collectives written here.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import optax

from dualenc import grad_cache
from dualenc import losses

PAD_ID = 0


@flax.struct.dataclass
class TrainState:
  step: jax.Array                    # [] int32
  params: Any
  opt_state: Any


def attention_mask(tokens: jax.Array) -> jax.Array:
  """Padding id 0 (seqio / T5X and BERT convention) marks positions to ignore."""
  return (tokens != PAD_ID).astype(jnp.int32)


def embed_batch(model, params: Any, batch: Mapping[str, jax.Array], *,
                dropout_rng=None) -> Tuple[jax.Array, jax.Array, Any]:
  """Feature dict -> (queries [B, D], positives [B, D], hard negatives [B, N, D] or None), for
  any model with the towers' interface (a DualEncoder, a sparse.SparseEncoder: D = V).

  Positives and hard negatives go through the document tower in one call, each example's
  positive followed by its negatives ([B * (1 + N), L] rows), so that under a data-parallel
  mesh every row stays on the device that holds its example (concatenating [B, L] and
  [B * N, L] instead gathers token rows across devices).
  """
  queries = batch["left_encoder_input_tokens"]
  documents = batch["right_encoder_input_tokens"]
  negatives = batch.get("right_negative_encoder_input_tokens")
  batch_size = documents.shape[0]
  if negatives is not None:
    num_negatives = negatives.shape[1]
    documents = jnp.concatenate([documents[:, None], negatives], axis=1).reshape(
        batch_size * (1 + num_negatives), documents.shape[-1])
  deterministic = dropout_rng is None
  rngs = None if deterministic else {"dropout": dropout_rng}
  q, d = model.apply({"params": params}, queries, attention_mask(queries), documents,
                     attention_mask(documents), deterministic=deterministic, rngs=rngs)
  hard = None
  if negatives is not None:
    d = d.reshape(batch_size, 1 + num_negatives, -1)
    d, hard = d[:, 0], d[:, 1:]
  return q, d, hard


def _accepted(loss_fn: Callable[..., Any]) -> frozenset:
  """Keyword arguments of `loss_fn` beyond the embeddings (sparse losses take more)."""
  try:
    return frozenset(inspect.signature(loss_fn).parameters)
  except (TypeError, ValueError):
    return frozenset()


def make_value_and_grad(model, loss_fn: Callable[..., Any], *, use_ids_for_masking: bool = True,
                        microbatch_size: Optional[int] = None, num_data_shards: int = 1):
  """Returns value_and_grad(params, batch, dropout_rng, step, frozen) -> ((loss, metrics),
  grads) of `loss_fn` on the global batch's embeddings (see `make_train_step`).

  `microbatch_size` (a divisor of the global batch, a multiple of `num_data_shards`, the
  mesh's data size) turns on gradient caching (dualenc.grad_cache): the same loss and
  gradients over the whole global batch, with one microbatch of tower activations in memory.
  """
  accepted = _accepted(loss_fn)

  def loss_of_embeddings(embeddings, batch, step, frozen):
    q, d, hard = embeddings
    extra = {}
    if use_ids_for_masking and "left_ids" in batch:
      extra.update(query_ids=batch["left_ids"], doc_ids=batch["right_ids"])
    if hard is not None:
      # The pipeline pads absent hard negatives with all-zero token rows; they are no negatives.
      extra["hard_negative_mask"] = jnp.any(
          batch["right_negative_encoder_input_tokens"] != PAD_ID, axis=-1)
    for name, value in (("step", step), ("batch", batch), ("frozen", frozen)):
      if name in accepted:
        extra[name] = value
    out = loss_fn(q, d, hard_negatives=hard, **extra)
    loss, loss_metrics = out if isinstance(out, tuple) else (out, {})
    return loss, dict(losses.contrastive_metrics(q, d), **loss_metrics)

  def embed(params, batch, dropout_rng):
    return embed_batch(model, params, batch, dropout_rng=dropout_rng)

  def value_and_grad(params, batch, dropout_rng, step=0, frozen=None):
    loss_of = lambda embeddings: loss_of_embeddings(embeddings, batch, step, frozen)
    if microbatch_size:
      tokens = {k: v for k, v in batch.items() if k.endswith("encoder_input_tokens")}
      return grad_cache.cached_value_and_grad(
          embed, loss_of, params, tokens, dropout_rng, microbatch_size=microbatch_size,
          num_data_shards=num_data_shards)
    return jax.value_and_grad(lambda p: loss_of(embed(p, batch, dropout_rng)), has_aux=True)(
        params)

  return value_and_grad


def make_train_step(model, optimizer: optax.GradientTransformation,
                    loss_fn: Callable[..., Any], base_rng: jax.Array,
                    use_ids_for_masking: bool = True,
                    microbatch_size: Optional[int] = None, num_data_shards: int = 1):
  """Returns train_step(state, batch, frozen=None) -> (state, metrics); jit it with shardings.

  The loss gets the embeddings of the global batch, and, when its signature asks for them,
  `step` (the step number, traced), `batch` (the feature dict: token ids for in-step teachers)
  and `frozen` (arrays the loss needs but nothing trains, e.g. teacher weights; passed to the
  step as its third argument). It returns the loss, or (loss, {name: scalar}) to log more.
  `microbatch_size`: gradient caching, see `make_value_and_grad`.
  """
  value_and_grad = make_value_and_grad(
      model, loss_fn, use_ids_for_masking=use_ids_for_masking,
      microbatch_size=microbatch_size, num_data_shards=num_data_shards)

  def train_step(state: TrainState, batch, frozen=None):
    dropout_rng = jax.random.fold_in(base_rng, state.step)
    (loss, metrics), grads = value_and_grad(state.params, batch, dropout_rng, state.step, frozen)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads),
                   update_norm=optax.tree.norm(updates))
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step


def init_params(model, rng: jax.Array,
                feature_shapes: Mapping[str, Tuple[int, ...]]) -> Any:
  """Fresh boxed params (`nn.LogicallyPartitioned` leaves) for `feature_shapes`' inputs."""
  q = jnp.ones(feature_shapes["left_encoder_input_tokens"], jnp.int32)
  d = jnp.ones(feature_shapes["right_encoder_input_tokens"], jnp.int32)
  return model.init(rng, q, attention_mask(q), d, attention_mask(d))["params"]
