"""The inference-free query side without a model: a WordPiece tokenizer and an IDF table.

    encoder = QueryEncoder.load("runs/main/sparse/index/query_encoder")
    term_ids, weights = encoder.encode("how do I parse a date")   # [n] int32, [n] float32
    vectors = encoder.encode_batch(["q1", "q2"])                   # scipy CSR [2, V]

A query's vector is what `SparseEncoder.encode_queries` computes for query_encoder 'idf' (or
'ones'): the text's word pieces, cut to `max_length - 2` as the model's framing does, each
distinct non-special piece weighted relu(idf) (1 for 'ones'); pieces whose weight is 0 are
dropped. A query with no known piece (only [UNK]s, or empty) encodes to no terms: its search
result is empty. Only NumPy, SciPy and Hugging Face `tokenizers` are imported: answering a
query needs no JAX, Flax or TensorFlow (tests/test_sparse_search.py checks sys.modules).

Saved as a directory: `vocab.txt`, `idf.json` (token -> weight, the OpenSearch /
sentence-transformers format; absent for 'ones') and `query_encoder.json` (kind, max_length,
special ids, and sha256 fingerprints of the vocabulary and the IDF table, which an index
compares with its own to refuse a query side it was not built for).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from dualenc import fs
from dualenc.sparse import idf as idf_lib

KINDS = ("idf", "ones")
CONFIG_FILE = "query_encoder.json"


def vocab_fingerprint(tokens: Sequence[str]) -> str:
  return hashlib.sha256("\n".join(tokens).encode("utf-8")).hexdigest()


def idf_fingerprint(idf: Optional[np.ndarray]) -> Optional[str]:
  if idf is None:
    return None
  return hashlib.sha256(np.ascontiguousarray(idf, np.float32).tobytes()).hexdigest()


class QueryEncoder:
  """Text -> sparse query vector over a WordPiece vocabulary (see the module docstring).

  Args:
    vocab_path: the model's WordPiece vocab.txt (one token per line, id = line number).
    idf: [V] float32 table (kind 'idf'); None for kind 'ones'.
    max_length: the model's query length including [CLS] and [SEP] (EVAL_FEATURE_LENGTHS'
      'inputs'); word pieces past max_length - 2 are cut, as in the model.
    special_ids: ids that never carry weight (default: [PAD] [UNK] [CLS] [SEP] [MASK] [unused*]).
  """

  def __init__(self, vocab_path, idf: Optional[np.ndarray], max_length: int,
               special_ids: Optional[Sequence[int]] = None, lower_case: bool = True):
    self.vocab_path = str(vocab_path)
    self.tokens = idf_lib.vocab_tokens(vocab_path)
    self.kind = "ones" if idf is None else "idf"
    if idf is not None:
      idf = np.asarray(idf, np.float32)
      if idf.shape != (len(self.tokens),):
        raise ValueError(f"the IDF table has {idf.shape} entries, the vocabulary {vocab_path} "
                         f"{len(self.tokens)} tokens")
      if not np.all(np.isfinite(idf)):
        raise ValueError("the IDF table contains NaN or infinity")
    if max_length < 3:
      raise ValueError(f"max_length={max_length} leaves no room for a word piece")
    self.idf, self.max_length, self.lower_case = idf, int(max_length), lower_case
    if special_ids is None:
      special_ids = idf_lib.special_token_ids(self.tokens)
    self.special_ids = sorted(int(i) for i in special_ids)
    weights = np.ones(len(self.tokens), np.float32) if idf is None else np.maximum(idf, 0.0)
    weights[self.special_ids] = 0.0
    self._weights = weights
    self._tokenizer = idf_lib.wordpiece_tokenizer(self.vocab_path, lower_case=lower_case)
    self.vocab_sha256 = vocab_fingerprint(self.tokens)
    self.idf_sha256 = idf_fingerprint(idf)

  @property
  def vocab_size(self) -> int:
    return len(self.tokens)

  def fingerprint(self) -> Dict[str, Any]:
    """What an index built for this query side records and checks."""
    return {"kind": self.kind, "vocab_size": self.vocab_size, "vocab_sha256": self.vocab_sha256,
            "idf_sha256": self.idf_sha256}

  def _terms(self, ids: Sequence[int]) -> Tuple[np.ndarray, np.ndarray]:
    ids = np.unique(np.asarray(ids[:self.max_length - 2], np.int32))
    weights = self._weights[ids]
    keep = weights > 0
    return ids[keep], weights[keep]

  def encode(self, text: str) -> Tuple[np.ndarray, np.ndarray]:
    """One query -> (term ids [n] int32 ascending, weights [n] float32); n = 0 when the text
    has no known word piece."""
    return self._terms(self._tokenizer.encode(text, add_special_tokens=False).ids)

  def encode_batch(self, texts: Sequence[str]):
    """Queries -> scipy CSR [len(texts), V] float32."""
    import scipy.sparse  # pylint: disable=g-import-not-at-top
    encoded = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
    rows = [self._terms(e.ids) for e in encoded]
    indptr = np.cumsum([0] + [len(ids) for ids, _ in rows])
    indices = np.concatenate([ids for ids, _ in rows]) if rows else np.zeros(0, np.int32)
    data = np.concatenate([w for _, w in rows]) if rows else np.zeros(0, np.float32)
    return scipy.sparse.csr_matrix((data.astype(np.float32), indices.astype(np.int32), indptr),
                                   shape=(len(texts), self.vocab_size))

  # -- on disk ---------------------------------------------------------------------------------

  def save(self, directory) -> None:
    directory = fs.path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(self.tokens) + "\n", encoding="utf-8")
    if self.idf is not None:
      idf_lib.save_idf(directory / "idf.json", self.idf, self.tokens)
    (directory / CONFIG_FILE).write_text(json.dumps(
        dict(self.fingerprint(), max_length=self.max_length, special_ids=self.special_ids,
             lower_case=self.lower_case), indent=2, sort_keys=True))

  @classmethod
  def load(cls, directory) -> "QueryEncoder":
    directory = fs.path(directory)
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
      raise FileNotFoundError(f"{directory}: not a saved query encoder (no {CONFIG_FILE})")
    config = json.loads(config_path.read_text())
    tokens = idf_lib.vocab_tokens(directory / "vocab.txt")
    idf = None
    if config["kind"] == "idf":
      idf = idf_lib.load_idf(directory / "idf.json", tokens)
    encoder = cls(directory / "vocab.txt", idf, config["max_length"], config["special_ids"],
                  config.get("lower_case", True))
    for key in ("vocab_sha256", "idf_sha256"):
      if config.get(key) != getattr(encoder, key):
        raise ValueError(f"{config_path}: {key} does not match the files beside it (vocab.txt / "
                         "idf.json were changed after it was saved)")
    return encoder

  @classmethod
  def from_model(cls, model, params, vocab_path, max_length: int) -> "QueryEncoder":
    """The query side of a `dualenc.sparse.SparseEncoder` with query_encoder 'idf' or 'ones'
    (its trained IDF table from `params`)."""
    if getattr(model, "query_encoder", None) not in KINDS:
      raise ValueError(f"a model-free query side needs query_encoder in {KINDS}; this model's "
                       f"is {getattr(model, 'query_encoder', None)!r} (its queries need the "
                       "model)")
    idf = np.asarray(params["idf"], np.float32) if model.query_encoder == "idf" else None
    # The model's query side always zeroes its special ids (functions.query_weights).
    return cls(vocab_path, idf, max_length, list(model.special_ids))


def check_compatible(index_fingerprint: Dict[str, Any], encoder: QueryEncoder,
                     index_where: str, encoder_where: str) -> None:
  """ValueError when a query side does not fit an index: another vocabulary (token ids mean
  other words) or another IDF table (the documents were trained against other query weights)."""
  if not index_fingerprint:
    return
  if index_fingerprint.get("vocab_sha256") != encoder.vocab_sha256:
    raise ValueError(
        f"{encoder_where}: its vocabulary ({encoder.vocab_size} tokens, sha256 "
        f"{encoder.vocab_sha256[:12]}) is not the one {index_where} was built with "
        f"({index_fingerprint.get('vocab_size')} tokens, sha256 "
        f"{str(index_fingerprint.get('vocab_sha256'))[:12]}): token ids would name other words")
  if index_fingerprint.get("idf_sha256") != encoder.idf_sha256:
    raise ValueError(
        f"{encoder_where}: its IDF table (sha256 {str(encoder.idf_sha256)[:12]}) is not the one "
        f"{index_where} was built with (sha256 {str(index_fingerprint.get('idf_sha256'))[:12]}); "
        "use the query encoder saved with the index")

