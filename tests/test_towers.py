"""DualEncoder towers: what each architecture shares, frozen embedder, padding, pretrained init."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from dualenc import encoders, optimizers, towers

T5_TINY = encoders.T5Config(vocab_size=64, d_model=32, num_heads=2, head_dim=16, num_layers=2,
                            d_ff=64, dropout_rate=0.0)
BERT_TINY = encoders.BertConfig(vocab_size=64, d_model=32, num_heads=2, num_layers=2, d_ff=64,
                                max_position_embeddings=32, dropout_rate=0.0,
                                attention_dropout_rate=0.0)
PROJECTION = 16


def _ids(batch=3, length=7, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, 64, size=(batch, length)).astype(np.int32)
  mask = np.ones_like(ids)
  return jnp.asarray(ids), jnp.asarray(mask)


def _init(arch, config=T5_TINY, embedding_dim=PROJECTION):
  model = towers.DualEncoder(config, architecture=arch, embedding_dim=embedding_dim)
  ids, mask = _ids()
  params = model.init(jax.random.PRNGKey(0), ids, mask, ids, mask)["params"]
  return model, nn.meta.unbox(params)


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.fixture(scope="module")
def tower_params():
  return {arch: _init(arch) for arch in towers.ARCHITECTURES}


def test_parameter_counts_follow_what_each_architecture_shares(tower_params):
  _, sde = tower_params["sde"]
  encoder = _count(sde["encoder"])
  embedder = _count(sde["encoder"]["token_embedder"])
  projection = _count(sde["projection"])
  assert embedder == 64 * 32 and projection == 32 * PROJECTION
  expected_total = {
      "sde": encoder + projection,
      "ade": 2 * encoder + 2 * projection,
      "ade_spl": 2 * encoder + projection,
      "ade_ste": 2 * (encoder - embedder) + embedder + 2 * projection,
      "ade_fte": 2 * (encoder - embedder) + embedder + 2 * projection,
  }
  expected_keys = {
      "sde": {"encoder", "projection"},
      "ade": {"query_encoder", "document_encoder", "query_projection", "document_projection"},
      "ade_spl": {"query_encoder", "document_encoder", "projection"},
      "ade_ste": {"shared_token_embedder", "query_encoder", "document_encoder",
                  "query_projection", "document_projection"},
      "ade_fte": {"shared_token_embedder", "query_encoder", "document_encoder",
                  "query_projection", "document_projection"},
  }
  for arch, (_, params) in tower_params.items():
    assert set(params) == expected_keys[arch], arch
    assert _count(params) == expected_total[arch], arch
  for arch in ("ade_ste", "ade_fte"):
    assert "token_embedder" not in tower_params[arch][1]["query_encoder"]


def _grad_norms(model, params):
  """Per top-level subtree: gradient norm from the query side and from the document side."""
  ids, mask = _ids()
  out = {}
  for side, method in (("query", model.encode_queries), ("document", model.encode_documents)):
    grads = jax.grad(lambda p: jnp.sum(model.apply({"params": p}, ids, mask, method=method)
                                       * jnp.arange(PROJECTION)))(params)
    out[side] = {k: float(optax.tree.norm(v)) for k, v in grads.items()}
  return out


@pytest.mark.parametrize("arch", towers.ARCHITECTURES)
def test_shared_parameters_are_used_by_both_towers(tower_params, arch):
  """A parameter is shared exactly when both towers send gradient into it."""
  model, params = tower_params[arch]
  norms = _grad_norms(model, params)
  for name in params:
    used_by_query, used_by_document = norms["query"][name] > 0, norms["document"][name] > 0
    shared = name in ("encoder", "projection", "shared_token_embedder")
    if arch == "ade_fte" and name == "shared_token_embedder":
      assert not used_by_query and not used_by_document  # frozen: no gradient at all
    elif shared:
      assert used_by_query and used_by_document, name
    else:
      assert used_by_query != used_by_document, name
      assert used_by_query == name.startswith("query_"), name


def test_sde_towers_are_identical_and_ade_towers_differ(tower_params):
  ids, mask = _ids()
  model, params = tower_params["sde"]
  q = model.apply({"params": params}, ids, mask, method=model.encode_queries)
  d = model.apply({"params": params}, ids, mask, method=model.encode_documents)
  np.testing.assert_array_equal(q, d)
  model, params = tower_params["ade"]
  q = model.apply({"params": params}, ids, mask, method=model.encode_queries)
  d = model.apply({"params": params}, ids, mask, method=model.encode_documents)
  assert np.abs(np.asarray(q) - np.asarray(d)).max() > 1e-3


def test_frozen_embedder_gets_no_update_from_the_optimizer(tower_params):
  model, params = tower_params["ade_fte"]
  ids, mask = _ids()
  optimizer = optimizers.make_optimizer(
      params, name="adamw", schedule=optax.constant_schedule(1e-2), weight_decay=0.1,
      frozen_patterns=towers.FROZEN_PARAMETERS["ade_fte"])
  opt_state = optimizer.init(params)

  def loss(p):
    q, d = model.apply({"params": p}, ids, mask, ids, mask)
    return -jnp.sum(q * d)

  grads = jax.grad(loss)(params)
  assert float(optax.tree.norm(grads["shared_token_embedder"])) == 0.0
  updates, _ = optimizer.update(grads, opt_state, params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_array_equal(new["shared_token_embedder"]["embedding"],
                                params["shared_token_embedder"]["embedding"])
  changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), new["query_encoder"],
                         params["query_encoder"])
  assert all(jax.tree.leaves(changed))


@pytest.mark.parametrize("config", [T5_TINY, BERT_TINY], ids=["t5", "bert"])
@pytest.mark.parametrize("pooling", ["mean", "first"])
def test_padding_does_not_change_the_pooled_embedding(config, pooling):
  model = towers.DualEncoder(config, architecture="sde", pooling=pooling,
                             embedding_dim=PROJECTION)
  ids, mask = _ids(batch=2, length=6)
  params = model.init(jax.random.PRNGKey(1), ids, mask, ids, mask)["params"]
  padded_ids = jnp.concatenate([ids, jnp.zeros((2, 5), jnp.int32)], axis=1)
  padded_mask = jnp.concatenate([mask, jnp.zeros((2, 5), jnp.int32)], axis=1)
  plain = model.apply({"params": params}, ids, mask, method=model.encode_queries)
  padded = model.apply({"params": params}, padded_ids, padded_mask, method=model.encode_queries)
  np.testing.assert_allclose(plain, padded, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(plain, axis=-1), 1.0, atol=1e-5)


def test_mean_pooling_ignores_padding_positions():
  hidden = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 3)), jnp.float32)
  mask = jnp.asarray([[1, 1, 0, 0], [1, 1, 1, 1]])
  np.testing.assert_allclose(towers.pool(hidden, mask, "mean")[0], hidden[0, :2].mean(0),
                             rtol=1e-6)
  np.testing.assert_allclose(towers.pool(hidden, mask, "mean")[1], hidden[1].mean(0), rtol=1e-6)


@pytest.mark.parametrize("arch", towers.ARCHITECTURES)
def test_pretrained_encoder_initialises_every_architecture(tower_params, arch):
  encoder = encoders.build_encoder(T5_TINY)
  ids, mask = _ids()
  encoder_params = nn.meta.unbox(encoder.init(jax.random.PRNGKey(7), ids, mask)["params"])
  model = towers.DualEncoder(T5_TINY, architecture=arch, embedding_dim=None)
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), ids, mask, ids, mask)["params"])
  params = towers.init_from_pretrained_encoder(params, encoder_params, arch)
  hidden = encoder.apply({"params": encoder_params}, ids, mask)
  expected = towers.l2_normalize(towers.pool(hidden, mask, "mean"))
  for method in (model.encode_queries, model.encode_documents):
    np.testing.assert_allclose(model.apply({"params": params}, ids, mask, method=method),
                               expected, atol=1e-6)


def test_pretrained_encoder_of_another_size_is_refused(tower_params):
  _, params = tower_params["ade_spl"]
  bigger = encoders.T5Config(vocab_size=64, d_model=48, num_heads=2, head_dim=16, num_layers=2,
                             d_ff=64)
  ids, mask = _ids()
  encoder_params = nn.meta.unbox(
      encoders.build_encoder(bigger).init(jax.random.PRNGKey(0), ids, mask)["params"])
  with pytest.raises(ValueError, match="expected shape"):
    towers.init_from_pretrained_encoder(params, encoder_params, "ade_spl")


def test_every_tower_parameter_has_logical_axis_names():
  for arch in towers.ARCHITECTURES:
    model = towers.DualEncoder(T5_TINY, architecture=arch, embedding_dim=PROJECTION)
    ids, mask = _ids()
    abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), ids, mask, ids, mask)
    leaves = jax.tree.leaves(abstract["params"],
                             is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    for leaf in leaves:
      assert isinstance(leaf, nn.LogicallyPartitioned), (arch, leaf)
      assert len(leaf.names) == leaf.value.ndim


def test_unknown_architecture_is_a_clear_error():
  model = towers.DualEncoder(T5_TINY, architecture="dual")
  ids, mask = _ids()
  with pytest.raises(ValueError, match="DualEncoder.architecture='dual'"):
    model.init(jax.random.PRNGKey(0), ids, mask, ids, mask)


def test_identity_projection_starts_as_the_unprojected_towers_and_is_shared_for_ade_spl():
  """projection_init='identity' keeps a pretrained encoder's embeddings at step 0 (the suites
  fine-tune ADE-SPL's shared projection from there); a width mismatch is refused by name."""
  ids, mask = _ids()
  plain = towers.DualEncoder(BERT_TINY, architecture="ade_spl")
  params = nn.meta.unbox(plain.init(jax.random.PRNGKey(0), ids, mask, ids, mask)["params"])
  projected = towers.DualEncoder(BERT_TINY, architecture="ade_spl", embedding_dim=32,
                                 projection_init="identity")
  with_projection = nn.meta.unbox(
      projected.init(jax.random.PRNGKey(0), ids, mask, ids, mask)["params"])
  assert set(with_projection) == set(params) | {"projection"}  # one projection, shared
  np.testing.assert_array_equal(with_projection["projection"]["kernel"], np.eye(32))
  for side in ("queries", "documents"):
    want = plain.apply({"params": params}, ids, mask, method=f"encode_{side}")
    got = projected.apply({"params": dict(params, projection=with_projection["projection"])},
                          ids, mask, method=f"encode_{side}")
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  bad = towers.DualEncoder(BERT_TINY, architecture="ade_spl", embedding_dim=16,
                           projection_init="identity")
  with pytest.raises(ValueError, match="needs embedding_dim equal to the encoder's width 32"):
    bad.init(jax.random.PRNGKey(0), ids, mask, ids, mask)
