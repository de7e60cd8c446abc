"""bfloat16 mixed precision (layers.mixed_dot_general): every matmul of the forward and backward
pass is bf16 x bf16 with float32 accumulation, gradients stay close to float32's, parameters,
optimizer state and losses stay float32, and one gin macro (COMPUTE_DTYPE) turns it on."""

import dataclasses

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from jax.extend import core as jex_core

from dualenc import encoders, flops, losses, towers, train_state
from dualenc.encoders import layers
from dualenc.sparse import model as sparse_model
from tests.test_towers import BERT_TINY, PROJECTION, T5_TINY

BATCH, LENGTH = 4, 8  # neither equals PROJECTION (16) nor a model dimension (2, 16, 32, 64)
CONFIGS = {"bert": BERT_TINY, "t5": T5_TINY}
# Measured with these tiny towers (seeded, CPU): relative L2 error of the bf16 gradient vector
# against float32's 1.8% (BERT) and 1.4% (T5); relative loss error 0.06% and 0.2%.
GRAD_RTOL = 0.05
LOSS_RTOL = 0.01


def _config(name, dtype, **changes):
  return dataclasses.replace(CONFIGS[name], dtype=dtype, **changes)


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, 64, size=(2, BATCH, LENGTH)).astype(np.int32)
  ids[:, 1, LENGTH // 2:] = 0  # some padding
  return {"left_encoder_input_tokens": jnp.asarray(ids[0]),
          "right_encoder_input_tokens": jnp.asarray(ids[1])}


def _model_and_params(config):
  model = towers.DualEncoder(config, architecture="ade_spl", embedding_dim=PROJECTION)
  batch = _batch()
  shapes = {k: v.shape for k, v in batch.items()}
  # float32 parameters whatever the compute dtype (the same values for both dtypes).
  params = nn.unbox(train_state.init_params(model, jax.random.PRNGKey(0), shapes))
  return model, params, batch


def _loss_fn(model, batch):
  def loss(params):
    q, d, _ = train_state.embed_batch(model, params, batch)
    return losses.in_batch_softmax(q, d, temperature=0.05)
  return loss


def _dots(jaxpr, found=None):
  """(operand dtypes, preferred_element_type, operand shapes) of every dot_general in a jaxpr,
  nested ones included (pjit, custom_vjp, remat, scan: dualenc.flops' walker)."""
  found = [] if found is None else found
  if isinstance(jaxpr, jex_core.ClosedJaxpr):
    jaxpr = jaxpr.jaxpr
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      found.append((tuple(str(v.aval.dtype) for v in eqn.invars),
                    str(eqn.params["preferred_element_type"]),
                    tuple(tuple(v.aval.shape) for v in eqn.invars)))
    for sub in flops._subjaxprs(eqn.params):  # pylint: disable=protected-access
      _dots(sub, found)
  return found


def _is_loss_dot(dot):
  """The contrastive loss's own products: float32 [B, D] x [B, D] similarities and their
  transposes; no encoder product has only 2-D operands made of B and D."""
  dtypes, _, shapes = dot
  return (dtypes == ("float32", "float32")
          and all(len(s) == 2 and set(s) <= {BATCH, PROJECTION} for s in shapes))


BF16_DOT = (("bfloat16", "bfloat16"), "float32")


@pytest.mark.parametrize("name,remat_policy", [("bert", "none"), ("t5", "full")])
def test_every_encoder_matmul_is_bf16_forward_and_backward(name, remat_policy):
  counts = {}
  for dtype in ("float32", "bfloat16"):
    model, params, batch = _model_and_params(_config(name, dtype, remat_policy=remat_policy))
    dots = _dots(jax.make_jaxpr(jax.grad(_loss_fn(model, batch)))(params))
    encoder_dots = [d for d in dots if not _is_loss_dot(d)]
    assert 0 < len(dots) - len(encoder_dots) <= 8  # the loss's few similarity products
    if dtype == "bfloat16":
      bad = {d for d in encoder_dots if d[:2] != BF16_DOT}
      assert not bad, f"non-bf16 matmuls with compute dtype bfloat16: {sorted(bad)}"
    else:
      assert all(d[0] == ("float32", "float32") for d in dots), "bf16 matmul in a float32 model"
    counts[dtype] = len(encoder_dots)
  # Per tower and layer: query, key, value, out, two attention products, two MLP (BERT) or three
  # (gated T5) matmuls; plus the projection; each has a forward product and two gradient ones.
  # 'full' remat recomputes a T5 layer's forward products in the backward pass but the last
  # (wo, whose output only feeds a residual add, so its value is never needed).
  per_layer = 8 if name == "bert" else 9
  forward = 2 * (2 * per_layer + 1)
  expected = 3 * forward + (2 * 2 * (per_layer - 1) if remat_policy == "full" else 0)
  assert counts == {"float32": expected, "bfloat16": expected}


def test_sparse_model_matmuls_are_bf16():
  """The MLM head's chunked SPLADE max-pool (a scan of rematerialised chunks) included."""
  config = _config("bert", "bfloat16", vocab_size=128)  # 128: no other dimension's size
  model = sparse_model.SparseEncoder(config, query_encoder="mlm", chunk_size=4)
  batch = _batch()
  ids, docs = batch["left_encoder_input_tokens"], batch["right_encoder_input_tokens"]
  masks = [train_state.attention_mask(x) for x in (ids, docs)]
  params = nn.unbox(model.init(jax.random.PRNGKey(0), ids, masks[0], docs, masks[1]))["params"]

  def loss(params):
    q, d = model.apply({"params": params}, ids, masks[0], docs, masks[1])
    assert q.dtype == d.dtype == jnp.float32
    return jnp.sum(q * d)  # elementwise: every dot below is the model's

  dots = _dots(jax.make_jaxpr(jax.grad(loss))(params))
  assert len(dots) >= 3 * (2 * 8 + 2)  # layers, MLM transform, decoder
  assert {d[:2] for d in dots} == {BF16_DOT}
  decoder = [d for d in dots if any(config.vocab_size in shape for shape in d[2])]
  assert len(decoder) >= 2


@pytest.mark.parametrize("name", ["bert", "t5"])
def test_bf16_gradients_close_to_float32(name):
  results = {}
  for dtype in ("float32", "bfloat16"):
    model, params, batch = _model_and_params(_config(name, dtype))
    loss, grads = jax.jit(jax.value_and_grad(_loss_fn(model, batch)))(params)
    assert loss.dtype == jnp.float32
    assert {g.dtype for g in jax.tree.leaves(grads)} == {jnp.dtype("float32")}
    results[dtype] = float(loss), np.concatenate(
        [np.ravel(g) for g in jax.tree.leaves(grads)])
  (loss32, grad32), (loss16, grad16) = results["float32"], results["bfloat16"]
  loss_error = abs(loss16 - loss32) / abs(loss32)
  grad_error = np.linalg.norm(grad16 - grad32) / np.linalg.norm(grad32)
  print(f"{name}: loss relative error {loss_error:.2e}, gradient relative L2 {grad_error:.2e}")
  assert loss_error < LOSS_RTOL
  assert grad_error < GRAD_RTOL
  # ... yet bf16 really changed the numbers (a float32 run in disguise would pass the above).
  assert grad_error > 1e-4


def test_params_optimizer_state_and_loss_stay_float32():
  model, params, batch = _model_and_params(_config("t5", "bfloat16"))
  optimizer = optax.adamw(1e-3)
  state = train_state.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                 opt_state=optimizer.init(params))
  step = jax.jit(train_state.make_train_step(model, optimizer, losses.in_batch_softmax,
                                             jax.random.PRNGKey(1)))
  new_state, metrics = step(state, batch)
  assert metrics["loss"].dtype == jnp.float32 and np.isfinite(float(metrics["loss"]))
  floats = lambda tree: {x.dtype for x in jax.tree.leaves(tree)
                         if jnp.issubdtype(x.dtype, jnp.floating)}
  assert floats(new_state.params) == {jnp.dtype("float32")}
  assert floats(new_state.opt_state) == {jnp.dtype("float32")}
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), params, new_state.params)
  assert all(jax.tree.leaves(changed))  # every parameter trained
  q = model.apply({"params": new_state.params}, batch["left_encoder_input_tokens"],
                  train_state.attention_mask(batch["left_encoder_input_tokens"]),
                  method=model.encode_queries)
  assert q.dtype == jnp.float32


