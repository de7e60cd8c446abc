"""An inference-free sparse model's corpus and query side as OpenSearch neural sparse files.

  idf.json          token -> query weight, every vocabulary token (special tokens 0.0), so the
                    missing-token convention of the reader (0 or 1.0) never matters
  mapping.json      index body: `id` keyword, `text` text, FIELD rank_features
  documents.jsonl   bulk-ingest lines: {"index": {"_index", "_id"}} then the document with its
                    term weights under FIELD (token strings as keys, weights > 0)
  query.json        a `neural_sparse` query with `query_tokens` for one query string, made with
                    the IDF table exactly as the model's query side

OpenSearch stores rank_features with a 9-bit mantissa, so its scores are those of dualenc to
about 0.4% per term.
"""

from __future__ import annotations

import json
import pathlib
from typing import Dict, Iterable, Mapping, Optional, Sequence

import numpy as np

from dualenc.export import hf

FIELD = "sparse_embedding"


def prune_rows(vectors, top_k: Optional[int] = None, ratio: Optional[float] = None):
  """CSR rows keeping their `top_k` largest weights and those >= ratio x the row's largest
  (as `dualenc.sparse.functions.top_k_prune`); no pruning when both are None."""
  import scipy.sparse  # pylint: disable=g-import-not-at-top
  vectors = scipy.sparse.csr_matrix(vectors, dtype=np.float32)
  if not top_k and not ratio:
    return vectors
  rows = []
  for i in range(vectors.shape[0]):
    start, end = vectors.indptr[i], vectors.indptr[i + 1]
    ids, weights = vectors.indices[start:end], vectors.data[start:end]
    keep = np.ones(len(weights), bool)
    if top_k and len(weights) > top_k:
      keep[np.argsort(-weights, kind="stable")[top_k:]] = False
    if ratio and len(weights):
      keep &= weights >= ratio * weights.max()
    rows.append((ids[keep], weights[keep]))
  indptr = np.cumsum([0] + [len(ids) for ids, _ in rows])
  indices = np.concatenate([ids for ids, _ in rows]) if rows else np.zeros(0, np.int32)
  data = np.concatenate([w for _, w in rows]) if rows else np.zeros(0, np.float32)
  return scipy.sparse.csr_matrix((data, indices, indptr), shape=vectors.shape)


def term_weights(ids: Iterable[int], weights: Iterable[float],
                 tokens: Sequence[str]) -> Dict[str, float]:
  """{token: weight} of a row's positive weights (rank_features accept only positive values)."""
  return {tokens[int(i)]: float(w) for i, w in zip(ids, weights) if w > 0}


def mapping(field: str = FIELD) -> Dict[str, object]:
  return {"mappings": {"properties": {"id": {"type": "keyword"}, "text": {"type": "text"},
                                      field: {"type": "rank_features"}}}}


def neural_sparse_query(query_tokens: Mapping[str, float], field: str = FIELD,
                        size: int = 10) -> Dict[str, object]:
  return {"size": size, "query": {"neural_sparse": {field: {"query_tokens": dict(query_tokens)}}}}


def write(directory: pathlib.Path, *, tokens: Sequence[str], query_table: np.ndarray,
          query_encoder, doc_ids: Sequence[str], doc_texts: Sequence[str], doc_vectors,
          query_text: str, index_name: str, field: str = FIELD) -> Dict[str, int]:
  """Writes the four files (module docstring); returns counts for the export's manifest.

  query_table: [V] query weights (relu(idf) or 1, special tokens 0); query_encoder: the
  model's `dualenc.sparse.query.QueryEncoder`; doc_vectors: CSR [N, V] (already pruned).
  """
  directory.mkdir(parents=True, exist_ok=True)
  hf.write_json(directory / "idf.json",
                {token: float(w) for token, w in zip(tokens, query_table)})
  hf.write_json(directory / "mapping.json", mapping(field))
  postings = 0
  with open(directory / "documents.jsonl", "w", encoding="utf-8") as f:
    for i, (doc_id, text) in enumerate(zip(doc_ids, doc_texts)):
      start, end = doc_vectors.indptr[i], doc_vectors.indptr[i + 1]
      weights = term_weights(doc_vectors.indices[start:end], doc_vectors.data[start:end], tokens)
      postings += len(weights)
      f.write(json.dumps({"index": {"_index": index_name, "_id": doc_id}}) + "\n")
      f.write(json.dumps({"id": doc_id, "text": text, field: weights}, ensure_ascii=False) + "\n")
  ids, weights = query_encoder.encode(query_text)
  hf.write_json(directory / "query.json",
                neural_sparse_query(term_weights(ids, weights, tokens), field))
  return {"documents": len(doc_ids), "postings": postings}
