"""Gradient caching (dualenc.grad_cache): the whole global batch's loss and gradients from
microbatched towers, for every loss, on one device and sharded over 8; the loss's logits memory
per device (SIGKILL and exact resume of a microbatched run: tests/test_gcs.py)."""

import functools
import re
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from dualenc import grad_cache, losses, partitioning, towers
from dualenc import train_state as ts
from dualenc.encoders import bert
from dualenc.sparse import losses as sparse_losses
from dualenc.sparse import model as sparse_model
from dualenc.sparse import teachers
from tests.test_train import _command, _env
from tests.conftest import REPO_ROOT

TINY = bert.BertConfig(vocab_size=30522, d_model=32, num_heads=2, num_layers=2, d_ff=64,
                       max_position_embeddings=64, dropout_rate=0.0, attention_dropout_rate=0.0)
DENSE = towers.DualEncoder(encoder_config=TINY, architecture="ade_spl", embedding_dim=16)


def _batch(batch_size, num_negatives=2, seed=0):
  """Tokens with padding, absent hard negatives and repeated ids (for the id masks)."""
  rng = np.random.default_rng(seed)
  tokens = lambda *shape: rng.integers(1000, 30000, shape).astype(np.int32)
  q, d, neg = tokens(batch_size, 8), tokens(batch_size, 12), tokens(batch_size, num_negatives, 12)
  q[::3, 5:] = 0
  d[1::4, 7:] = 0
  neg[::5, -1] = 0  # absent hard negatives: all-zero rows
  ids = np.arange(batch_size, dtype=np.int32)
  ids[1::7] = 0  # a few queries share an id (and a document id) with query 0
  return {"left_encoder_input_tokens": q, "right_encoder_input_tokens": d,
          "right_negative_encoder_input_tokens": neg, "left_ids": ids, "right_ids": ids.copy()}


def _sparse_kd_flops_loss():
  loss = sparse_losses.SparseLoss(ranking="kl", teachers=[teachers.BM25Teacher()],
                                  flops_lambda_documents=1e-3)
  rng = np.random.default_rng(3)
  frozen = {"0": {"idf": rng.random(30522).astype(np.float32) * 5,
                  "avgdl": np.float32(10.0)}}
  return loss, frozen


LOSSES = {
    "in_batch_softmax": (DENSE, losses.in_batch_softmax, None),
    "samtone_both_sides": (DENSE, functools.partial(losses.samtone, doc_side=True), None),
    "pair": (DENSE, functools.partial(losses.pair, alpha=0.1), None),
    "gte": (DENSE, losses.improved_contrastive, None),
    "sparse_kd_flops": (sparse_model.SparseEncoder(TINY, chunk_size=4),) + _sparse_kd_flops_loss(),
    "sparse_in_batch_flops": (
        sparse_model.SparseEncoder(TINY, chunk_size=4),
        sparse_losses.SparseLoss(ranking="in_batch_softmax", flops_lambda_documents=1e-3), None),
}


def _params(model, batch):
  shapes = {k: v.shape for k, v in batch.items()}
  return nn.meta.unbox(ts.init_params(model, jax.random.PRNGKey(0), shapes))


def _assert_relative(got, want, tolerance, what):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  error = np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30)
  assert error <= tolerance, f"{what}: relative error {error:.2e} > {tolerance}"


