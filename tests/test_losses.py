"""Tests of dualenc.losses.

Cross-checks: NumPy float64 references written here from the issue's formulas (explicit loops,
nothing shared with the implementation), sentence-transformers' MultipleNegativesRankingLoss
(PyTorch, float64), central finite differences of the NumPy references, bfloat16 inputs at
tau = 0.01, and 8 emulated CPU devices (tests/conftest.py sets XLA_FLAGS).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dualenc import losses

LOSS_NAMES = ("in_batch_softmax", "samtone", "pair", "improved_contrastive", "triplet")

# ---------------------------------------------------------------------------------------------
# NumPy float64 references, one anchor at a time, straight from the definitions.


def np_lse(values):
  values = np.asarray(values, np.float64)
  top = values.max()
  return top + math.log(np.exp(values - top).sum())


class Reference:
  """Similarity tables of a batch and the per-anchor normalisers of the issue, in float64."""

  def __init__(self, q, d, h=None, query_ids=None, doc_ids=None, hard_negative_ids=None,
               temperature=0.01, similarity="cosine", hard_negative_mask=None):
    def unit(x):
      x = np.asarray(x, np.float64)
      return x / np.linalg.norm(x, axis=-1, keepdims=True) if similarity == "cosine" else x
    self.q, self.d = unit(q), unit(d)
    self.h = None if h is None else unit(h)
    self.b = self.q.shape[0]
    self.tau = temperature
    self.qid, self.did, self.hid = query_ids, doc_ids, hard_negative_ids
    self.mask = hard_negative_mask

  def sim(self, a, b):
    return float(np.dot(a, b)) / self.tau

  def same(self, ids, i, j):
    return ids is not None and ids[i] == ids[j]

  def is_hard_negative_of(self, i, k, n):
    """Whether h[k, n] is present (mask) and not a false negative of anchor i (same doc id)."""
    present = self.mask is None or bool(self.mask[k][n])
    return present and not (self.hid is not None and self.hid[k][n] == self.did[i])

  def hard_negatives_of_query(self, i):
    """Pooled: query i against every example's present hard negatives, minus same-id ones."""
    if self.h is None:
      return []
    return [self.sim(self.q[i], self.h[k, n])
            for k in range(self.b) for n in range(self.h.shape[1])
            if self.is_hard_negative_of(i, k, n)]

  def query_terms(self, i, same_tower):
    terms = [self.sim(self.q[i], self.d[j]) for j in range(self.b)
             if j == i or not self.same(self.did, i, j)]
    terms += self.hard_negatives_of_query(i)
    if same_tower:
      terms += [self.sim(self.q[i], self.q[j]) for j in range(self.b)
                if j != i and not self.same(self.qid, i, j)]
    return terms

  def doc_terms(self, i, same_tower):
    terms = [self.sim(self.q[j], self.d[i]) for j in range(self.b)
             if j == i or not self.same(self.qid, i, j)]
    if same_tower:
      terms += self.same_tower_docs(i)
    return terms

  def same_tower_docs(self, i):
    return [self.sim(self.d[i], self.d[j]) for j in range(self.b)
            if j != i and not self.same(self.did, i, j)]

  def positive(self, i):
    return self.sim(self.q[i], self.d[i])

  def mean_nll(self, terms_of):
    return np.mean([np_lse(terms_of(i)) - self.positive(i) for i in range(self.b)])


def ref_in_batch_softmax(r, bidirectional=True):
  loss = r.mean_nll(lambda i: r.query_terms(i, False))
  return loss + r.mean_nll(lambda i: r.doc_terms(i, False)) if bidirectional else loss


def ref_samtone(r, query_side=True, doc_side=False):
  return (r.mean_nll(lambda i: r.query_terms(i, query_side))
          + r.mean_nll(lambda i: r.doc_terms(i, doc_side)))


def ref_pair(r, alpha=0.1, bidirectional=True):
  passage = r.mean_nll(lambda i: [r.positive(i)] + r.same_tower_docs(i))
  return (1 - alpha) * ref_in_batch_softmax(r, bidirectional) + alpha * passage


def ref_improved_contrastive(r):
  def terms(i):
    out = r.query_terms(i, True) + r.doc_terms(i, True)  # S[i, i] is in both, as in GTE's Z
    if r.h is not None:
      out += [r.sim(r.d[i], r.h[k, n]) for k in range(r.b) for n in range(r.h.shape[1])
              if k != i and r.is_hard_negative_of(i, k, n)]
    return out
  return r.mean_nll(terms)


