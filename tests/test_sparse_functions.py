"""The sparse retriever's pure functions against float64 NumPy references written from the
formulas (dualenc/sparse/functions.py), jitted, sharded over 8 devices, in bfloat16, and their
gradients against finite differences."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from dualenc import partitioning
from dualenc import sparse



# -- float64 references ------------------------------------------------------------------------


def ref_document_weights(logits, mask):
  out = np.zeros((logits.shape[0], logits.shape[2]))
  for b in range(logits.shape[0]):
    rows = logits[b][mask[b] == 1]
    if len(rows):
      out[b] = np.log1p(np.maximum(rows.max(axis=0), 0.0))
  return out


def ref_query_weights(ids, mask, idf, special):
  out = np.zeros((ids.shape[0], len(idf)))
  for b in range(ids.shape[0]):
    for t, m in zip(ids[b], mask[b]):
      if m and t not in special:
        out[b, t] = max(idf[t], 0.0)
  return out


def ref_flops(w):
  return float(np.sum(np.mean(np.abs(w), axis=0) ** 2))


def ref_ensemble(scores, scale):
  normed = [(s - s.min(1, keepdims=True)) / (s.max(1, keepdims=True) - s.min(1, keepdims=True)
                                             + 1e-6) for s in scores]
  return np.mean(normed, axis=0) * scale


def ref_kl(student, teacher, t):
  def log_softmax(x):
    x = x / t
    return x - np.log(np.sum(np.exp(x - x.max(1, keepdims=True)), 1, keepdims=True)) - x.max(
        1, keepdims=True)
  lp, lq = log_softmax(teacher), log_softmax(student)
  return float(np.mean(np.sum(np.exp(lp) * (lp - lq), axis=1)))


def ref_margin_mse(s, t):
  total, count = 0.0, 0
  for i in range(s.shape[0]):
    for j in range(1, s.shape[1]):
      total += ((s[i, 0] - s[i, j]) - (t[i, 0] - t[i, j])) ** 2
      count += 1
  return total / count


@pytest.fixture
def rng():
  return np.random.default_rng(0)


def _mask(rng, b, l):
  mask = (rng.random((b, l)) < 0.7).astype(np.int32)
  mask[:, 0] = 1
  mask[-1] = 0  # a row with no valid position: all-zero weights, finite gradients
  return mask


# -- values --------------------------------------------------------------------------------------


def test_document_weights_and_the_chunked_pool_equal_the_reference(rng):
  b, l, h, v = 4, 13, 8, 37
  hidden = rng.normal(size=(b, l, h)).astype(np.float32)
  embedding = rng.normal(size=(v, h)).astype(np.float32)
  bias = rng.normal(size=v).astype(np.float32)
  mask = _mask(rng, b, l)
  logits = hidden.astype(np.float64) @ embedding.T.astype(np.float64) + bias
  expected = ref_document_weights(logits, mask)
  got = jax.jit(sparse.document_weights)(logits.astype(np.float32), mask)
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
  for chunk in (1, 4, 13, 64):
    pooled = sparse.splade_max_pool(hidden, mask, embedding, bias, chunk_size=chunk)
    np.testing.assert_allclose(pooled, expected, rtol=1e-5, atol=1e-5, err_msg=f"chunk {chunk}")
  assert np.all(np.asarray(got)[-1] == 0)  # padding never contributes
  l0 = sparse.document_weights(logits.astype(np.float32), mask, activation="log1p_log1p_relu")
  np.testing.assert_allclose(l0, np.log1p(expected), rtol=1e-6, atol=1e-6)


def test_chunked_pool_gradients_equal_the_unchunked_ones(rng):
  b, l, h, v = 3, 10, 6, 29
  hidden = jnp.asarray(rng.normal(size=(b, l, h)), jnp.float32)
  embedding = jnp.asarray(rng.normal(size=(v, h)), jnp.float32)
  bias = jnp.asarray(rng.normal(size=v), jnp.float32)
  mask = jnp.asarray(_mask(rng, b, l))
  probe = jnp.asarray(rng.normal(size=(b, v)), jnp.float32)

  def unchunked(hidden, embedding, bias):
    logits = jnp.einsum("blh,vh->blv", hidden, embedding) + bias
    return jnp.sum(sparse.document_weights(logits, mask) * probe)

  def chunked(hidden, embedding, bias):
    return jnp.sum(sparse.splade_max_pool(hidden, mask, embedding, bias, chunk_size=3) * probe)

  expected = jax.grad(unchunked, argnums=(0, 1, 2))(hidden, embedding, bias)
  got = jax.grad(chunked, argnums=(0, 1, 2))(hidden, embedding, bias)
  for e, g in zip(expected, got):
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)


def test_query_weights_count_each_token_once_and_skip_specials_and_padding(rng):
  ids = np.array([[101, 7, 7, 9, 102, 0], [101, 3, 102, 0, 0, 0]], np.int32)
  mask = (ids != 0).astype(np.int32)
  idf = rng.normal(size=120).astype(np.float32)
  idf[7] = 2.5
  special = (0, 101, 102)
  got = jax.jit(functools.partial(sparse.query_weights, special_ids=special))(ids, mask, idf)
  np.testing.assert_allclose(got, ref_query_weights(ids, mask, idf.astype(np.float64), special),
                             rtol=1e-7)
  assert float(got[0, 7]) == pytest.approx(2.5)  # twice in the query, counted once
  assert float(got[0, 101]) == 0 and float(got[1, 0]) == 0


def test_flops_and_its_quadratic_warmup(rng):
  w = rng.random((6, 17)).astype(np.float32) * (rng.random((6, 17)) < 0.3)
  assert float(jax.jit(sparse.flops)(w)) == pytest.approx(ref_flops(w.astype(np.float64)),
                                                           rel=1e-6)
  weight = jax.jit(sparse.flops_weight, static_argnums=(1, 2))
  assert float(weight(0, 0.5, 4)) == pytest.approx(0.5 * (1 / 4) ** 2)
  assert float(weight(jnp.asarray(2), 0.5, 4)) == pytest.approx(0.5 * (3 / 4) ** 2)
  assert float(weight(10, 0.5, 4)) == pytest.approx(0.5)
  assert float(weight(0, 0.5, 0)) == pytest.approx(0.5)


def test_ensemble_kl_and_margin_mse_equal_the_references(rng):
  teachers = [rng.normal(size=(5, 7)) * s for s in (1.0, 10.0, 0.1)]
  got = jax.jit(lambda *t: sparse.ensemble_teacher_scores(t, scale=30.0))(
      *[t.astype(np.float32) for t in teachers])
  np.testing.assert_allclose(got, ref_ensemble(teachers, 30.0), rtol=1e-5, atol=1e-5)
  student, teacher = rng.normal(size=(5, 7)), rng.normal(size=(5, 7)) * 3
  for t in (1.0, 2.0):
    kl = jax.jit(functools.partial(sparse.kl_distillation, temperature=t))(
        student.astype(np.float32), teacher.astype(np.float32))
    assert float(kl) == pytest.approx(ref_kl(student, teacher, t), rel=1e-5)
  mse = jax.jit(sparse.margin_mse)(student.astype(np.float32), teacher.astype(np.float32))
  assert float(mse) == pytest.approx(ref_margin_mse(student, teacher), rel=1e-5)
  with pytest.raises(ValueError, match="differ in shape"):
    sparse.ensemble_teacher_scores([np.zeros((2, 3)), np.zeros((2, 4))])


def test_bfloat16_inputs_compute_in_float32(rng):
  logits = rng.normal(size=(2, 5, 11))
  mask = np.ones((2, 5), np.int32)
  low = sparse.document_weights(jnp.asarray(logits, jnp.bfloat16), mask)
  assert low.dtype == jnp.float32
  rounded = np.asarray(jnp.asarray(logits, jnp.bfloat16).astype(jnp.float32), np.float64)
  np.testing.assert_allclose(low, ref_document_weights(rounded, mask), rtol=1e-6, atol=1e-6)
  s, t = (jnp.asarray(rng.normal(size=(3, 4)), jnp.bfloat16) for _ in range(2))
  for value in (sparse.kl_distillation(s, t), sparse.margin_mse(s, t), sparse.flops(s),
                sparse.ensemble_teacher_scores([s, t])):
    assert value.dtype == jnp.float32 and np.all(np.isfinite(value))


# -- gradients and sharding --------------------------------------------------------------------


def _finite_difference(fn, x, eps=1e-6):
  x = np.asarray(x, np.float64)
  grad = np.zeros_like(x)
  for index in np.ndindex(x.shape):
    up, down = x.copy(), x.copy()
    up[index] += eps
    down[index] -= eps
    grad[index] = (fn(up) - fn(down)) / (2 * eps)
  return grad


def test_gradients_match_finite_differences(rng):
  student, teacher = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
  w = rng.random((4, 6)) + 0.1
  cases = [
      (lambda s: sparse.kl_distillation(s, teacher.astype(np.float32)),
       lambda s: ref_kl(s, teacher, 1.0), student),
      (lambda s: sparse.margin_mse(s, teacher.astype(np.float32)),
       lambda s: ref_margin_mse(s, teacher), student),
      (sparse.flops, ref_flops, w),
  ]
  for fn, ref, x in cases:
    got = jax.grad(lambda v: fn(v))(jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(got, _finite_difference(ref, x), rtol=1e-3, atol=1e-4)
  idf = rng.normal(size=12)
  ids = np.array([[1, 2, 2, 0], [3, 5, 0, 0]], np.int32)
  mask = (ids != 0).astype(np.int32)
  probe = rng.normal(size=(2, 12))
  got = jax.grad(lambda i: jnp.sum(sparse.query_weights(ids, mask, i) * probe))(
      jnp.asarray(idf, jnp.float32))
  expected = _finite_difference(lambda i: np.sum(ref_query_weights(ids, mask, i, ()) * probe),
                                idf)
  np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)


def test_sharded_over_eight_devices_equals_unsharded(rng):
  assert jax.device_count() == 8
  mesh = partitioning.make_mesh(8, 1)
  rows = NamedSharding(mesh, P("data"))
  b, l, h, v = 8, 12, 8, 40
  hidden = rng.normal(size=(b, l, h)).astype(np.float32)
  embedding = rng.normal(size=(v, h)).astype(np.float32)
  bias = rng.normal(size=v).astype(np.float32)
  mask = _mask(rng, b, l)
  student, teacher = rng.normal(size=(b, 9)).astype(np.float32), rng.normal(size=(b, 9)).astype(
      np.float32)

  def everything(hidden, mask, student, teacher):
    weights = sparse.splade_max_pool(hidden, mask, embedding, bias, chunk_size=5)
    return (weights, sparse.flops(weights), sparse.kl_distillation(student, teacher),
            sparse.margin_mse(student, teacher),
            sparse.ensemble_teacher_scores([student, teacher]))

  unsharded = jax.jit(everything)(hidden, mask, student, teacher)
  with jax.set_mesh(mesh):
    sharded = jax.jit(everything)(*(jax.device_put(x, rows)
                                    for x in (hidden, mask, student, teacher)))
  for a, b_ in zip(unsharded, sharded):
    np.testing.assert_allclose(b_, a, rtol=1e-6, atol=1e-6)