def _assert_same_loss_and_grads(got, want, grad_tolerance=1e-5):
  (loss, metrics), grads = got
  (want_loss, want_metrics), want_grads = want
  _assert_relative(loss, want_loss, 1e-5, "loss")
  for name in want_metrics:
    _assert_relative(metrics[name], want_metrics[name], 1e-5, name)
  flat = dict(jax.tree_util.tree_flatten_with_path(want_grads)[0])
  scale = np.sqrt(sum(np.sum(np.square(np.asarray(g, np.float64))) for g in flat.values()))
  checked = 0
  for path, value in jax.tree_util.tree_flatten_with_path(grads)[0]:
    if np.linalg.norm(flat[path]) > 1e-6 * scale:
      _assert_relative(value, flat[path], grad_tolerance, jax.tree_util.keystr(path))
      checked += 1
    else:  # zero in exact arithmetic (e.g. attention key biases: softmax ignores them)
      assert np.linalg.norm(value) <= 1e-5 * scale, jax.tree_util.keystr(path)
  assert checked >= 10


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_microbatched_loss_and_gradients_equal_the_whole_batch(name):
  model, loss_fn, frozen = LOSSES[name]
  batch = _batch(16)
  params = _params(model, batch)
  full = ts.make_value_and_grad(model, loss_fn)
  cached = ts.make_value_and_grad(model, loss_fn, microbatch_size=4)
  key = jax.random.PRNGKey(7)  # dropout rates are 0: the key only exercises the per-microbatch keys
  want = jax.jit(full)(params, batch, key, 0, frozen)
  got = jax.jit(cached)(params, batch, key, 0, frozen)
  _assert_same_loss_and_grads(got, want)
  # Microbatch 4 really ran 4 microbatches: each scan of the towers has length 4.
  jaxpr = jax.make_jaxpr(cached)(params, batch, key, 0, frozen)
  lengths = [e.params["length"] for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan"]
  assert lengths == [4, 4]


@pytest.mark.parametrize("name", ["samtone_both_sides", "sparse_kd_flops"])
def test_microbatched_on_eight_devices_equals_the_whole_batch_on_one(name):
  assert jax.device_count() == 8
  model, loss_fn, frozen = LOSSES[name]
  batch = _batch(32, seed=1)
  params = _params(model, batch)
  want = jax.jit(ts.make_value_and_grad(model, loss_fn))(params, batch, None, 0, frozen)
  mesh = partitioning.make_mesh(8, 1)
  cached = ts.make_value_and_grad(model, loss_fn, microbatch_size=16, num_data_shards=8)
  shardings = {k: partitioning.batch_sharding(mesh, v.ndim) for k, v in batch.items()}
  with jax.set_mesh(mesh), nn.logical_axis_rules(partitioning.LOGICAL_AXIS_RULES):
    step = jax.jit(cached, in_shardings=(partitioning.replicated(mesh), shardings, None, None,
                                         partitioning.replicated(mesh)))
    got = step(params, jax.device_put(batch, shardings), None, 0, frozen)
    hlo = step.lower(params, batch, None, 0, frozen).compile().as_text()
  # The sparse model's token-embedding gradient sums scatter-adds of terms of both signs (the
  # distillation and the FLOPS penalty) over 32 x L tokens; on 8 devices in microbatches the
  # float32 sums run in another order (measured: 1.4e-5 relative on that one leaf).
  _assert_same_loss_and_grads(got, want,
                              grad_tolerance=5e-5 if name.startswith("sparse") else 1e-5)
  if name.startswith("sparse_kd"):
    return  # its in-step BM25 teacher scores every query against every candidate's tokens
  # Splitting into microbatches moves no token rows between devices: the collectives carry
  # float embeddings and gradients and the loss's [B]-sized ids, never [B, L] token arrays.
  collectives = [line.split("=", 1)[1].split("(")[0] for line in hlo.splitlines()
                 if any(f" {op}(" in line for op in ("all-to-all", "all-gather",
                                                        "collective-permute", "all-reduce"))]
  assert collectives
  int_sizes = [np.prod([int(n) for n in shape.split(",") if n]) for result in collectives
               for shape in re.findall(r"s32\[([\d,]*)\]", result)]
  assert max(int_sizes, default=0) < 32 * 8, int_sizes


def test_split_keeps_every_microbatch_spread_over_the_data_shards():
  rows = np.arange(24)
  micro = np.asarray(grad_cache.split(jnp.asarray(rows), num_microbatches=3, num_data_shards=4))
  # 4 shards of 6 rows; microbatch k takes rows 2k, 2k+1 of every shard.
  np.testing.assert_array_equal(micro[1], [2, 3, 8, 9, 14, 15, 20, 21])
  np.testing.assert_array_equal(np.asarray(grad_cache.merge(jnp.asarray(micro), 4)), rows)


@pytest.mark.parametrize("batch_size,microbatch_size,shards,message", [
    (16, 5, 1, "positive divisor of BATCH_SIZE=16"),
    (16, 0, 1, "positive divisor"),
    (16, 4, 8, "divide evenly over the mesh's 8 data shards"),
])
def test_a_microbatch_size_that_does_not_split_is_refused(batch_size, microbatch_size, shards,
                                                          message):
  with pytest.raises(ValueError, match="train.microbatch_size") as error:
    grad_cache.check_microbatch_size(batch_size, microbatch_size, shards)
  assert message in str(error.value)


def _temp_bytes(loss_fn, q, d, mesh):
  sharding = partitioning.batch_sharding(mesh, 2)
  step = jax.jit(jax.value_and_grad(lambda q, d: loss_fn(q, d), argnums=(0, 1)),
                 in_shardings=(sharding, sharding))
  with jax.set_mesh(mesh):
    return step.lower(q, d).compile().memory_analysis().temp_size_in_bytes


def test_loss_logits_memory_per_device_grows_as_local_times_global_batch():
  batch, dim = 1024, 16
  q = jax.ShapeDtypeStruct((batch, dim), jnp.float32)
  d = jax.ShapeDtypeStruct((batch, dim), jnp.float32)
  loss_fn = functools.partial(losses.samtone, doc_side=True)
  one = _temp_bytes(loss_fn, q, d, partitioning.make_mesh(1, 1))
  eight = _temp_bytes(loss_fn, q, d, partitioning.make_mesh(8, 1))
  block = batch * batch * 4  # one [B, B] float32 logits block
  # One device holds at least one global x global block; each of 8 devices about 1/8 of that
  # (local x global: its 128 query rows against all 1024 documents and queries).
  assert one >= block
  assert block / 8 <= eight <= one / 6, (one / 2**20, eight / 2**20)


def test_a_bad_microbatch_size_from_the_shell_fails_before_writing_anything(tmp_path):
  result = subprocess.run(_command(tmp_path / "run", "--gin.MICROBATCH_SIZE=3"), env=_env(2),
                          cwd=REPO_ROOT, capture_output=True, text=True)
  assert result.returncode == 2
  assert "error: train.microbatch_size=3 must be a positive divisor of BATCH_SIZE=8" in (
      result.stderr)
  assert not (tmp_path / "run").exists()


def test_id_masks_switch_changes_the_loss_only_when_ids_repeat():
  """train.mask_false_negatives=False (use_ids_for_masking) keeps duplicates as negatives: with
  repeated ids (identical texts would score as the positive) the loss is higher than with the
  masks; with distinct ids the switch changes nothing."""
  batch = _batch(8, num_negatives=1)
  params = _params(DENSE, batch)
  loss_fn = functools.partial(losses.samtone, doc_side=True)
  masked = ts.make_value_and_grad(DENSE, loss_fn)
  unmasked = ts.make_value_and_grad(DENSE, loss_fn, use_ids_for_masking=False)
  (with_masks, _), _ = masked(params, batch, None, 0, None)
  (without_masks, _), _ = unmasked(params, batch, None, 0, None)
  assert float(without_masks) > float(with_masks) + 1e-3  # duplicates add to the normalisers
  distinct = dict(batch, left_ids=np.arange(8, dtype=np.int32),
                  right_ids=np.arange(8, dtype=np.int32))
  (a, _), _ = masked(params, distinct, None, 0, None)
  (b, _), _ = unmasked(params, distinct, None, 0, None)
  np.testing.assert_allclose(float(a), float(b), rtol=1e-6)
