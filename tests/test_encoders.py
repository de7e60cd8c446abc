"""Encoder modules: logical axes, relative-position buckets, sharing, dtypes, gin files.

Numerical parity with transformers' PyTorch models is in test_convert.py.
"""

import pathlib
import re

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util
from jax.sharding import Mesh

from dualenc import encoders
from dualenc.encoders import dropout, t5

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
LOGICAL_AXES = {"vocab", "embed", "mlp", "heads", "kv", "relpos_buckets", "abspos", "token_types"}

T5_TINY = encoders.T5Config(vocab_size=64, d_model=32, num_heads=4, head_dim=8, num_layers=2,
                            d_ff=64, dropout_rate=0.1)
T5_RELU = encoders.T5Config(vocab_size=64, d_model=32, num_heads=4, head_dim=8, num_layers=2,
                            d_ff=64, feed_forward_proj="relu")
BERT_TINY = encoders.BertConfig(vocab_size=64, d_model=32, num_heads=4, num_layers=2, d_ff=64,
                                max_position_embeddings=40)


def _batch(batch=2, length=24, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(1, 64, size=(batch, length)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, length // 2:] = 0
  return jnp.asarray(ids * mask), jnp.asarray(mask)


def _modules():
  return {"t5_gated": encoders.build_encoder(T5_TINY), "t5_relu": encoders.build_encoder(T5_RELU),
          "bert": encoders.build_encoder(BERT_TINY),
          "bert_mlm": encoders.BertForMaskedLM(BERT_TINY)}


@pytest.mark.parametrize("name", ["t5_gated", "t5_relu", "bert", "bert_mlm"])
def test_every_param_has_logical_axes(name):
  ids, mask = _batch()
  boxed = jax.eval_shape(_modules()[name].init, jax.random.PRNGKey(0), ids, mask)["params"]
  leaves = jax.tree_util.tree_leaves_with_path(
      boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert len(leaves) > 10
  for path, leaf in leaves:
    where = jax.tree_util.keystr(path)
    assert isinstance(leaf, nn.LogicallyPartitioned), f"{where} has no logical axis names"
    assert len(leaf.names) == leaf.value.ndim, f"{where}: {leaf.names} vs {leaf.value.shape}"
    assert set(leaf.names) <= LOGICAL_AXES, f"{where}: unknown axis in {leaf.names}"


def test_param_tree_paths():
  """The paths the DualEncoder towers and the checkpoint converter rely on."""
  ids, mask = _batch()
  flat = {"/".join(k) for k in traverse_util.flatten_dict(nn.unbox(
      jax.eval_shape(encoders.build_encoder(T5_TINY).init, jax.random.PRNGKey(0), ids, mask)))}
  assert {"params/token_embedder/embedding", "params/relpos_bias/rel_embedding",
          "params/layers_1/attention/query/kernel", "params/layers_1/mlp/wi_0/kernel",
          "params/encoder_norm/scale"} <= flat
  assert not any(p.startswith("params/layers_2") for p in flat)


def test_relative_position_buckets_match_transformers():
  """Exhaustive over every relative position up to past max_distance, several bucket settings."""
  torch = pytest.importorskip("torch")
  from transformers.models.t5.modeling_t5 import T5Attention  # pylint: disable=g-import-not-at-top
  for num_buckets, max_distance in ((32, 128), (16, 64), (64, 256)):
    length = 2 * max_distance + 10
    ours = t5.relative_position_buckets(length, length, num_buckets=num_buckets,
                                        max_distance=max_distance)
    positions = torch.arange(length)
    relative = positions[None, :] - positions[:, None]
    ref = T5Attention._relative_position_bucket(  # pylint: disable=protected-access
        relative, bidirectional=True, num_buckets=num_buckets, max_distance=max_distance)
    np.testing.assert_array_equal(ours, ref.numpy())
    # Every bucket is reached except "key after query at distance 0", which cannot happen.
    assert set(np.unique(ours)) == set(range(num_buckets)) - {num_buckets // 2}


def _readout(hidden, seed):
  """A fixed random linear read-out of [B, L, D] to a scalar loss. Not sum(h^2): the final layer
  norm makes that nearly constant, leaving gradients made of rounding noise."""
  return jnp.sum(hidden * jax.random.normal(jax.random.PRNGKey(seed), hidden.shape))


class _TwoTowers(nn.Module):
  """Two encoders sharing one token embedder; the right one freezes it."""

  config: object

  def setup(self):
    self.embedder = encoders.build_token_embedder(self.config)
    self.left = encoders.build_encoder(self.config, token_embedder=self.embedder)
    self.right = encoders.build_encoder(self.config, token_embedder=self.embedder,
                                        freeze_token_embedder=True)

  def __call__(self, ids, mask):
    """[left loss, right loss]."""
    return jnp.stack([_readout(self.left(ids, mask), seed=1),
                      _readout(self.right(ids, mask), seed=2)])


@pytest.mark.parametrize("config", [T5_TINY, BERT_TINY], ids=["t5", "bert"])
def test_shared_and_frozen_token_embedder(config):
  ids, mask = _batch()
  model = _TwoTowers(config)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), ids, mask))["params"]
  assert set(params) == {"embedder", "left", "right"}
  assert "token_embedder" not in params["left"] and "token_embedder" not in params["right"]
  assert params["embedder"]["embedding"].shape == (config.vocab_size, config.d_model)
  # One compilation: the Jacobian's rows are the gradients of the left and right losses.
  jacobian = jax.jit(jax.jacrev(lambda p: model.apply({"params": p}, ids, mask)))(params)
  embedding = np.asarray(jacobian["embedder"]["embedding"])
  assert np.any(embedding[0] != 0.0)  # the left tower trains the shared table
  assert np.all(embedding[1] == 0.0)  # the right tower freezes it ...
  assert any(np.any(np.asarray(g)[1] != 0) for g in jax.tree.leaves(jacobian["right"]))  # only it
  # The two towers read the very same table: with the other weights made equal, equal inputs
  # give equal hidden states.
  same = dict(params, right=params["left"])
  h_left = model.apply({"params": same}, ids, mask, method=lambda m, i, k: m.left(i, k))
  h_right = model.apply({"params": same}, ids, mask, method=lambda m, i, k: m.right(i, k))
  np.testing.assert_array_equal(np.asarray(h_left), np.asarray(h_right))


@pytest.mark.parametrize("config", [T5_TINY, BERT_TINY], ids=["t5", "bert"])
def test_dropout_only_when_not_deterministic(config):
  ids, mask = _batch()
  encoder = encoders.build_encoder(config)
  variables = encoder.init(jax.random.PRNGKey(0), ids, mask)
  det = encoder.apply(variables, ids, mask)
  np.testing.assert_array_equal(np.asarray(det), np.asarray(encoder.apply(variables, ids, mask)))
  drop = lambda seed: encoder.apply(variables, ids, mask, deterministic=False,
                                    rngs={"dropout": jax.random.PRNGKey(seed)})
  assert not np.allclose(np.asarray(drop(1)), np.asarray(det), atol=1e-3)
  assert not np.allclose(np.asarray(drop(1)), np.asarray(drop(2)), atol=1e-3)


@pytest.mark.parametrize("key", [jax.random.PRNGKey(3), jax.random.key(11)],
                         ids=["raw_key", "typed_key"])
def test_fused_dropout_is_jax_bernoulli_and_flax_dropout_bit_for_bit(key):
  """dualenc's unrolled Threefry gives exactly jax.random's bits, masks and nn.Dropout outputs
  (the encoders use it; see dualenc/encoders/dropout.py for why)."""
  for shape in [(7,), (3, 5, 11), (2, 4, 16, 16)]:
    bits = jax.jit(lambda k: dropout.random_bits(k, shape))(key)
    np.testing.assert_array_equal(np.asarray(bits), np.asarray(jax.random.bits(key, shape)))
    keep = jax.jit(lambda k: dropout.bernoulli(k, 0.9, shape))(key)
    np.testing.assert_array_equal(np.asarray(keep),
                                  np.asarray(jax.random.bernoulli(key, 0.9, shape)))
  x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 16, 32)), jnp.float32)
  ours = dropout.Dropout(0.25).apply({}, x, deterministic=False, rngs={"dropout": key})
  flax = nn.Dropout(0.25).apply({}, x, deterministic=False, rngs={"dropout": key})
  np.testing.assert_array_equal(np.asarray(ours), np.asarray(flax))
  assert 0.2 < float(np.mean(np.asarray(ours) == 0)) < 0.3


