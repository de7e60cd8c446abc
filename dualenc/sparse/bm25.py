"""BM25 over a corpus with bm25s: the lexical baseline, the hard-negative miner, a teacher.

Tokenization (bm25s's): lowercase words, English stop words removed, Snowball English stemming
(PyStemmer); scoring is Lucene's BM25 (k1 = 1.5, b = 0.75 by default, bm25s's defaults). Either
choice can be switched off (`stem=False`, `stopwords=None`; `python -m dualenc.evaluate --bm25`:
--bm25_no_stemming, --bm25_stopwords=none, --bm25_k1, --bm25_b). Results are the documents
sharing a term with the query (score > 0), as from any inverted index.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Optional, Sequence, Tuple

import numpy as np


@dataclasses.dataclass(frozen=True)
class BM25Options:
  k1: float = 1.5
  b: float = 0.75
  stopwords: Optional[str] = "en"
  stem: bool = True

  def describe(self) -> dict:
    return {"library": "bm25s", "method": "lucene", "k1": self.k1, "b": self.b,
            "stopwords": self.stopwords, "stemmer": "snowball-english" if self.stem else None}


class BM25Searcher:
  """bm25s index over `texts`; `scores(queries)` [Q, N] and `search(queries, k)` top-k."""

  kind = "bm25"

  def __init__(self, texts: Sequence[str], options: BM25Options = BM25Options()):
    import bm25s  # pylint: disable=g-import-not-at-top
    logging.getLogger("bm25s").setLevel(logging.WARNING)  # its DEBUG line on every index()
    if not len(texts):
      raise ValueError("cannot index an empty corpus for BM25")
    self.options = options
    self._stemmer = None
    if options.stem:
      import Stemmer  # pylint: disable=g-import-not-at-top
      self._stemmer = Stemmer.Stemmer("english")
    self._bm25s = bm25s
    self.retriever = bm25s.BM25(k1=options.k1, b=options.b, method="lucene")
    self.retriever.index(self._tokenize(texts), show_progress=False)
    self.num_docs = len(texts)
    self.settings = options.describe()

  def _tokenize(self, texts, return_ids: bool = True):
    return self._bm25s.tokenize(list(texts), stopwords=self.options.stopwords,
                                stemmer=self._stemmer, show_progress=False,
                                return_ids=return_ids)

  def query_scores(self, query: str) -> np.ndarray:
    """[N] scores of one query against every document."""
    vocab = self.retriever.vocab_dict
    (tokens,) = self._tokenize([query], return_ids=False)
    known = [t for t in tokens if t in vocab]
    if not known:
      return np.zeros(self.num_docs, np.float32)
    return np.asarray(self.retriever.get_scores(known), np.float32)

  def search_one(self, query: str, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """One query string -> (scores [<=k], indices [<=k]) of the documents matching a query term
    (score > 0), descending, lower index first on ties: bm25s's tokenizer and `get_scores`,
    then argpartition (measured faster per query than bm25s's `retrieve`)."""
    from dualenc.sparse import index as sparse_index  # pylint: disable=g-import-not-at-top
    scores = self.query_scores(query)
    matched = np.flatnonzero(scores > 0)
    return sparse_index.top_k_of_scores(scores[matched], matched, int(k))

  def scores(self, queries: Sequence[str]) -> np.ndarray:
    return np.stack([self.query_scores(q) for q in queries]) if len(queries) else np.zeros(
        (0, self.num_docs), np.float32)

  def search(self, queries: Sequence[str], k: int) -> Tuple[np.ndarray, np.ndarray]:
    """(scores [Q, k], indices [Q, k]) by `search_one`; rows with fewer matching documents are
    padded with index -1 and score -inf."""
    k = int(k)
    out_scores = np.full((len(queries), k), -np.inf, np.float32)
    out_indices = np.full((len(queries), k), -1, np.int64)
    for row, query in enumerate(queries):
      scores, indices = self.search_one(query, k)
      out_scores[row, :len(indices)], out_indices[row, :len(indices)] = scores, indices
    return out_scores, out_indices

  def index_bytes(self) -> int:
    """Bytes of the bm25s index as `bm25s.BM25.save` writes it (score matrix and vocabulary)."""
    import tempfile  # pylint: disable=g-import-not-at-top
    from dualenc.sparse import index as sparse_index  # pylint: disable=g-import-not-at-top
    with tempfile.TemporaryDirectory() as tmp:
      self.retriever.save(tmp, show_progress=False)
      return sparse_index.directory_bytes(tmp)