def ref_triplet(r, margin, same_tower=False):
  hinges = []
  for i in range(r.b):
    pos = r.sim(r.q[i], r.d[i])  # tau is 1 for the triplet reference
    negatives = []
    if r.h is not None:
      negatives += [r.h[i, n] for n in range(r.h.shape[1]) if r.is_hard_negative_of(i, i, n)]
    if same_tower:
      negatives += [r.q[j] for j in range(r.b) if j != i and not r.same(r.qid, i, j)]
    hinges += [max(0.0, margin - pos + r.sim(r.q[i], n)) for n in negatives]
  return float(np.mean(hinges)) if hinges else 0.0


def reference_loss(name, inputs, **kw):
  """Float64 NumPy value of loss `name` on `inputs` (dict of NumPy arrays), hyper-parameters kw."""
  kw = dict(kw)
  tau = 1.0 if name == "triplet" else kw.pop("temperature", 0.01)
  r = Reference(inputs["q"], inputs["d"], inputs.get("hard_negatives"), inputs.get("query_ids"),
                inputs.get("doc_ids"), inputs.get("hard_negative_ids"), tau,
                kw.pop("similarity", "cosine"), inputs.get("hard_negative_mask"))
  return {"in_batch_softmax": ref_in_batch_softmax, "samtone": ref_samtone, "pair": ref_pair,
          "improved_contrastive": ref_improved_contrastive, "triplet": ref_triplet}[name](r, **kw)


# ---------------------------------------------------------------------------------------------
# Inputs.


def make_inputs(seed, b=6, n=2, dim=5, noise=1.0):
  """Pairs whose positives are related to their queries (losses in a realistic 1-10 range)."""
  rng = np.random.default_rng(seed)
  q = rng.normal(size=(b, dim))
  return {"q": q, "d": q + noise * rng.normal(size=(b, dim)),
          "hard_negatives": q[:, None, :] + 1.5 * noise * rng.normal(size=(b, n, dim))}


# Duplicates: queries 1 and 3 share an id, documents 2 and 4 share an id; hard negatives that are
# some example's positive (ids 10..14), including example 2's own positive.
QUERY_IDS = np.array([0, 1, 2, 1, 3, 4])
DOC_IDS = np.array([10, 11, 12, 13, 12, 14])
HARD_NEGATIVE_IDS = np.array([[11, 20], [21, 10], [12, 22], [23, 24], [25, 12], [11, 26]])


# Absent hard negatives (padding): example 2 has none, examples 1, 3 and 5 one each; (2, 0) is also
# a same-id false negative, (4, 1) stays and is removed by id only.
HARD_NEGATIVE_MASK = np.array([[1, 1], [1, 0], [0, 0], [0, 1], [1, 1], [1, 0]], bool)


def with_ids(inputs):
  return dict(inputs, query_ids=QUERY_IDS, doc_ids=DOC_IDS, hard_negative_ids=HARD_NEGATIVE_IDS)


def with_mask(inputs):
  return dict(inputs, hard_negative_mask=HARD_NEGATIVE_MASK)


def with_ids_and_mask(inputs):
  return with_mask(with_ids(inputs))


def without_hard_negatives(inputs):
  return {k: v for k, v in inputs.items()
          if k not in ("hard_negatives", "hard_negative_ids", "hard_negative_mask")}


def call(name, inputs, dtype=None, **kw):
  """Calls the dualenc loss with the inputs as JAX arrays (floats cast to `dtype` if given)."""
  args = {k: jnp.asarray(v, dtype) if (dtype is not None and np.asarray(v).dtype.kind == "f")
          else jnp.asarray(v) for k, v in inputs.items()}
  return losses.LOSSES[name](args.pop("q"), args.pop("d"), **args, **kw)


# (name, hyper-parameters, input transform): every formula with and without hard negatives / ids.
CASES = [
    ("in_batch_softmax", {}, without_hard_negatives),
    ("in_batch_softmax", {"bidirectional": False}, lambda x: x),
    ("in_batch_softmax", {}, with_ids),
    ("in_batch_softmax", {"similarity": "dot", "temperature": 0.5}, with_ids),
    ("samtone", {}, without_hard_negatives),
    ("samtone", {"query_side": True, "doc_side": True}, with_ids),
    ("samtone", {"query_side": False, "doc_side": True}, lambda x: x),
    ("samtone", {"query_side": False, "doc_side": False}, with_ids),
    ("samtone", {"query_side": True, "doc_side": False}, with_ids),
    ("pair", {"alpha": 0.3}, with_ids),
    ("pair", {"alpha": 0.5, "bidirectional": False}, without_hard_negatives),
    ("improved_contrastive", {}, without_hard_negatives),
    ("improved_contrastive", {}, with_ids),
    ("triplet", {"margin": 0.3}, lambda x: x),
    ("triplet", {"margin": 0.5, "same_tower": True}, with_ids),
    ("triplet", {"margin": 0.2, "same_tower": True}, without_hard_negatives),
    # Absent hard negatives, alone and with ids.
    ("in_batch_softmax", {}, with_mask),
    ("in_batch_softmax", {"bidirectional": False, "similarity": "dot", "temperature": 0.5},
     with_ids_and_mask),
    ("samtone", {"doc_side": True}, with_ids_and_mask),
    ("pair", {"alpha": 0.3}, with_mask),
    ("improved_contrastive", {}, with_mask),
    ("improved_contrastive", {}, with_ids_and_mask),
    ("triplet", {"margin": 0.3}, with_mask),
    ("triplet", {"margin": 0.5, "same_tower": True}, with_ids_and_mask),
]
CASE_IDS = [f"{name}-{i}" for i, (name, _, _) in enumerate(CASES)]