def test_dropout_past_2_to_the_32_elements_uses_jax_random():
  """The fused hash counts elements in 32 bits; bigger activations (e.g. attention weights of a
  large pod batch) take jax.random's sampler, which is traced here without being run."""
  apply = lambda x: dropout.Dropout(0.1).apply({}, x, deterministic=False,
                                               rngs={"dropout": jax.random.PRNGKey(0)})
  huge = jax.make_jaxpr(apply)(jax.ShapeDtypeStruct((2**17, 2**15 + 1), jnp.float32))
  small = jax.make_jaxpr(apply)(jax.ShapeDtypeStruct((8, 16), jnp.float32))
  assert "random_bits[" in str(huge) and "random_bits[" not in str(small)  # jax.random primitive
  with pytest.raises(ValueError, match="2\\*\\*32"):
    dropout.random_bits(jax.random.PRNGKey(0), (2**17, 2**15 + 1))


def test_dropout_mask_does_not_depend_on_sharding():
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  x = jnp.ones((16, 8, 32))
  apply = jax.jit(lambda x: dropout.Dropout(0.5).apply({}, x, deterministic=False,
                                                       rngs={"dropout": jax.random.PRNGKey(5)}))
  sharded = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
  np.testing.assert_array_equal(np.asarray(apply(sharded)), np.asarray(apply(x)))


