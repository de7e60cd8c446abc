"""A saved search index: a searcher, its document ids (and texts), and how to encode queries.

Layout of an index directory (local or gs://; written to a staging directory and moved into
place only when complete, so a failed save never replaces a good index):

  index.json        format_version, kind, num_docs, dim, searcher settings, metadata (the
                    model's source; for sparse indexes the query side's fingerprint)
  doc_ids.json      document ids, in index order
  doc_texts.json    document texts (optional; shown by `python -m dualenc.search`)
  embeddings.npy    kind 'exact' (dense)      |  scann/    kind 'scann' (dense)
  inverted/         kind 'inverted' (sparse)  |  seismic/  kind 'seismic' (sparse)
  query_encoder/    sparse, inference-free: vocab.txt + idf.json (dualenc.sparse.query)

Loading a sparse index imports no JAX, Flax or TensorFlow (dense searchers load theirs lazily).
No file of an index is unpickled.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from dualenc import fs

INDEX_FORMAT_VERSION = 1
SPARSE_KINDS = ("inverted", "seismic", "sparse_exact")
QUERY_ENCODER_DIR = "query_encoder"


def write_searcher(searcher, directory: pathlib.Path) -> None:
  """The searcher's own files into `directory` (layout in the module docstring)."""
  kind = searcher.kind
  if kind == "exact":
    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / "embeddings.npy", searcher.embeddings)
  elif kind in ("inverted", "seismic"):
    searcher.save(directory / kind)
  elif kind == "scann":
    searcher.serialize(directory / "scann")
  else:
    raise ValueError(f"cannot save a searcher of kind {kind!r}")