@pytest.mark.parametrize("name,kw,transform", CASES, ids=CASE_IDS)
def test_matches_numpy_reference(name, kw, transform):
  inputs = transform(make_inputs(seed=0))
  expected = reference_loss(name, inputs, **kw)
  assert expected > 1e-3  # a loss that is not trivially zero, so the comparison means something
  with jax.enable_x64(True):
    got64 = call(name, inputs, jnp.float64, **kw)
    assert got64.dtype == jnp.float64
    np.testing.assert_allclose(float(got64), expected, rtol=1e-10)
  got32 = call(name, inputs, jnp.float32, **kw)
  assert got32.dtype == jnp.float32
  np.testing.assert_allclose(float(got32), expected, rtol=1e-5, atol=1e-5)


def test_masks_change_the_loss():
  """The ids and the hard-negative mask of CASES remove entries: without them every loss differs."""
  inputs = make_inputs(seed=0)
  for name, kw in [("in_batch_softmax", {}), ("samtone", {"doc_side": True}),
                   ("improved_contrastive", {}), ("pair", {})]:
    unmasked = float(call(name, inputs, **kw))
    for transform in (with_ids, with_mask):
      masked = float(call(name, transform(inputs), **kw))
      assert masked < unmasked - 1e-4, name  # removing terms from a normaliser lowers the loss
  masked = float(call("triplet", with_mask(inputs), margin=0.3))
  assert abs(masked - float(call("triplet", inputs, margin=0.3))) > 1e-4


def test_matches_sentence_transformers():
  """Unmasked losses against MultipleNegativesRankingLoss (PyTorch float64), hard negatives too.

  MNRL(a, b) with directions (query_to_doc,) is L_qd of anchors a and candidates b; adding
  query_to_query gives the SamToNe term; all four directions, joint, is GTE's loss.
  """
  import torch
  from sentence_transformers.sentence_transformer.losses import multiple_negatives_ranking

  def mnrl(anchors, candidates, directions, negatives=None):
    loss = multiple_negatives_ranking.MultipleNegativesRankingLoss(
        None, scale=100.0, directions=directions)
    columns = [torch.tensor(anchors), torch.tensor(candidates)]
    if negatives is not None:
      columns += [torch.tensor(negatives[:, n]) for n in range(negatives.shape[1])]
    return float(loss.compute_loss_from_embeddings(columns, None))

  inputs = make_inputs(seed=1)
  q, d, h = inputs["q"], inputs["d"], inputs["hard_negatives"]
  qd, qq = ("query_to_doc",), ("query_to_doc", "query_to_query")
  l_qd, l_qd_s = mnrl(q, d, qd, h), mnrl(q, d, qq, h)
  l_dq, l_dq_s = mnrl(d, q, qd), mnrl(d, q, qq)
  expected = {
      ("in_batch_softmax", ()): l_qd + l_dq,
      ("in_batch_softmax", (("bidirectional", False),)): l_qd,
      ("samtone", ()): l_qd_s + l_dq,
      ("samtone", (("doc_side", True),)): l_qd_s + l_dq_s,
      ("samtone", (("query_side", False), ("doc_side", True))): l_qd + l_dq_s,
      ("samtone", (("query_side", False),)): l_qd + l_dq,
      ("improved_contrastive", ()): mnrl(
          q, d, ("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc"), h),
  }
  with jax.enable_x64(True):
    for (name, kw), value in expected.items():
      np.testing.assert_allclose(float(call(name, inputs, **dict(kw))), value, rtol=1e-10,
                                 err_msg=f"{name} {kw}")


# ---------------------------------------------------------------------------------------------
# Gradients.

GRADIENT_CASES = [
    ("in_batch_softmax", {"temperature": 0.05}),
    ("samtone", {"temperature": 0.05, "doc_side": True}),
    ("pair", {"temperature": 0.05, "alpha": 0.3}),
    ("improved_contrastive", {"temperature": 0.05}),
    ("triplet", {"margin": 0.4, "same_tower": True}),
]


