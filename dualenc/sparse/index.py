"""Search over sparse document vectors: an exact inverted index and Seismic (approximate).

Both answer `search(queries [Q, V] CSR, k) -> (scores [Q, k], indices [Q, k])` (rows sorted by
score descending, equal scores to the lower document index; a query matching fewer than k
documents has its row padded with index -1 and score -inf) and `search_one(term_ids, weights,
k) -> (scores [n], indices [n])` for the single-query path of `dualenc.search`. Only documents
sharing a term with the query are results, as in any inverted index (with non-negative weights,
as sparse models and IDF tables give, exactly those scoring above 0). NumPy and SciPy only: no JAX, Flax or TensorFlow.

`InvertedIndex` (exact): documents in shards of `shard_size`; each shard is stored term-major,
the CSR of its transpose [V, n]: postings list t = the shard's documents with a weight on term
t. A block of queries is scored against one shard at a time (a sparse product, then a
[block, n] score matrix and argpartition), merged into a running top-k, so memory is bounded by
one shard; a single query (`search_one`, the served path) sums its terms' postings with one
np.bincount. Saved as plain .npy arrays that load memory-mapped: a corpus larger than memory is
searched with the OS paging in the postings the queries touch.

`SeismicIndex` (approximate, `pyseismic-lsr`; Bruch et al., SIGIR 2024): postings pruned to
the `n_postings` largest weights, grouped into blocks with summary vectors; a query visits a
block only when its summary's score can beat the heap. Recall@10 against exact search is
measured in tests on SciFact (>= 0.95 required; 0.98-0.99 with these defaults).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import sys
from typing import Dict, Iterable, List, Optional, Tuple

import gin
import numpy as np
import scipy.sparse

SPARSE_SEARCHERS = ("exact", "seismic")
_TINY = float(np.finfo(np.float32).tiny)


def check_vectors(vectors, what: str) -> scipy.sparse.csr_matrix:
  """Any sparse/dense [count, V] matrix -> canonical float32 CSR (sorted, no explicit zeros)."""
  matrix = scipy.sparse.csr_matrix(vectors, dtype=np.float32)
  if matrix.ndim != 2:
    raise ValueError(f"{what}: expected a [count, vocabulary] matrix, got {matrix.shape}")
  if not np.all(np.isfinite(matrix.data)):
    raise ValueError(f"{what}: vectors contain NaN or infinity")
  matrix.eliminate_zeros()
  matrix.sum_duplicates()
  matrix.sort_indices()
  return matrix


def _prepare_queries(queries, dim: int, k: int):
  """Checked query CSR and the empty (scores [Q, k] -inf, indices [Q, k] -1) to fill."""
  queries = check_vectors(queries, "query vectors")
  if queries.shape[1] != dim:
    raise ValueError(f"query vocabulary {queries.shape[1]} != the index's {dim}")
  if k < 1:
    raise ValueError(f"k must be >= 1, got {k}")
  num_queries = queries.shape[0]
  return queries, (np.full((num_queries, k), -np.inf, np.float32),
                   np.full((num_queries, k), -1, np.int64))


def top_k_of_scores(scores: np.ndarray, matched: np.ndarray, k: int
                    ) -> Tuple[np.ndarray, np.ndarray]:
  """One query's scores [n] over candidate documents `matched` [n] (ascending ids) -> top-k
  (scores desc, ids asc on ties)."""
  if len(scores) > k:
    threshold = np.partition(scores, len(scores) - k)[len(scores) - k]
    keep = scores >= threshold  # every document tied with the k-th, so ties go by id
    scores, matched = scores[keep], matched[keep]
  order = np.lexsort((matched, -scores))[:k]
  return scores[order], matched[order]


class InvertedIndex:
  """Exact top-k over sparse document vectors (see the module docstring).

  Args:
    doc_vectors: [N, V] CSR (or anything scipy converts), non-negative or not.
    shard_size: documents per shard (bounds the [query_block, shard] score matrix).
    query_block: queries scored together in `search`.
  """

  kind = "inverted"

  def __init__(self, doc_vectors=None, *, shard_size: int = 262_144, query_block: int = 64,
               _shards: Optional[List[scipy.sparse.csr_matrix]] = None):
    if _shards is None:
      docs = check_vectors(doc_vectors, "document vectors")
      if not docs.shape[0]:
        raise ValueError("cannot index an empty corpus (0 document vectors)")
      _shards = [docs[start:start + shard_size].T.tocsr()
                 for start in range(0, docs.shape[0], shard_size)]
    self.shards = _shards  # each [V, n_shard] CSR: postings per term
    self.offsets = np.cumsum([0] + [s.shape[1] for s in _shards])
    self.num_docs, self.dim = int(self.offsets[-1]), int(_shards[0].shape[0])
    self.query_block = query_block
    self.settings: Dict[str, object] = {"shard_size": shard_size, "num_shards": len(_shards)}

  @classmethod
  def from_chunks(cls, chunks: Iterable, **kwargs) -> "InvertedIndex":
    """One shard per chunk of document vectors (e.g. encoded batch by batch)."""
    shards = [check_vectors(c, "document vectors").T.tocsr() for c in chunks]
    if not shards or not sum(s.shape[1] for s in shards):
      raise ValueError("cannot index an empty corpus (0 document vectors)")
    return cls(_shards=shards, **kwargs)

  @property
  def doc_nnz(self) -> int:
    return int(sum(s.nnz for s in self.shards))

  def document_vectors(self) -> scipy.sparse.csr_matrix:
    """[N, V] CSR of every document (reads every shard)."""
    return scipy.sparse.vstack([s.T.tocsr() for s in self.shards], format="csr")

  def search(self, queries, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """queries [Q, V] -> (scores [Q, k], indices [Q, k] int64); see the module docstring."""
    queries, (out_scores, out_indices) = _prepare_queries(queries, self.dim, k)
    for start in range(0, queries.shape[0], self.query_block):
      block = queries[start:start + self.query_block]
      candidates: List[List[Tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(block.shape[0])]
      for shard, offset in zip(self.shards, self.offsets):
        product = (block @ shard).tocsr()  # [block, n_shard], only matched documents stored
        product.sort_indices()
        for row in range(block.shape[0]):
          lo, hi = product.indptr[row], product.indptr[row + 1]
          if hi > lo:
            candidates[row].append(top_k_of_scores(
                product.data[lo:hi], product.indices[lo:hi].astype(np.int64) + offset, k))
      for row, parts in enumerate(candidates):
        if parts:
          scores, ids = top_k_of_scores(np.concatenate([p[0] for p in parts]),
                                        np.concatenate([p[1] for p in parts]), k)
          out_scores[start + row, :len(ids)], out_indices[start + row, :len(ids)] = scores, ids
    return out_scores, out_indices

  def search_one(self, term_ids: np.ndarray, weights: np.ndarray, k: int
                 ) -> Tuple[np.ndarray, np.ndarray]:
    """One query as (term ids [n], weights [n] > 0) -> (scores [<=k], doc indices [<=k]) of the
    documents scoring above 0: concatenates the query terms' postings and sums them per document
    with one np.bincount, then a partition for the top-k."""
    term_ids = np.asarray(term_ids, np.int64)
    weights = np.asarray(weights, np.float32).tolist()
    parts = []
    for shard, offset in zip(self.shards, self.offsets):
      starts, ends = shard.indptr[term_ids].tolist(), shard.indptr[term_ids + 1].tolist()
      if not any(e > b for b, e in zip(starts, ends)):
        continue
      # One slice per query term, concatenated: fewer NumPy calls than gathering by position.
      docs = np.concatenate([shard.indices[b:e] for b, e in zip(starts, ends)])
      values = np.concatenate([shard.data[b:e] * w for b, e, w in zip(starts, ends, weights)])
      scores = np.bincount(docs, weights=values, minlength=shard.shape[1])
      # The k-th largest score bounds the candidates (every document tied with it included,
      # so ties go by id); only positive scores are matches.
      n = len(scores)
      threshold = np.partition(scores, n - k)[n - k] if n > k else 0.0
      matched = np.flatnonzero(scores >= max(threshold, _TINY))
      order = np.lexsort((matched, -scores[matched]))[:k]
      parts.append((scores[matched[order]].astype(np.float32), matched[order] + offset))
    if not parts:
      return np.zeros(0, np.float32), np.zeros(0, np.int64)
    if len(parts) == 1:
      return parts[0]
    return top_k_of_scores(np.concatenate([p[0] for p in parts]),
                           np.concatenate([p[1] for p in parts]), k)

  def save(self, directory: pathlib.Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for i, shard in enumerate(self.shards):
      for name in ("indptr", "indices", "data"):
        np.save(directory / f"shard_{i:05d}.{name}.npy", getattr(shard, name))
    (directory / "shards.json").write_text(json.dumps(
        {"num_shards": len(self.shards), "vocab_size": self.dim,
         "docs_per_shard": [int(s.shape[1]) for s in self.shards], **self.settings}))

  @classmethod
  def load(cls, directory: pathlib.Path, mmap: bool = True) -> "InvertedIndex":
    meta = json.loads((directory / "shards.json").read_text())
    mode = "r" if mmap else None
    shards = []
    for i, num_docs in enumerate(meta["docs_per_shard"]):
      # np.asarray: plain ndarray views of the maps (slicing a np.memmap costs more per call).
      arrays = [np.asarray(np.load(directory / f"shard_{i:05d}.{name}.npy", mmap_mode=mode,
                                   allow_pickle=False)) for name in ("data", "indices", "indptr")]
      if len(arrays[2]) != meta["vocab_size"] + 1 or len(arrays[0]) != len(arrays[1]):
        raise ValueError(f"{directory}: shard {i} is inconsistent with shards.json")
      # Built without scipy's checks and copies, so memory-mapped arrays stay mapped.
      shard = scipy.sparse.csr_matrix((meta["vocab_size"], num_docs), dtype=np.float32)
      shard.data, shard.indices, shard.indptr = arrays
      shards.append(shard)
    return cls(_shards=shards, shard_size=meta.get("shard_size", 262_144))


# ---------------------------------------------------------------------------------------------
# Seismic.


@gin.configurable(module="dualenc.sparse")
@dataclasses.dataclass(frozen=True)
class SeismicConfig:
  """pyseismic-lsr settings (its names; defaults as its authors recommend, query_cut raised to
  cover whole inference-free queries).

  n_postings: postings kept per term (the largest weights); centroid_fraction: blocks per
  postings list as a fraction of its length; summary_energy: fraction of a block's weight mass
  its summary keeps; query_cut: the query's largest terms searched; heap_factor: a block is
  scored when its summary's score exceeds heap_factor x the current k-th score (lower searches
  more); num_threads: build threads (0 = all cores); search is single-threaded per query.
  """

  n_postings: int = 3500
  centroid_fraction: float = 0.1
  summary_energy: float = 0.4
  min_cluster_size: int = 2
  query_cut: int = 64
  heap_factor: float = 0.7
  num_threads: int = 0


def _seismic():
  import seismic  # pylint: disable=g-import-not-at-top
  return seismic


@contextlib.contextmanager
def _quiet_stdout():
  """pyseismic-lsr's Rust code prints its build and save progress on the process's stdout
  (file descriptor 1, past Python's sys.stdout): sent to /dev/null while it runs."""
  sys.stdout.flush()
  saved = os.dup(1)
  try:
    with open(os.devnull, "w") as null:
      os.dup2(null.fileno(), 1)
      yield
  finally:
    os.dup2(saved, 1)
    os.close(saved)


class SeismicIndex:
  """Seismic over [N, V] document vectors: term ids are its string components, document
  indices its doc ids (its results come back keyed by id, not in query order)."""

  kind = "seismic"

  def __init__(self, doc_vectors=None, config: Optional[SeismicConfig] = None, *,
               _loaded=None, _meta=None):
    self.config = config or SeismicConfig()
    if _loaded is not None:
      self._index = _loaded
      self.num_docs, self.dim = int(_meta["num_docs"]), int(_meta["vocab_size"])
    else:
      docs = check_vectors(doc_vectors, "document vectors")
      if not docs.shape[0]:
        raise ValueError("cannot index an empty corpus (0 document vectors)")
      seismic = _seismic()
      dataset = seismic.SeismicDataset()
      string = seismic.get_seismic_string()
      for row in range(docs.shape[0]):
        lo, hi = docs.indptr[row], docs.indptr[row + 1]
        dataset.add_document(str(row), docs.indices[lo:hi].astype(str).astype(string),
                             docs.data[lo:hi])
      with _quiet_stdout():
        self._index = seismic.SeismicIndex.build_from_dataset(
            dataset, n_postings=self.config.n_postings,
            centroid_fraction=self.config.centroid_fraction,
            summary_energy=self.config.summary_energy,
            min_cluster_size=self.config.min_cluster_size,
            num_threads=self.config.num_threads)
      self.num_docs, self.dim = docs.shape
    self.settings = dict(dataclasses.asdict(self.config), library="pyseismic-lsr")

  def _components(self, term_ids: np.ndarray) -> np.ndarray:
    return np.asarray(term_ids).astype(str).astype(_seismic().get_seismic_string())

  def search_one(self, term_ids: np.ndarray, weights: np.ndarray, k: int
                 ) -> Tuple[np.ndarray, np.ndarray]:
    if not len(term_ids):
      return np.zeros(0, np.float32), np.zeros(0, np.int64)
    hits = self._index.search("q", self._components(term_ids),
                              np.asarray(weights, np.float32), k=k,
                              query_cut=self.config.query_cut,
                              heap_factor=self.config.heap_factor)
    return (np.asarray([h[1] for h in hits], np.float32),
            np.asarray([int(h[2]) for h in hits], np.int64))

  def search(self, queries, k: int) -> Tuple[np.ndarray, np.ndarray]:
    queries, (out_scores, out_indices) = _prepare_queries(queries, self.dim, k)
    rows = [r for r in range(queries.shape[0]) if queries.indptr[r + 1] > queries.indptr[r]]
    if not rows:
      return out_scores, out_indices
    spans = [(queries.indptr[r], queries.indptr[r + 1]) for r in rows]
    results = self._index.batch_search(
        np.asarray([str(r) for r in rows]).astype(_seismic().get_seismic_string()),
        [self._components(queries.indices[lo:hi]) for lo, hi in spans],
        [queries.data[lo:hi] for lo, hi in spans], k=k, query_cut=self.config.query_cut,
        heap_factor=self.config.heap_factor, num_threads=self.config.num_threads)
    for hits in results:
      if not hits:
        continue
      row = int(hits[0][0])
      scores = np.asarray([h[1] for h in hits], np.float32)
      ids = np.asarray([int(h[2]) for h in hits], np.int64)
      scores, ids = top_k_of_scores(scores, ids, k)  # the same order and tie rule as exact
      out_scores[row, :len(ids)], out_indices[row, :len(ids)] = scores, ids
    return out_scores, out_indices

  def save(self, directory: pathlib.Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    with _quiet_stdout():
      self._index.save(str(directory / "seismic"))
    (directory / "seismic.json").write_text(json.dumps(
        {"num_docs": self.num_docs, "vocab_size": self.dim, "config": dataclasses.asdict(
            self.config)}))

  @classmethod
  def load(cls, directory: pathlib.Path) -> "SeismicIndex":
    meta = json.loads((directory / "seismic.json").read_text())
    with _quiet_stdout():
      loaded = _seismic().SeismicIndex.load(str(directory / "seismic.index.seismic"))
    return cls(config=SeismicConfig(**meta["config"]), _loaded=loaded, _meta=meta)


def make_sparse_searcher(kind: str, doc_vectors, seismic_config: Optional[SeismicConfig] = None):
  if kind == "exact":
    return InvertedIndex(doc_vectors)
  if kind == "seismic":
    return SeismicIndex(doc_vectors, seismic_config)
  raise ValueError(f"searcher {kind!r} is not for sparse vectors; expected one of "
                   f"{SPARSE_SEARCHERS}")


def directory_bytes(directory) -> int:
  """Bytes of every file under `directory` (an index's size on disk)."""
  return sum(p.stat().st_size for p in pathlib.Path(directory).rglob("*") if p.is_file())