@pytest.mark.parametrize("encoder_file,config_cls,default", [
    ("encoders/bert_tiny.gin", encoders.BertConfig, "float32"),
    ("encoders/t5_1_1_tiny.gin", encoders.T5Config, "float32"),
    ("encoders/t5_1_1_base.gin", encoders.T5Config, "bfloat16"),
])
def test_compute_dtype_macro_reaches_the_encoder_config(encoder_file, config_cls, default):
  from dualenc import gin_utils  # pylint: disable=g-import-not-at-top
  def config(bindings):
    gin_utils.parse([encoder_file], bindings, finalize=False)
    try:
      return gin.query_parameter("%ENCODER_CONFIG").scoped_configurable_fn()
    finally:
      gin.clear_config()
  plain = config([])
  assert isinstance(plain, config_cls)
  assert plain.dtype == default and plain.param_dtype == "float32"
  other = "bfloat16" if default == "float32" else "float32"
  overridden = config([f"COMPUTE_DTYPE = '{other}'"])
  assert overridden.dtype == other and overridden.param_dtype == "float32"
  # The whole run file: the last word on COMPUTE_DTYPE is the command line's.
  gin_utils.parse(["runs/tiny_cpu.gin"], ["COMPUTE_DTYPE = 'bfloat16'"], finalize=False)
  try:
    assert gin.query_parameter("%ENCODER_CONFIG").scoped_configurable_fn().dtype == "bfloat16"
  finally:
    gin.clear_config()


