"""The train step's loss inputs: padded hard negatives are masked, ids are passed for masking."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from dualenc import encoders, losses, towers
from dualenc import train_state as ts

CONFIG = encoders.BertConfig(vocab_size=64, d_model=32, num_heads=2, num_layers=1, d_ff=64,
                             max_position_embeddings=16, dropout_rate=0.0,
                             attention_dropout_rate=0.0)


def _tokens(rng, shape):
  tokens = rng.integers(3, 64, size=shape).astype(np.int32)
  tokens[..., -2:] = 0  # some padding
  return tokens


def test_all_padding_negatives_are_masked_out_of_the_loss():
  rng = np.random.default_rng(0)
  model = towers.DualEncoder(CONFIG, architecture="ade_spl", embedding_dim=16)
  batch = {"left_encoder_input_tokens": _tokens(rng, (4, 8)),
           "right_encoder_input_tokens": _tokens(rng, (4, 8)),
           "right_negative_encoder_input_tokens": _tokens(rng, (4, 2, 8)),
           "left_ids": np.arange(4, dtype=np.int32), "right_ids": np.arange(4, dtype=np.int32)}
  batch["right_negative_encoder_input_tokens"][:, 1] = 0  # every example lacks a 2nd negative
  params = nn.meta.unbox(ts.init_params(model, jax.random.PRNGKey(0), {
      k: v.shape for k, v in batch.items()}))
  # tau = 1: a padded row embeds to zeros, i.e. logit 0, which only weighs in at high tau.
  loss_fn = lambda q, d, **kw: losses.samtone(q, d, temperature=1.0, **kw)
  optimizer = optax.sgd(0.0)
  state = ts.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                        opt_state=optimizer.init(params))
  step = ts.make_train_step(model, optimizer, loss_fn, jax.random.PRNGKey(1))
  _, metrics = step(state, batch)

  q, d, hard = ts.embed_batch(model, params, batch)
  only_real = loss_fn(q, d, hard_negatives=hard[:, :1], query_ids=batch["left_ids"],
                      doc_ids=batch["right_ids"])
  with_padding = loss_fn(q, d, hard_negatives=hard, query_ids=batch["left_ids"],
                         doc_ids=batch["right_ids"])
  np.testing.assert_allclose(metrics["loss"], only_real, rtol=1e-6)
  assert abs(float(with_padding) - float(only_real)) > 1e-4  # the mask matters here


def test_embed_batch_encodes_negatives_with_the_document_tower():
  rng = np.random.default_rng(1)
  model = towers.DualEncoder(CONFIG, architecture="ade", embedding_dim=16)
  batch = {"left_encoder_input_tokens": _tokens(rng, (3, 8)),
           "right_encoder_input_tokens": _tokens(rng, (3, 8)),
           "right_negative_encoder_input_tokens": _tokens(rng, (3, 2, 8))}
  params = nn.meta.unbox(ts.init_params(model, jax.random.PRNGKey(0), {
      k: v.shape for k, v in batch.items()}))
  q, d, hard = ts.embed_batch(model, params, batch)
  assert q.shape == d.shape == (3, 16) and hard.shape == (3, 2, 16)
  negatives = batch["right_negative_encoder_input_tokens"][:, 1]
  expected = model.apply({"params": params}, negatives, ts.attention_mask(negatives),
                         method=model.encode_documents)
  np.testing.assert_allclose(hard[:, 1], expected, atol=1e-6)


def test_a_parameter_group_gets_its_own_learning_rate_and_frozen_ones_none():
  """make_optimizer(learning_rate_scales=...): e.g. a sparse model's IDF table."""
  from dualenc import optimizers  # pylint: disable=g-import-not-at-top
  params = {"idf": jnp.ones(4), "encoder": {"kernel": jnp.ones(3)}, "frozen": jnp.ones(2)}
  grads = jax.tree.map(jnp.ones_like, params)
  optimizer = optimizers.make_optimizer(
      params, name="sgd", schedule=lambda step: 0.1, frozen_patterns=(r"^frozen$",),
      learning_rate_scales={r"^idf$": 30.0})
  updates, _ = optimizer.update(grads, optimizer.init(params), params)
  np.testing.assert_allclose(updates["encoder"]["kernel"], -0.1)
  np.testing.assert_allclose(updates["idf"], -3.0)
  np.testing.assert_allclose(updates["frozen"], 0.0)