class Index:
  """A searcher with its document ids, optional texts and metadata, saved as one directory.

  `query_encoder`: a sparse index's model-free query side (`dualenc.sparse.query.QueryEncoder`),
  saved with it; `search_text` then answers query strings without any model.
  """

  def __init__(self, searcher, doc_ids: Sequence[str], doc_texts: Optional[Sequence[str]] = None,
               metadata: Optional[dict] = None, query_encoder=None):
    if len(doc_ids) != searcher.num_docs:
      raise ValueError(f"{len(doc_ids)} document ids for an index of {searcher.num_docs}")
    self.searcher, self.doc_ids = searcher, list(doc_ids)
    self.doc_texts = list(doc_texts) if doc_texts is not None else None
    self.metadata = dict(metadata or {})
    self.query_encoder = query_encoder
    if query_encoder is not None:
      if query_encoder.vocab_size != searcher.dim:
        raise ValueError(f"the query encoder's vocabulary has {query_encoder.vocab_size} tokens, "
                         f"the index's vectors {searcher.dim} dimensions")
      self.metadata.setdefault("query_encoder", query_encoder.fingerprint())

  @property
  def sparse(self) -> bool:
    return self.searcher.kind in SPARSE_KINDS

  def search(self, query_embeddings, k: int) -> List[List[Tuple[str, float]]]:
    scores, indices = self.searcher.search(query_embeddings, k)
    return [[(self.doc_ids[i], float(s)) for s, i in zip(srow, irow) if i >= 0]
            for srow, irow in zip(scores.tolist(), indices.tolist())]

  def search_text(self, text: str, k: int) -> List[Tuple[str, float]]:
    """One query string -> [(doc id, score)] through the saved model-free query side: the
    whole query path, tokenizer to top-k ids. A query with no known token has no results."""
    if self.query_encoder is None:
      raise ValueError("this index has no model-free query encoder (a dense or siamese sparse "
                       "model's index: queries need the model; use dualenc.search)")
    term_ids, weights = self.query_encoder.encode(text)
    scores, indices = self.searcher.search_one(term_ids, weights, k)
    return [(self.doc_ids[i], float(s)) for s, i in zip(scores.tolist(), indices.tolist())]

  def save(self, directory) -> Any:
    """Writes the index to `directory` (local or gs://); an index already there is replaced
    only once the new one is complete."""
    directory = fs.path(directory)
    with fs.staged_directory(directory) as staging:
      kind = self.searcher.kind
      write_searcher(self.searcher, staging)
      settings = {} if kind == "exact" else dict(getattr(self.searcher, "settings", {}) or {})
      if self.query_encoder is not None:
        self.query_encoder.save(staging / QUERY_ENCODER_DIR)
      (staging / "doc_ids.json").write_text(json.dumps(self.doc_ids))
      if self.doc_texts is not None:
        (staging / "doc_texts.json").write_text(json.dumps(self.doc_texts))
      (staging / "index.json").write_text(json.dumps(
          {"format_version": INDEX_FORMAT_VERSION, "kind": kind,
           "num_docs": self.searcher.num_docs, "dim": self.searcher.dim, "settings": settings,
           "metadata": self.metadata}, indent=2, sort_keys=True))
    return directory

  @classmethod
  def load(cls, directory, query_encoder=None) -> "Index":
    """Reads an index. `query_encoder` (a QueryEncoder, or a directory of one) replaces the
    saved query side; one of another vocabulary or IDF table than the index was built with is
    refused (ValueError naming both)."""
    directory = fs.path(directory)
    meta_path = directory / "index.json"
    if not meta_path.is_file():
      inside = sorted(p.name for p in directory.iterdir()
                      if (p / "index.json").is_file()) if directory.is_dir() else []
      if inside:
        raise FileNotFoundError(
            f"{directory} holds one index per task ({', '.join(inside)}); pass "
            f"--index_dir={directory / inside[0]} (or another of them)")
      raise FileNotFoundError(f"{directory}: not a dualenc index (no index.json)")
    with fs.local_copy(directory) as local:
      index = cls._load_local(local, os.fspath(meta_path))
    if query_encoder is not None:
      from dualenc.sparse import query as query_lib  # pylint: disable=g-import-not-at-top
      where = os.fspath(query_encoder) if not isinstance(
          query_encoder, query_lib.QueryEncoder) else "the given query encoder"
      if not isinstance(query_encoder, query_lib.QueryEncoder):
        query_encoder = query_lib.QueryEncoder.load(query_encoder)
      if not index.sparse:
        raise ValueError(f"{directory} is a dense index: a sparse query encoder cannot query it")
      query_lib.check_compatible(index.metadata.get("query_encoder") or {}, query_encoder,
                                 f"the index {directory}", where)
      index.query_encoder = query_encoder
    return index

  @classmethod
  def _load_local(cls, directory: pathlib.Path, where: str) -> "Index":
    meta = json.loads((directory / "index.json").read_text())
    if meta.get("format_version") != INDEX_FORMAT_VERSION:
      raise ValueError(f"{where}: format_version {meta.get('format_version')!r}, this "
                       f"dualenc reads {INDEX_FORMAT_VERSION}")
    kind = meta["kind"]
    if kind in ("exact", "scann"):
      from dualenc.evaluation import search  # pylint: disable=g-import-not-at-top
      if kind == "exact":
        searcher = search.ExactSearcher(np.load(directory / "embeddings.npy", allow_pickle=False))
      else:
        searcher = search.ScannSearcher.load(directory / "scann", meta["settings"])
    elif kind in SPARSE_KINDS:
      from dualenc.sparse import index as sparse_index  # pylint: disable=g-import-not-at-top
      if kind == "inverted":
        # A local copy of a remote index is temporary: read it into memory, not mapped.
        searcher = sparse_index.InvertedIndex.load(directory / "inverted",
                                                   mmap=not fs.is_remote(where))
      elif kind == "seismic":
        searcher = sparse_index.SeismicIndex.load(directory / "seismic")
      else:  # written by dualenc before the inverted index (one CSR of document rows)
        import scipy.sparse  # pylint: disable=g-import-not-at-top
        searcher = sparse_index.InvertedIndex(scipy.sparse.load_npz(directory / "vectors.npz"))
    else:
      raise ValueError(f"{where}: unknown index kind {kind!r}")
    doc_ids = json.loads((directory / "doc_ids.json").read_text())
    texts_path = directory / "doc_texts.json"
    texts = json.loads(texts_path.read_text()) if texts_path.is_file() else None
    if len(doc_ids) != searcher.num_docs:
      raise ValueError(f"{where}: doc_ids.json has {len(doc_ids)} ids for an index of "
                       f"{searcher.num_docs} documents")
    query_encoder = None
    if (directory / QUERY_ENCODER_DIR).is_dir():
      from dualenc.sparse import query as query_lib  # pylint: disable=g-import-not-at-top
      query_encoder = query_lib.QueryEncoder.load(directory / QUERY_ENCODER_DIR)
      query_lib.check_compatible(meta.get("metadata", {}).get("query_encoder") or {},
                                 query_encoder, where, os.fspath(directory / QUERY_ENCODER_DIR))
    return cls(searcher, doc_ids, texts, meta.get("metadata"), query_encoder)