@pytest.mark.parametrize("name,kw", GRADIENT_CASES, ids=[c[0] for c in GRADIENT_CASES])
def test_gradients_match_finite_differences_of_reference(name, kw):
  """jax.grad wrt q, d and hard negatives against central differences of the NumPy reference.

  Ids and the hard-negative mask are on: absent hard negatives must get exactly zero gradient."""
  inputs = with_ids_and_mask(make_inputs(seed=2, b=6, n=2, dim=3))
  wrt = ("q", "d", "hard_negatives")
  with jax.enable_x64(True):
    def loss_of(q, d, h):
      rest = {k: jnp.asarray(v) for k, v in inputs.items() if k not in wrt}
      return losses.LOSSES[name](q, d, hard_negatives=h, **rest, **kw)
    grads = jax.jit(jax.grad(loss_of, argnums=(0, 1, 2)))(
        *(jnp.asarray(inputs[k]) for k in wrt))
  eps = 1e-6
  for key, grad in zip(wrt, grads):
    numeric = np.zeros_like(inputs[key])
    for index in np.ndindex(*inputs[key].shape):
      shifted = []
      for sign in (1, -1):
        x = inputs[key].copy()
        x[index] += sign * eps
        shifted.append(reference_loss(name, dict(inputs, **{key: x}), **kw))
      numeric[index] = (shifted[0] - shifted[1]) / (2 * eps)
    assert np.abs(numeric).max() > 1e-3, key  # gradient not trivially zero
    np.testing.assert_allclose(np.asarray(grad), numeric, rtol=1e-5, atol=1e-6,
                               err_msg=f"{name} d/d{key}")
  assert not np.any(np.asarray(grads[2])[~HARD_NEGATIVE_MASK]), name


# ---------------------------------------------------------------------------------------------
# One jitted function evaluating every loss and its gradients, shared by the bf16 and sharding
# tests (same shapes), to keep XLA compilations few.

ALL_LOSS_KWARGS = {
    "in_batch_softmax": {},
    "samtone": {"doc_side": True},
    "pair": {"alpha": 0.2},
    "improved_contrastive": {},
    "triplet": {"margin": 0.3, "same_tower": True},
}


@jax.jit
def all_losses_and_grads(q, d, h, query_ids, doc_ids, hard_negative_mask):
  """{name: (loss, (dq, dd, dh))} for every loss at tau = 0.01, false-negative and absent
  hard-negative masks on."""
  out = {}
  for name, kw in ALL_LOSS_KWARGS.items():
    def fn(q, d, h, name=name, kw=kw):
      return losses.LOSSES[name](q, d, hard_negatives=h, query_ids=query_ids, doc_ids=doc_ids,
                                 hard_negative_mask=hard_negative_mask, **kw)
    out[name] = jax.value_and_grad(fn, argnums=(0, 1, 2))(q, d, h)
  return out


def global_batch():
  """B = 16 pairs (2 per emulated device), D = 8, N = 2, in a hard regime (losses 11 to 16), with
  duplicate ids that straddle device boundaries and absent hard negatives padded with zero rows
  (as the data pipeline does; example 3 has none). Returns (floats, ids and mask)."""
  inputs = make_inputs(seed=4, b=16, n=2, dim=8, noise=1.0)
  mask = np.arange(32).reshape(16, 2) % 5 != 1
  mask[3] = False
  inputs["hard_negatives"][~mask] = 0.0
  return ([inputs[k].astype(np.float32) for k in ("q", "d", "hard_negatives")],
          [np.arange(16) % 13, (np.arange(16) * 5) % 14, mask])


def naive_bf16_in_batch_softmax(q, d, temperature=0.01):
  """What the float32 upcast guards against: logits and log-sum-exp in the input dtype."""
  q = q / jnp.linalg.norm(q, axis=-1, keepdims=True)
  d = d / jnp.linalg.norm(d, axis=-1, keepdims=True)
  s = (q @ d.T) / jnp.asarray(temperature, q.dtype)
  diag = jnp.diagonal(s)
  return (jnp.mean(jax.nn.logsumexp(s, axis=1) - diag)
          + jnp.mean(jax.nn.logsumexp(s, axis=0) - diag)).astype(jnp.float32)