def test_mixed_dot_general_float32_is_the_plain_dot_and_bf16_backward_is_bf16():
  rng = np.random.default_rng(0)
  lhs = jnp.asarray(rng.standard_normal((2, 3, 5, 4)), jnp.float32)
  rhs = jnp.asarray(rng.standard_normal((4, 2, 6)), jnp.float32)
  dims = (((3,), (0,)), ((0,), (1,)))  # a batch dim that is not leading on rhs
  plain = lambda a, b: jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)
  np.testing.assert_array_equal(np.asarray(layers.mixed_dot_general(lhs, rhs, dims)),
                                np.asarray(plain(lhs, rhs)))
  np.testing.assert_array_equal(np.asarray(layers.mixed_matmul(lhs, rhs[:, 0])),
                                np.asarray(jnp.matmul(lhs, rhs[:, 0])))
  out, pullback = jax.vjp(lambda a, b: layers.mixed_dot_general(a, b, dims, "bfloat16"),
                          lhs, rhs)
  assert out.dtype == jnp.bfloat16
  cotangent = jnp.asarray(rng.standard_normal(out.shape), jnp.bfloat16)
  got = pullback(cotangent)
  # Reference: float32 gradients of the product of the bf16-rounded operands and cotangent.
  round16 = lambda x: x.astype(jnp.bfloat16).astype(jnp.float32)
  _, reference = jax.vjp(plain, round16(lhs), round16(rhs))
  for g, r in zip(got, reference(cotangent.astype(jnp.float32))):
    assert g.dtype == jnp.float32 and g.shape == r.shape
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-5, atol=1e-5)
  jaxpr = jax.make_jaxpr(pullback)(cotangent)
  assert [d[:2] for d in _dots(jaxpr)] == [BF16_DOT, BF16_DOT]
