"""Teachers for heterogeneous ensemble distillation, scoring a step's candidates in the step.

Every teacher has `prepare(...) -> arrays` (run once on the host: weights, corpus statistics;
they enter the jitted step as its frozen inputs) and `score(frozen, query_tokens [B, Lq],
candidate_tokens [C, Lc]) -> [B, C]` (pure JAX, traced into the step, no gradient).

| teacher | scores |
|---|---|
| `BM25Teacher` | BM25 (Lucene variant, k1, b) over the training corpus's WordPiece tokens: idf and average length from the corpus (truncated as in training), term frequencies counted from the candidates' token ids |
| `ModelTeacher` | a frozen model's dot products: a dense dualenc checkpoint (DualEncoder), a Hugging Face / sentence-transformers dense model, or a siamese sparse dualenc checkpoint (SparseEncoder) |
| `PrecomputedTeacher` | the data's `teacher_scores` feature (JSONL format): [B, 1 + N] over the query's own positive and hard negatives |

Teachers read the student's token ids, so a neural teacher must share the student's
vocabulary (checked); BM25 works on the same tokens (stated in the README).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional

import gin
import jax
import jax.numpy as jnp
import numpy as np

from dualenc.sparse import functions

PAD_ID = 0


def distinct_terms(token_ids: jax.Array, special_ids) -> jax.Array:
  """[B, L] ids -> [B, L] float mask: 1 at the first occurrence of each non-special token."""
  keep = token_ids != PAD_ID
  for special in special_ids:
    keep = keep & (token_ids != special)
  length = token_ids.shape[-1]
  earlier = jnp.tril(jnp.ones((length, length), bool), k=-1)  # [i, j]: j < i
  repeated = jnp.any((token_ids[:, :, None] == token_ids[:, None, :]) & earlier[None] &
                     keep[:, None, :], axis=-1)
  return (keep & ~repeated).astype(jnp.float32)


@gin.configurable(module="dualenc.sparse")
@dataclasses.dataclass(frozen=True)
class BM25Teacher:
  """BM25 over the training corpus (Lucene's formula, which bm25s's default reproduces):
  sum over distinct query terms of idf_t * tf / (tf + k1 * (1 - b + b * dl / avgdl)), with
  idf_t = ln(1 + (N - df_t + 0.5) / (df_t + 0.5)).

  corpus_split: the split whose corpus gives N, df and avgdl (BEIR tasks share one corpus).
  """

  k1: float = 1.2
  b: float = 0.75
  corpus_split: str = "train"
  name: str = "bm25"

  def prepare(self, *, mixture_or_task_name, feature_lengths, vocabulary) -> Dict[str, Any]:
    from dualenc.sparse import corpus  # pylint: disable=g-import-not-at-top
    token_lists = corpus.training_corpus_tokens(
        mixture_or_task_name, vocabulary, split=self.corpus_split,
        max_tokens=int(feature_lengths["targets"]) - 2)
    return bm25_statistics(token_lists, corpus.vocab_size(vocabulary),
                           corpus.special_ids(vocabulary))

  def score(self, frozen, query_tokens: jax.Array, candidate_tokens: jax.Array,
            special_ids=()) -> jax.Array:
    return bm25_scores(query_tokens, candidate_tokens, frozen["idf"], frozen["avgdl"],
                       special_ids, self.k1, self.b)


def bm25_statistics(token_lists, vocab_size: int, special_ids) -> Dict[str, np.ndarray]:
  """{'idf': [V] float32, 'avgdl': [] float32} of a corpus given as token-id lists (special
  tokens excluded from both)."""
  from dualenc.sparse import idf as idf_lib  # pylint: disable=g-import-not-at-top
  special = set(special_ids)
  lists = [[t for t in tokens if t not in special] for tokens in token_lists]
  lengths = [len(t) for t in lists if t]
  if not lengths:
    raise ValueError("BM25Teacher: the training corpus has no tokens")
  return {"idf": idf_lib.compute_idf(lists, vocab_size, tuple(special)),
          "avgdl": np.float32(np.mean(lengths))}


def bm25_scores(query_tokens, candidate_tokens, idf, avgdl, special_ids=(), k1: float = 1.2,
                b: float = 0.75) -> jax.Array:
  """[B, Lq] query ids x [C, Lc] candidate ids -> [B, C] BM25 scores (see BM25Teacher)."""
  candidate_tokens = jnp.asarray(candidate_tokens, jnp.int32)
  idf = jnp.asarray(idf, jnp.float32)
  valid = candidate_tokens != PAD_ID
  for special in special_ids:
    valid = valid & (candidate_tokens != special)
  vocab = idf.shape[0]
  rows = jnp.arange(candidate_tokens.shape[0])[:, None]
  counts = jnp.zeros((candidate_tokens.shape[0], vocab), jnp.float32).at[
      rows, candidate_tokens].add(valid.astype(jnp.float32))            # [C, V]
  lengths = jnp.sum(valid, axis=-1).astype(jnp.float32)                # [C]
  query_tokens = jnp.asarray(query_tokens, jnp.int32)
  terms = distinct_terms(query_tokens, special_ids)                     # [B, Lq]
  tf = counts[:, query_tokens].transpose(1, 2, 0)                       # [B, Lq, C]
  norm = k1 * (1.0 - b + b * lengths / avgdl)                            # [C]
  per_term = idf[query_tokens][..., None] * tf / (tf + norm[None, None, :])
  return jnp.sum(per_term * terms[..., None], axis=1)


@gin.configurable(module="dualenc.sparse")
class ModelTeacher:
  """A frozen model scoring query x candidate by the dot product of its two towers' outputs.

  Exactly one of:
    checkpoint: a dualenc step directory (MODEL_DIR/checkpoints/<step>) of `model`, the teacher's
      module built in a gin scope, e.g. `ModelTeacher.model = @teacher/towers.DualEncoder()` with
      `teacher/towers.DualEncoder.architecture = 'ade_spl'` (a dense DualEncoder, or a siamese
      sparse.SparseEncoder);
    hf_checkpoint: a Hugging Face / sentence-transformers dense model directory (shared tower).
  """

  def __init__(self, model: Any = None, checkpoint: Optional[str] = None,
               hf_checkpoint: Optional[str] = None, name: str = "model"):
    if bool(checkpoint) == bool(hf_checkpoint):
      raise ValueError(f"ModelTeacher {name!r}: bind exactly one of ModelTeacher.checkpoint (a "
                       "dualenc checkpoint, with ModelTeacher.model) or ModelTeacher.hf_checkpoint")
    if checkpoint and model is None:
      raise ValueError(f"ModelTeacher {name!r}: ModelTeacher.checkpoint needs ModelTeacher.model "
                       "(the teacher's module, e.g. @teacher/towers.DualEncoder())")
    self.model, self.checkpoint, self.hf_checkpoint, self.name = (
        model, checkpoint, hf_checkpoint, name)

  def _load(self):
    from dualenc.evaluation import loading  # pylint: disable=g-import-not-at-top
    if self.hf_checkpoint:
      retrieval_model = loading.from_hf_checkpoint(self.hf_checkpoint)
      return retrieval_model.model, retrieval_model.params
    try:
      return self.model, loading.restore_params(self.model, self.checkpoint)
    except ValueError as e:
      raise ValueError(f"ModelTeacher {self.name!r} (gin binding ModelTeacher.checkpoint="
                       f"{self.checkpoint!r}): {e}") from None

  def prepare(self, *, mixture_or_task_name, feature_lengths, vocabulary) -> Dict[str, Any]:
    del mixture_or_task_name, feature_lengths
    from dualenc.sparse import corpus  # pylint: disable=g-import-not-at-top
    self.model, params = self._load()
    teacher_vocab = self.model.encoder_config.vocab_size
    if teacher_vocab != corpus.vocab_size(vocabulary):
      raise ValueError(f"ModelTeacher {self.name!r}: its vocabulary has {teacher_vocab} entries, "
                       f"the student's {corpus.vocab_size(vocabulary)}; a teacher reads the "
                       "student's token ids, so both must share one vocabulary")
    return {"params": jax.tree.map(np.asarray, params)}

  def score(self, frozen, query_tokens, candidate_tokens, special_ids=()) -> jax.Array:
    del special_ids
    apply = lambda ids, method: self.model.apply(
        {"params": frozen["params"]}, ids, (ids != PAD_ID).astype(jnp.int32), method=method)
    queries = apply(query_tokens, "encode_queries")
    candidates = apply(candidate_tokens, "encode_documents")
    return jax.lax.stop_gradient(
        jnp.einsum("bd,cd->bc", queries, candidates, precision=jax.lax.Precision.HIGHEST))


@gin.configurable(module="dualenc.sparse")
@dataclasses.dataclass(frozen=True)
class PrecomputedTeacher:
  """Scores from the data (`teacher_scores` [B, T, 1 + N]: JSONL records' `teacher_scores`),
  over each query's own positive and hard negatives; `index` picks the teacher."""

  index: int = 0
  name: str = "precomputed"

  def prepare(self, **unused) -> Dict[str, Any]:
    del unused
    return {}


def ensemble(scores, scale: float, valid: Optional[jax.Array] = None) -> jax.Array:
  """`functions.ensemble_teacher_scores` over the valid columns only ([B, C] mask): invalid
  columns take their row's valid minimum first, so they never widen the min-max range."""
  if valid is not None:
    scores = [jnp.where(valid, s, jnp.min(jnp.where(valid, s, jnp.inf), axis=-1,
                                          keepdims=True)) for s in scores]
  return functions.ensemble_teacher_scores(scores, scale)