def test_bfloat16_stable_at_low_temperature():
  """bf16 embeddings at tau = 0.01: finite losses and gradients, values close to float32.

  Two comparisons: (a) against float32 on the *same* (bf16-representable) values, within
  relative 1e-6: the computation itself runs in float32; (b) against float32 on the original,
  unrounded embeddings, within relative 1e-2 (the issue's bound; relative because rounding the
  inputs perturbs logits of magnitude 1/tau = 100, so the error grows with the loss).
  """
  floats, ids = global_batch()
  cpu0 = jax.devices()[0]
  put = lambda x, dtype=None: jax.device_put(jnp.asarray(x, dtype), cpu0)
  ids = [put(x) for x in ids]
  bf16 = all_losses_and_grads(*(put(x, jnp.bfloat16) for x in floats), *ids)
  rounded = all_losses_and_grads(
      *(put(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32)) for x in floats), *ids)
  original = all_losses_and_grads(*(put(x) for x in floats), *ids)
  for name in ALL_LOSS_KWARGS:
    (loss, grads), (loss_rounded, _), (loss_original, _) = bf16[name], rounded[name], original[name]
    assert loss.dtype == jnp.float32, name
    assert bool(jnp.isfinite(loss)), name
    for grad in grads:
      assert grad.dtype == jnp.bfloat16
      assert bool(jnp.all(jnp.isfinite(grad.astype(jnp.float32)))), name
      assert float(jnp.abs(grad.astype(jnp.float32)).max()) > 0, name
    absent = ~np.asarray(ids[2])  # zero-padded rows: exactly zero gradient
    assert not np.any(np.asarray(grads[2].astype(jnp.float32))[absent]), name
    np.testing.assert_allclose(float(loss), float(loss_rounded), rtol=1e-6, err_msg=name)
    np.testing.assert_allclose(float(loss), float(loss_original), rtol=1e-2, err_msg=name)
    assert float(loss_original) > 1.0 or name == "triplet", name  # not a trivial regime
  # (a) has power: the same loss computed in bf16 misses the float32 value by far more than 1e-6.
  q, d = (jnp.asarray(x, jnp.bfloat16) for x in floats[:2])
  naive = float(jax.jit(naive_bf16_in_batch_softmax)(q, d))
  exact = reference_loss("in_batch_softmax", {"q": np.asarray(q, np.float64),
                                              "d": np.asarray(d, np.float64)})
  assert abs(naive - exact) > 1e-4 * abs(exact)


def test_sharded_equals_unsharded():
  """Every loss jitted with the batch sharded over 8 devices ("data" axis, Auto) equals the
  single-device value within relative 1e-5, and its gradients within 1e-5 of their largest entry
  (ids and the hard-negative mask are sharded with the batch)."""
  assert jax.device_count() == 8, "tests/conftest.py should emulate 8 CPU devices"
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  batch_sharded = NamedSharding(mesh, P("data"))
  floats, ids = global_batch()
  arrays = [jnp.asarray(x) for x in floats + ids]
  sharded_args = [jax.device_put(x, batch_sharded) for x in arrays]
  assert sharded_args[0].sharding.spec == P("data")
  assert len(sharded_args[0].addressable_shards) == 8
  sharded = all_losses_and_grads(*sharded_args)
  single = all_losses_and_grads(*(jax.device_put(x, jax.devices()[0]) for x in arrays))
  for name in ALL_LOSS_KWARGS:
    (loss, grads), (loss_single, grads_single) = sharded[name], single[name]
    assert len(grads[0].sharding.device_set) == 8, name  # the computation really was spread
    assert len(grads_single[0].sharding.device_set) == 1, name
    np.testing.assert_allclose(float(loss), float(loss_single), rtol=1e-5, err_msg=name)
    for grad, grad_single in zip(grads, grads_single):
      scale = float(jnp.abs(grad_single).max())
      assert scale > 0, name
      np.testing.assert_allclose(np.asarray(grad), np.asarray(grad_single), rtol=0,
                                 atol=1e-5 * scale, err_msg=name)


# ---------------------------------------------------------------------------------------------
# False-negative masking.


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_distinct_ids_equal_unmasked(name):
  inputs = make_inputs(seed=5)
  b, n = inputs["hard_negatives"].shape[:2]
  kw = {"margin": 0.3, "same_tower": True} if name == "triplet" else (
      {"doc_side": True} if name == "samtone" else {})
  distinct = dict(inputs, query_ids=np.arange(b) + 7, doc_ids=np.arange(b) + 100,
                  hard_negative_ids=np.arange(b * n).reshape(b, n) + 1000)
  np.testing.assert_array_equal(np.asarray(call(name, distinct, **kw)),
                                np.asarray(call(name, inputs, **kw)))


