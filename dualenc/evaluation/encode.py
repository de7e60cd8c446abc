"""Batched, jitted, sharded encoding of texts with one tower, and an on-disk embedding cache.

    encoder = TowerEncoder(model, params, side="document", mesh=mesh)
    embeddings = encode_texts(encoder, tokenizer, texts)          # float32 [N, D]

Throughput comes from not computing padding: texts are tokenized a window at a time, sorted by
length (longest first), and cut into batches whose length is the bucket (`length_buckets`)
just above the longest text of the batch and whose row count keeps rows x length near
`batch_tokens`. Every (model, tower, rows, length) compiles once per process and is reused
by every later TowerEncoder of an equal model (one module-level jit; DualEncoders hash by
value); there are at most len(buckets) shapes per tower. Batches are sharded over the mesh's
`data` axis (rows padded with empty texts to a multiple of its size), parameters placed by
their logical axes, and results are fetched one batch behind the dispatch so the host prepares
the next batch while the device computes.

On CPU, give JAX one device per core (`XLA_FLAGS=--xla_force_host_platform_device_count=N`)
so that each core encodes its own shard: on 2 cores MiniLM encodes SciFact 1.25x faster than
sentence-transformers that way, 0.9x with the single default CPU device
(`benchmarks/encode.py`).

Sparse models' [N, V] term weights come back as a scipy CSR matrix (never [N, V] dense).
Embeddings are cached as `<cache_dir>/<name>.npy` (CSR: scipy's npz format under the same
name) + `<name>.json` (ids and a fingerprint of
the model, tower, tokenization, dtype and texts); a cache whose fingerprint differs is
recomputed, never silently reused.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import logging
import os
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import gin
import jax
import numpy as np
import scipy.sparse
from flax import linen as nn

from dualenc import fs
from dualenc import partitioning
from dualenc.towers import DualEncoder

log = logging.getLogger(__name__)

SIDES = ("query", "document")
PAD_ID = 0


# ---------------------------------------------------------------------------------------------
# Tokenizers: texts -> framed, truncated, unpadded int32 ids.


class HfTokenizer:
  """A `tokenizers.Tokenizer` (e.g. a sentence-transformers model's), truncating to max_length.

  Ids are exactly what sentence-transformers feeds the model ([CLS] ... [SEP] for BERT).
  """

  def __init__(self, tokenizer, max_length: int):
    self._tokenizer = tokenizer.__class__.from_str(tokenizer.to_str())  # private copy
    self._tokenizer.no_padding()
    self._tokenizer.enable_truncation(max_length)
    self.max_length = max_length
    self.fingerprint = hashlib.sha256(tokenizer.to_str().encode()).hexdigest()[:16]

  def __call__(self, texts: Sequence[str]) -> List[np.ndarray]:
    return [np.asarray(e.ids, np.int32) for e in self._tokenizer.encode_batch(list(texts))]


class SeqioTokenizer:
  """A seqio vocabulary framed exactly as in training (`vocabularies.encode_batch`)."""

  def __init__(self, vocabulary, max_length: int):
    self.vocabulary, self.max_length = vocabulary, max_length
    self.fingerprint = hashlib.sha256(repr(vocabulary).encode()).hexdigest()[:16]

  def __call__(self, texts: Sequence[str]) -> List[np.ndarray]:
    from dualenc.data import vocabularies  # pylint: disable=g-import-not-at-top
    padded = vocabularies.encode_batch(self.vocabulary, list(texts), self.max_length)
    lengths = np.count_nonzero(padded != PAD_ID, axis=1)  # framing ids are never 0: no holes
    return [row[:n] for row, n in zip(padded, lengths)]


# ---------------------------------------------------------------------------------------------
# The jitted tower.


def length_buckets(max_length: int, minimum: int = 16) -> List[int]:
  """Padded lengths: steps of 16 up to 128, then of 32 up to 256, of 64 beyond; capped at
  max_length (always included). Padding waste per batch stays under 25% (16/64 at worst)."""
  buckets, length = [], minimum
  while length < max_length:
    buckets.append(length)
    length += 16 if length < 128 else 32 if length < 256 else 64
  return buckets + [max_length]


@functools.partial(jax.jit, static_argnames=("model", "method"))
def _embed(params, ids, mask, *, model: DualEncoder, method: str):
  """One jitted function for every tower: DualEncoder modules hash by value, so executables
  are shared across TowerEncoders (periodic evaluation during training compiles once)."""
  return model.apply({"params": params}, ids, mask, method=method)


class TowerEncoder:
  """One tower of a DualEncoder as a jitted, sharded function of padded token batches.

  Args:
    model: the DualEncoder.
    params: its `params` collection (NumPy, or jax.Arrays already placed, e.g. by the trainer).
    side: 'query' (encode_queries) or 'document' (encode_documents).
    mesh: device mesh; default all devices on the `data` axis.
  """

  def __init__(self, model: DualEncoder, params: Any, side: str,
               mesh: Optional[jax.sharding.Mesh] = None,
               rules=partitioning.LOGICAL_AXIS_RULES):
    if side not in SIDES:
      raise ValueError(f"side={side!r}; expected one of {SIDES}")
    self.side, self.model = side, model
    self.mesh = mesh or partitioning.make_mesh()
    self.rules = rules
    self.data_shards = self.mesh.shape["data"]
    self._params = _place_params(model, params, self.mesh, rules)
    self._method = "encode_queries" if side == "query" else "encode_documents"
    # Sparse models (dualenc.sparse) give [B, V] term weights, kept as CSR rows.
    self.sparse = getattr(model, "architecture", None) == "sparse"
    self.shapes_seen: set = set()
    self.num_compilations = 0  # executables this tower caused to be compiled

  def __call__(self, ids: np.ndarray, mask: np.ndarray) -> jax.Array:
    """ids, mask int32 [B, L] (B a multiple of the data shards) -> [B, D] float32 (async).

    With several processes every process passes the same full batch; each contributes its
    contiguous slice of rows, and the result is gathered back to every process.
    """
    self.shapes_seen.add(ids.shape)
    count, index = jax.process_count(), jax.process_index()
    if count > 1:
      rows = ids.shape[0] // count
      ids, mask = (x[index * rows:(index + 1) * rows] for x in (ids, mask))
    batch = partitioning.global_batch({"ids": ids, "mask": mask}, self.mesh)
    before = _embed._cache_size()  # pylint: disable=protected-access
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      out = _embed(self._params, batch["ids"], batch["mask"], model=self.model,
                   method=self._method)
    self.num_compilations += _embed._cache_size() - before  # pylint: disable=protected-access
    if count > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      out = multihost_utils.process_allgather(out, tiled=True)
    return out


def _place_params(model: DualEncoder, params: Any, mesh, rules) -> Any:
  """Params placed with the shardings their logical axes imply on `mesh`."""
  ids = np.ones((1, 8), np.int32)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids, ids, ids, ids))
  shardings = partitioning.logical_shardings(boxed["params"], mesh, rules)
  _check_tree(nn.unbox(boxed["params"]), params)
  return jax.device_put(params, shardings)


def describe_mismatch(expected: Dict[str, tuple], got: Dict[str, tuple],
                      expected_name: str = "model", got_name: str = "params") -> Optional[str]:
  """None when two {'/'-joined path: shape} maps agree, else a short description: missing and
  unexpected parameters grouped by top-level module (architectures differ there), then the
  first reshaped ones (encoder sizes differ there)."""
  def grouped(keys):
    groups: Dict[str, int] = {}
    for key in sorted(keys):
      groups[key.split("/")[0]] = groups.get(key.split("/")[0], 0) + 1
    return ", ".join(f"{top}/* ({n})" for top, n in groups.items())

  missing, unexpected = expected.keys() - got.keys(), got.keys() - expected.keys()
  reshaped = [f"{k}: {expected_name} {tuple(expected[k])} vs {got_name} {tuple(got[k])}"
              for k in sorted(expected.keys() & got.keys())
              if tuple(expected[k]) != tuple(got[k])]
  parts = []
  if missing:
    parts.append(f"missing from {got_name}: {grouped(missing)}")
  if unexpected:
    parts.append(f"unexpected in {got_name}: {grouped(unexpected)}")
  if reshaped:
    parts.append(f"{len(reshaped)} reshaped: " + "; ".join(reshaped[:5])
                 + (" ..." if len(reshaped) > 5 else ""))
  return "; ".join(parts) or None


def flat_shapes(tree: Any) -> Dict[str, tuple]:
  """{'/'-joined path: shape} of a nested dict of arrays (or ShapeDtypeStructs)."""
  import flax  # pylint: disable=g-import-not-at-top
  tree = flax.core.unfreeze(tree) if isinstance(tree, flax.core.FrozenDict) else tree
  if not isinstance(tree, dict):
    return {}
  flat = flax.traverse_util.flatten_dict(tree, sep="/")
  return {k: tuple(np.shape(v)) for k, v in flat.items()}


def _check_tree(expected: Any, got: Any) -> None:
  """ValueError describing missing/unexpected/reshaped parameters (another architecture)."""
  problem = describe_mismatch(flat_shapes(expected), flat_shapes(got))
  if problem:
    raise ValueError("parameters do not fit the model (a checkpoint of a different "
                     f"architecture or encoder size?): {problem}")


# ---------------------------------------------------------------------------------------------
# Encoding texts.


@gin.configurable(module="dualenc.evaluation")
@dataclasses.dataclass(frozen=True)
class EncodeOptions:
  """How texts are batched.

  Attributes:
    batch_tokens: rows x padded length per batch (bounds memory). None: 1,024 per data shard
      on CPU, where small batches keep attention and FFN activations in cache (MiniLM at 256
      tokens: ~30% fewer CPU-seconds per token than 8,192 per shard), 32,768 per shard on
      accelerators.
    max_batch_size: caps the rows of batches of short texts.
    sort_window: texts tokenized and length-sorted at a time (bounds host memory on huge
      corpora; batches never mix windows).
    progress: show a progress bar.
  """

  batch_tokens: Optional[int] = None
  max_batch_size: int = 512
  sort_window: int = 131072
  progress: bool = True


def _batch_rows(length: int, options: EncodeOptions, encoder: "TowerEncoder") -> int:
  """Rows of a batch padded to `length`: ~batch_tokens / length, a multiple of the shards."""
  shards = encoder.data_shards
  budget = options.batch_tokens
  if budget is None:
    per_shard = 1024 if encoder.mesh.devices.flat[0].platform == "cpu" else 32768
    budget = per_shard * shards
  rows = min(options.max_batch_size, max(1, budget // length))
  return max(shards, rows // shards * shards)


def encode_one(encoder: TowerEncoder, tokenizer: Callable[[Sequence[str]], List[np.ndarray]],
               text: str) -> np.ndarray:
  """One text -> its [1, D] embedding, padded only to its length bucket and to one row per data
  shard (encode_texts fills whole token budgets: right for corpora, slow for one query)."""
  (token_ids,) = tokenizer([text])
  buckets = length_buckets(tokenizer.max_length)
  bucket = buckets[int(np.searchsorted(buckets, max(1, len(token_ids))))]
  ids = np.zeros((encoder.data_shards, bucket), np.int32)
  mask = np.zeros_like(ids)
  ids[0, :len(token_ids)], mask[0, :len(token_ids)] = token_ids, 1
  return np.asarray(jax.device_get(encoder(ids, mask)), np.float32)[:1]


def encode_texts(encoder: TowerEncoder, tokenizer: Callable[[Sequence[str]], List[np.ndarray]],
                 texts: Sequence[str], options: Optional[EncodeOptions] = None,
                 description: str = "") -> np.ndarray:
  """texts -> float32 [len(texts), D] embeddings in input order.

  An empty text is encoded as the framing tokens alone (e.g. [CLS] [SEP]), as the reference
  tokenizers do.
  """
  options = options or EncodeOptions()
  max_length = tokenizer.max_length
  buckets = length_buckets(max_length)
  outputs: Optional[np.ndarray] = None
  sparse_parts: List[tuple] = []
  bar = _progress(len(texts), description, options.progress)
  pending: List[tuple] = []

  def drain(keep: int):
    nonlocal outputs
    while len(pending) > keep:
      rows, result = pending.pop(0)
      values = np.asarray(jax.device_get(result), np.float32)[:len(rows)]
      if encoder.sparse:
        sparse_parts.append((rows, scipy.sparse.csr_matrix(values)))
      else:
        if outputs is None:
          outputs = np.zeros((len(texts), values.shape[1]), np.float32)
        outputs[rows] = values
      bar.update(len(rows))

  for window_start in range(0, len(texts), options.sort_window):
    window = texts[window_start:window_start + options.sort_window]
    token_ids = tokenizer(window)
    lengths = np.array([len(t) for t in token_ids])
    if lengths.size and lengths.max() > max_length:
      raise ValueError(f"tokenizer returned {lengths.max()} tokens, more than its max_length "
                       f"{max_length}")
    order = np.argsort(-lengths, kind="stable")
    position = 0
    while position < len(order):
      bucket = buckets[int(np.searchsorted(buckets, max(1, lengths[order[position]])))]
      rows = _batch_rows(bucket, options, encoder)
      members = order[position:position + rows]
      position += len(members)
      ids = np.zeros((rows, bucket), np.int32)
      mask = np.zeros((rows, bucket), np.int32)
      for r, m in enumerate(members):
        ids[r, :lengths[m]] = token_ids[m]
        mask[r, :lengths[m]] = 1
      pending.append((members + window_start, encoder(ids, mask)))
      drain(keep=1)  # one batch in flight while the next is prepared
  drain(keep=0)
  bar.close()
  if sparse_parts:
    rows = np.concatenate([r for r, _ in sparse_parts])
    stacked = scipy.sparse.vstack([m for _, m in sparse_parts], format="csr")
    outputs = stacked[np.argsort(rows, kind="stable")]
  if outputs is None:  # no texts: the width is unknown without running the model
    raise ValueError(f"nothing to encode{' for ' + description if description else ''}: 0 texts")
  return outputs


class _NoBar:
  def update(self, n):
    pass

  def close(self):
    pass


def _progress(total: int, description: str, enabled: bool):
  if not enabled:
    return _NoBar()
  import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm.tqdm(total=total, desc=description or "encode", unit="text", dynamic_ncols=True,
                   mininterval=2.0)


# ---------------------------------------------------------------------------------------------
# Cache.


def texts_fingerprint(ids: Sequence[str], texts: Sequence[str]) -> str:
  digest = hashlib.sha256()
  for item_id, text in zip(ids, texts):
    digest.update(item_id.encode() + b"\x00" + text.encode() + b"\x01")
  return digest.hexdigest()


def cached_encode(cache_dir: Optional[os.PathLike], name: str,
                  fingerprint: Optional[Dict[str, Any]],
                  ids: Sequence[str], texts: Sequence[str],
                  encode: Callable[[], np.ndarray]) -> np.ndarray:
  """`encode()`'s [N, D] result, read from `cache_dir/name.npy` when its fingerprint matches.

  fingerprint: JSON-serialisable description of the model and tokenization (None: no caching);
  the ids and texts are hashed into it here.
  """
  if len(ids) != len(texts):
    raise ValueError(f"{len(ids)} ids for {len(texts)} texts")
  if cache_dir is None or fingerprint is None:
    return encode()
  cache_dir = fs.path(cache_dir)
  meta = dict(fingerprint, texts_sha256=texts_fingerprint(ids, texts), count=len(ids))
  array_path, meta_path = cache_dir / f"{name}.npy", cache_dir / f"{name}.json"
  if array_path.is_file() and meta_path.is_file():
    try:
      stored = json.loads(meta_path.read_text())
    except json.JSONDecodeError:
      stored = None
    if stored and stored.get("fingerprint") == meta and stored.get("ids") == list(ids):
      with array_path.open("rb") as f:
        array = (scipy.sparse.load_npz(f) if stored.get("sparse") else
                 np.load(f, allow_pickle=False))
      if array.shape[0] == len(ids):
        log.info("embeddings of %s read from %s", name, array_path)
        return array
    log.warning("embedding cache %s is stale (model, tokenization or texts changed); "
                "re-encoding", array_path)
  start = time.perf_counter()
  array = encode()
  buffer = io.BytesIO()
  sparse = scipy.sparse.issparse(array)
  if sparse:
    scipy.sparse.save_npz(buffer, array.tocsr())
  else:
    np.save(buffer, array)
  # The array first, its description last: a cache entry is valid only once both are written.
  fs.write_bytes(array_path, buffer.getvalue())
  fs.write_text(meta_path, json.dumps({"fingerprint": meta, "ids": list(ids), "sparse": sparse,
                                       "seconds": time.perf_counter() - start}))
  return array