@pytest.mark.parametrize("config", [T5_TINY, BERT_TINY], ids=["t5", "bert"])
def test_bfloat16_compute_float32_params(config):
  ids, mask = _batch()
  fp32 = encoders.build_encoder(config)
  bf16 = encoders.build_encoder(
      type(config)(**{**config.__dict__, "dtype": "bfloat16"}))
  variables = bf16.init(jax.random.PRNGKey(0), ids, mask)
  assert {leaf.dtype for leaf in jax.tree.leaves(nn.unbox(variables))} == {jnp.dtype("float32")}
  low, high = bf16.apply(variables, ids, mask), fp32.apply(variables, ids, mask)
  assert low.dtype == jnp.bfloat16 and high.dtype == jnp.float32
  low, high = np.asarray(low, np.float32), np.asarray(high)
  real = np.asarray(mask, bool)
  rel = np.linalg.norm(low[real] - high[real]) / np.linalg.norm(high[real])
  assert rel < 0.05, rel


@pytest.mark.parametrize("config", [T5_TINY, BERT_TINY], ids=["t5", "bert"])
def test_remat_changes_nothing(config):
  ids, mask = _batch()
  plain = encoders.build_encoder(config)
  remats = [encoders.build_encoder(type(config)(**{**config.__dict__, "remat_policy": policy}))
            for policy in ("full", "dots")]
  variables = plain.init(jax.random.PRNGKey(0), ids, mask)
  dropout = lambda module: module.apply(variables, ids, mask, deterministic=False,
                                        rngs={"dropout": jax.random.PRNGKey(3)})
  for remat in remats:
    np.testing.assert_allclose(np.asarray(plain.apply(variables, ids, mask)),
                               np.asarray(remat.apply(variables, ids, mask)), atol=1e-6)
    np.testing.assert_allclose(np.asarray(dropout(plain)), np.asarray(dropout(remat)), atol=1e-6)
  if isinstance(config, encoders.T5Config):  # gradients once (each jit costs seconds of compile)
    grads = jax.jit(lambda v: [jax.grad(lambda w: _readout(m.apply(w, ids, mask), seed=1))(v)
                               for m in [plain] + remats])(variables)
    for remat_grads in grads[1:]:
      for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(remat_grads)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    # The policies differ in what they recompute: 'full' every matmul of a layer, 'dots' only
    # the attention products (batch dimensions), 'none' nothing.
    count = lambda m: str(jax.make_jaxpr(jax.grad(
        lambda w: _readout(m.apply(w, ids, mask), seed=1)))(variables)).count("dot_general[")
    assert count(plain) < count(remats[1]) < count(remats[0])
  with pytest.raises(ValueError, match=r"remat_policy 'everything'.*'none', 'full', 'dots'"):
    type(config)(**{**config.__dict__, "remat_policy": "everything"})