def test_duplicated_document_is_ignored():
  """Document 3 is a copy of document 1 (same id): masked loss == loss without that copy in the
  normalisers of anchors 1 and 3, computed here by deleting it (plain InfoNCE, no ids)."""
  inputs = without_hard_negatives(make_inputs(seed=6, b=6, dim=5))
  inputs["d"][3] = inputs["d"][1]
  doc_ids = np.array([0, 1, 2, 1, 4, 5])
  query_ids = np.arange(6)

  def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)
  q, d = unit(inputs["q"]), unit(inputs["d"])
  s, p = q @ d.T / 0.01, d @ d.T / 0.01
  dropped = {1: 3, 3: 1}  # anchor -> column of the duplicate to delete from its normaliser

  def qd_term(i):
    keep = [j for j in range(6) if j != dropped.get(i)]
    return np_lse(s[i, keep]) - s[i, i]

  def dq_term(i, same_tower):
    terms = list(s[:, i])
    if same_tower:
      terms += [p[i, j] for j in range(6) if j != i and j != dropped.get(i)]
    return np_lse(terms) - s[i, i]

  ids = dict(query_ids=query_ids, doc_ids=doc_ids)
  expected = (np.mean([qd_term(i) for i in range(6)])
              + np.mean([dq_term(i, False) for i in range(6)]))
  masked = float(call("in_batch_softmax", dict(inputs, **ids)))
  unmasked = float(call("in_batch_softmax", inputs))
  np.testing.assert_allclose(masked, expected, rtol=1e-5)
  assert unmasked > masked + 0.1  # the copy ties with the positive: ~log 2 for anchors 1 and 3

  expected = (np.mean([qd_term(i) for i in range(6)])
              + np.mean([dq_term(i, True) for i in range(6)]))
  masked = float(call("samtone", dict(inputs, **ids), query_side=False, doc_side=True))
  np.testing.assert_allclose(masked, expected, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Absent hard negatives (hard_negative_mask).


def test_masked_hard_negative_equals_deleted():
  """Masking hard negative 1 of every example == deleting it from the batch (N = 2 -> 1), for
  every loss and its gradients at tau = 0.01, whether the padded rows are zeros (the pipeline's
  padding) or copies of the positives (which would change the loss if they leaked in).

  Runs through `all_losses_and_grads` with global_batch's shapes, so only the N = 1 batch
  compiles anew."""
  _, (query_ids, doc_ids, _) = global_batch()
  q, d, h = (x.astype(np.float32) for x in (
      make_inputs(seed=13, b=16, n=2, dim=8)[k] for k in ("q", "d", "hard_negatives")))
  cpu0 = jax.devices()[0]
  put = lambda x: jax.device_put(jnp.asarray(x), cpu0)
  run = lambda h, mask: all_losses_and_grads(put(q), put(d), put(h), put(query_ids), put(doc_ids),
                                             put(mask))
  deleted = run(h[:, :1], np.ones((16, 1), bool))
  mask = np.array([[True, False]] * 16)
  for padding in (np.zeros_like(d), d):
    padded = h.copy()
    padded[:, 1] = padding
    masked = run(padded, mask)
    for name in ALL_LOSS_KWARGS:
      (loss, grads), (loss_deleted, grads_deleted) = masked[name], deleted[name]
      np.testing.assert_allclose(float(loss), float(loss_deleted), rtol=1e-6, err_msg=name)
      grads = [np.asarray(g) for g in grads]
      for grad, grad_deleted in zip(grads[:2] + [grads[2][:, :1]], grads_deleted):
        grad_deleted = np.asarray(grad_deleted)
        np.testing.assert_allclose(grad, grad_deleted, rtol=0,
                                   atol=1e-5 * np.abs(grad_deleted).max(), err_msg=name)
      assert np.all(grads[2][:, 1] == 0), name  # finite and exactly zero, even for zero rows
  # Power: left unmasked, the copies of the positives change every loss by far more than 1e-6.
  unmasked = run(padded, np.ones((16, 2), bool))
  for name in ALL_LOSS_KWARGS:
    loss, loss_deleted = float(unmasked[name][0]), float(deleted[name][0])
    assert abs(loss - loss_deleted) > 1e-3 * loss_deleted, name


def test_all_true_mask_equals_no_mask():
  """An all-True mask is bit-identical to mask=None, for every loss (eagerly, as the other
  value tests, so no compilation)."""
  inputs = with_ids(make_inputs(seed=12))
  for name, kw in ALL_LOSS_KWARGS.items():
    np.testing.assert_array_equal(
        np.asarray(call(name, inputs, **kw)),
        np.asarray(call(name, dict(inputs, hard_negative_mask=np.ones((6, 2), bool)), **kw)),
        err_msg=name)


# ---------------------------------------------------------------------------------------------
# Relations between losses, metrics, registry and input checks.


def test_pair_with_alpha_zero_is_in_batch_softmax():
  inputs = with_ids(make_inputs(seed=7))
  for bidirectional in (True, False):
    np.testing.assert_allclose(
        float(call("pair", inputs, alpha=0.0, bidirectional=bidirectional)),
        float(call("in_batch_softmax", inputs, bidirectional=bidirectional)), rtol=1e-7)


def test_triplet_same_tower_adds_query_negatives():
  """A query that copies another query violates the margin only through same-tower negatives."""
  inputs = make_inputs(seed=8)
  inputs["q"][2] = inputs["q"][0]
  base = float(call("triplet", inputs, margin=0.5))
  same = float(call("triplet", inputs, margin=0.5, same_tower=True))
  expected = reference_loss("triplet", inputs, margin=0.5, same_tower=True)
  np.testing.assert_allclose(same, expected, rtol=1e-5)
  assert not math.isclose(same, base)
  # With the copy's id shared, it stops being a negative of its twin.
  ids = dict(inputs, query_ids=np.array([0, 1, 0, 3, 4, 5]))
  np.testing.assert_allclose(float(call("triplet", ids, margin=0.5, same_tower=True)),
                             reference_loss("triplet", ids, margin=0.5, same_tower=True),
                             rtol=1e-5)


def np_metrics(q, d):
  q = q / np.linalg.norm(q, axis=-1, keepdims=True)
  d = d / np.linalg.norm(d, axis=-1, keepdims=True)
  b = q.shape[0]
  ranks = [1 + sum(1 for j in range(b) if j != i and q[i] @ d[j] >= q[i] @ d[i]) for i in range(b)]
  pairs = [(i, j) for i in range(b) for j in range(b) if i < j]

  def uniformity(x):
    return math.log(np.mean([math.exp(-2 * np.sum((x[i] - x[j]) ** 2)) for i, j in pairs]))
  return {
      "top1_accuracy": np.mean([r == 1 for r in ranks]),
      "mrr": np.mean([1 / r for r in ranks]),
      "mean_positive_similarity": np.mean([q[i] @ d[i] for i in range(b)]),
      "mean_query_similarity": np.mean([q[i] @ q[j] for i in range(b) for j in range(b) if i != j]),
      "mean_doc_similarity": np.mean([d[i] @ d[j] for i in range(b) for j in range(b) if i != j]),
      "alignment": np.mean([np.sum((q[i] - d[i]) ** 2) for i in range(b)]),
      "uniformity_queries": uniformity(q),
      "uniformity_docs": uniformity(d),
  }


def test_contrastive_metrics_match_numpy():
  inputs = make_inputs(seed=9, b=12, dim=4, noise=1.2)
  got = jax.jit(losses.contrastive_metrics)(jnp.asarray(inputs["q"], jnp.float32),
                                            jnp.asarray(inputs["d"], jnp.float32))
  expected = np_metrics(inputs["q"], inputs["d"])
  assert set(got) == set(expected)
  assert 0 < expected["top1_accuracy"] < 1  # some queries miss, so ranks are exercised
  for key, value in expected.items():
    np.testing.assert_allclose(float(got[key]), value, rtol=1e-5, atol=1e-6, err_msg=key)
  # Dot similarity changes the similarity statistics, not the hypersphere ones.
  dot = jax.jit(functools.partial(losses.contrastive_metrics, similarity="dot"))(
      jnp.asarray(inputs["q"], jnp.float32), jnp.asarray(inputs["d"], jnp.float32))
  np.testing.assert_allclose(float(dot["mean_positive_similarity"]),
                             np.mean(np.sum(inputs["q"] * inputs["d"], axis=-1)), rtol=1e-5)
  for key in ("alignment", "uniformity_queries", "uniformity_docs"):
    np.testing.assert_allclose(float(dot[key]), expected[key], rtol=1e-5, err_msg=key)
  # A collapsed encoder (every embedding equal) must not look perfect: ties count against it.
  collapsed = losses.contrastive_metrics(jnp.ones((4, 3)), jnp.ones((4, 3)))
  assert float(collapsed["top1_accuracy"]) == 0.0
  np.testing.assert_allclose(float(collapsed["mrr"]), 1 / 4, rtol=1e-6)
  np.testing.assert_allclose(float(collapsed["uniformity_queries"]), 0.0, atol=1e-6)


def test_get_loss_binds_hyper_parameters():
  inputs = with_ids_and_mask(make_inputs(seed=10))
  fn = losses.get_loss("samtone", temperature=0.05, doc_side=True)
  args = {k: jnp.asarray(v) for k, v in inputs.items()}
  np.testing.assert_array_equal(
      np.asarray(fn(args["q"], args["d"], hard_negatives=args["hard_negatives"],
                    query_ids=args["query_ids"], doc_ids=args["doc_ids"],
                    hard_negative_ids=args["hard_negative_ids"],
                    hard_negative_mask=args["hard_negative_mask"])),
      np.asarray(call("samtone", inputs, temperature=0.05, doc_side=True)))
  triplet = losses.get_loss("triplet", margin=0.3)
  np.testing.assert_allclose(
      float(triplet(args["q"], args["d"], hard_negatives=args["hard_negatives"])),
      reference_loss("triplet", make_inputs(seed=10), margin=0.3), rtol=1e-5)
  np.testing.assert_allclose(
      float(triplet(args["q"], args["d"], hard_negatives=args["hard_negatives"],
                    hard_negative_mask=args["hard_negative_mask"])),
      reference_loss("triplet", with_mask(make_inputs(seed=10)), margin=0.3), rtol=1e-5)
  assert set(losses.LOSSES) == set(LOSS_NAMES)


@pytest.mark.parametrize("args,message", [
    (("sam_to_ne",), "unknown loss 'sam_to_ne'"),
    (("samtone", {"alpha": 0.1}), "'alpha' is not a hyper-parameter"),
    (("pair", {"doc_ids": [1]}), "'doc_ids' is supplied per batch"),
    (("triplet", {"margin": 0.1, "hard_negative_mask": None}),
     "'hard_negative_mask' is supplied per batch"),
    (("triplet",), r"missing required hyper-parameter\(s\) \['margin'\]"),
    (("in_batch_softmax", {"temperature": 0.0}), "temperature must be > 0"),
    (("pair", {"alpha": 1.5}), r"alpha must be in \[0, 1\]"),
    (("samtone", {"similarity": "l2"}), "similarity must be one of"),
])
def test_get_loss_rejects_bad_configuration(args, message):
  name, kw = args[0], (args[1] if len(args) > 1 else {})
  with pytest.raises(ValueError, match=message):
    losses.get_loss(name, **kw)


Q, D = jnp.ones((4, 3)), jnp.ones((4, 3))


@pytest.mark.parametrize("call_loss,message", [
    (lambda: losses.in_batch_softmax(Q, jnp.ones((5, 3))),
     r"in_batch_softmax: `d` must be \[B, D\]"),
    (lambda: losses.samtone(jnp.ones(3), D), r"samtone: `q` must be \[B, D\]"),
    (lambda: losses.pair(Q, D, hard_negatives=jnp.ones((4, 3))),
     r"pair: `hard_negatives` must be \[B, N, D\] = \[4, N, 3\], got shape \(4, 3\)"),
    (lambda: losses.improved_contrastive(Q, D, hard_negatives=jnp.ones((2, 1, 3))),
     "`hard_negatives` must be"),
    (lambda: losses.in_batch_softmax(Q, D, similarity="euclid"), "similarity must be one of"),
    (lambda: losses.samtone(Q, D, query_ids=jnp.arange(3)), r"`query_ids` must be of shape \(4,\)"),
    (lambda: losses.samtone(Q, D, doc_ids=jnp.ones(4)), "`doc_ids` must hold integer ids"),
    (lambda: losses.in_batch_softmax(Q, D, hard_negatives=jnp.ones((4, 2, 3)),
                                     hard_negative_ids=jnp.zeros((4, 2), int)),
     "`hard_negative_ids` needs `hard_negatives` and `doc_ids`"),
    (lambda: losses.triplet(Q, D, margin=0.1), "needs `hard_negatives`"),
    (lambda: losses.samtone(Q, D, hard_negatives=jnp.ones((4, 2, 3)),
                            hard_negative_mask=jnp.ones((4, 3), bool)),
     r"samtone: `hard_negative_mask` must be \[B, N\] = \[4, 2\] like `hard_negatives`, got "
     r"shape \(4, 3\)"),
    (lambda: losses.triplet(Q, D, jnp.ones((4, 2, 3)), margin=0.1,
                            hard_negative_mask=jnp.ones((4, 2, 1), bool)),
     r"triplet: `hard_negative_mask` must be \[B, N\]"),
    (lambda: losses.pair(Q, D, hard_negatives=jnp.ones((4, 2, 3)),
                         hard_negative_mask=jnp.ones((4, 2), jnp.int32)),
     r"pair: `hard_negative_mask` must be bool \(True = a real hard negative\), got dtype int32"),
    (lambda: losses.improved_contrastive(Q, D, hard_negative_mask=jnp.ones((4, 2), bool)),
     "improved_contrastive: `hard_negative_mask` given without `hard_negatives`"),
    (lambda: losses.in_batch_softmax(Q, D, temperature=-1.0), "temperature must be > 0"),
    (lambda: losses.contrastive_metrics(jnp.ones((1, 3)), jnp.ones((1, 3))), "at least 2 pairs"),
])
def test_bad_inputs_raise_clear_errors(call_loss, message):
  with pytest.raises(ValueError, match=message):
    call_loss()