def test_sharded_apply_matches_single_device():
  """Under a (data=2, model=4) mesh with logical rules, outputs equal the unsharded ones."""
  devices = np.array(jax.devices()[:8])
  if devices.size < 8:
    pytest.fail("expected 8 emulated CPU devices (tests/conftest.py sets XLA_FLAGS)")
  mesh = Mesh(devices.reshape(2, 4), ("data", "model"))
  rules = (("batch", "data"), ("heads", "model"), ("mlp", "model"), ("vocab", "model"))
  ids, mask = _batch(batch=4)
  encoder = encoders.build_encoder(T5_TINY)
  variables = encoder.init(jax.random.PRNGKey(0), ids, mask)
  expected = encoder.apply(variables, ids, mask)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    specs = nn.get_partition_spec(variables)
    shardings = nn.logical_to_mesh_sharding(specs, mesh, rules)
    sharded = jax.device_put(variables, shardings)
    got = jax.jit(encoder.apply)(sharded, ids, mask)
  query = sharded["params"]["layers_0"]["attention"]["query"]["kernel"].value
  assert query.sharding.shard_shape(query.shape) == (32, 1, 8)  # heads split over "model"
  np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5)


def test_input_errors():
  ids, mask = _batch(length=41)
  encoder = encoders.build_encoder(BERT_TINY)
  with pytest.raises(ValueError, match="exceeds max_position_embeddings 40"):
    encoder.init(jax.random.PRNGKey(0), ids, mask)
  with pytest.raises(ValueError, match="T5 encoders have no token types"):
    encoders.build_encoder(T5_TINY).init(jax.random.PRNGKey(0), ids, mask, jnp.zeros_like(ids))
  with pytest.raises(ValueError, match="unsupported activation 'mystery'"):
    encoders.T5Config(feed_forward_proj="gated-mystery")
  with pytest.raises(TypeError, match="unsupported encoder config dict"):
    encoders.build_encoder({"d_model": 8})


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "gin_configs" / "encoders").glob("*.gin")),
                         ids=lambda p: p.stem)
def test_gin_files_parse_and_build(path):
  """Each encoder gin file parses after `import dualenc.encoders` and gives a usable config."""
  assert re.search(r"\n# Used by: (\w+=\S+ )*python -m dualenc\.train ", "\n" + path.read_text())
  gin.clear_config()
  try:
    gin.parse_config_file(str(path))
    config = gin.query_parameter("%ENCODER_CONFIG").scoped_configurable_fn()
  finally:
    gin.clear_config()
  assert isinstance(config, (encoders.T5Config, encoders.BertConfig))
  ids = jnp.zeros((1, 8), jnp.int32)
  shapes = nn.unbox(jax.eval_shape(encoders.build_encoder(config).init, jax.random.PRNGKey(0),
                                   ids, jnp.ones_like(ids)))["params"]
  assert shapes["token_embedder"]["embedding"].shape == (config.vocab_size, config.d_model)
  assert f"layers_{config.num_layers - 1}" in shapes and f"layers_{config.num_layers}" not in shapes
