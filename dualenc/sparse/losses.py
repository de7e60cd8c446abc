"""The sparse training loss: ranking term + warmed-up FLOPS, as one gin-configurable callable.

  train.train.loss_fn = @dualenc.sparse.SparseLoss()

total = ranking + flops_weight(step, lambda_d, warmup) * flops(document vectors)
              [+ flops_weight(step, lambda_q, warmup) * flops(query vectors), siamese models]

Ranking terms over the step's candidates (`candidates`):
  'in_batch'  every query against the global batch's positives and all hard negatives
              (C = B + B * N; the positive of query i is column i)
  'own'       each query against its own positive and hard negatives (C = 1 + N), the only
              candidates precomputed teacher scores (the data's `teacher_scores`) cover
and `ranking`:
  'in_batch_softmax'  dualenc.losses.in_batch_softmax on dot products (temperature 1)
  'kl'                kl_distillation(student, ensemble of the teachers)
  'margin_mse'        margin_mse(student, ensemble of the teachers)
Teachers (dualenc.sparse.teachers) score the same candidates inside the step; their scores are
combined by ensemble_teacher_scores (per-row min-max, mean, x `teacher_scale`).

Logged each step: ranking_loss, flops_documents, flops_queries, flops_lambda, document_nnz,
query_nnz (mean non-zero terms per vector).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import gin
import jax
import jax.numpy as jnp

from dualenc import losses as dense_losses
from dualenc.sparse import functions
from dualenc.sparse import teachers as teachers_lib

RANKINGS = ("in_batch_softmax", "kl", "margin_mse")
CANDIDATES = ("in_batch", "own")


@gin.configurable(module="dualenc.sparse")
class SparseLoss:
  """See the module docstring. special_ids: tokens teachers ignore (BERT's [PAD] [UNK] [CLS]
  [SEP] [MASK] by default)."""

  def __init__(self, *, ranking: str = "kl", candidates: str = "in_batch",
               teachers: Sequence[Any] = (), teacher_scale: float = 30.0,
               temperature: float = 1.0, flops_lambda_documents: float = 5e-4,
               flops_lambda_queries: float = 0.0, flops_warmup_steps: int = 0,
               special_ids: Tuple[int, ...] = (0, 100, 101, 102, 103)):
    if ranking not in RANKINGS:
      raise ValueError(f"SparseLoss.ranking={ranking!r}; expected one of {RANKINGS}")
    if candidates not in CANDIDATES:
      raise ValueError(f"SparseLoss.candidates={candidates!r}; expected one of {CANDIDATES}")
    if ranking != "in_batch_softmax" and not teachers:
      raise ValueError(f"SparseLoss.ranking={ranking!r} distils teachers: bind "
                       "SparseLoss.teachers (e.g. [@dualenc.sparse.BM25Teacher()])")
    precomputed = [t for t in teachers if isinstance(t, teachers_lib.PrecomputedTeacher)]
    if precomputed and candidates != "own":
      raise ValueError("SparseLoss.teachers includes a PrecomputedTeacher, whose scores cover "
                       "only each query's own positive and hard negatives: set "
                       "SparseLoss.candidates = 'own'")
    self.ranking, self.candidates, self.teachers = ranking, candidates, tuple(teachers)
    self.teacher_scale, self.temperature = teacher_scale, temperature
    self.flops_lambda_documents = flops_lambda_documents
    self.flops_lambda_queries = flops_lambda_queries
    self.flops_warmup_steps = flops_warmup_steps
    self.special_ids = tuple(special_ids)

  def prepare(self, **context) -> Dict[str, Any]:
    """Each teacher's frozen arrays, keyed by position (the trainer replicates them)."""
    return {str(i): t.prepare(**context) for i, t in enumerate(self.teachers)}

  def __call__(self, q, d, *, hard_negatives=None, hard_negative_mask=None, query_ids=None,
               doc_ids=None, step=0, batch=None, frozen=None):
    """q [B, V], d [B, V], hard_negatives [B, N, V] -> (loss, metrics)."""
    documents = d if hard_negatives is None else jnp.concatenate(
        [d, hard_negatives.reshape(-1, d.shape[-1])], axis=0)            # [C, V]
    valid = self._valid_candidates(d.shape[0], hard_negatives, hard_negative_mask)
    if self.ranking == "in_batch_softmax":
      ranking = dense_losses.in_batch_softmax(
          q, d, temperature=1.0, bidirectional=False, hard_negatives=hard_negatives,
          hard_negative_mask=hard_negative_mask, query_ids=query_ids, doc_ids=doc_ids,
          similarity="dot")
    else:
      student = jnp.einsum("bv,cv->bc", q, documents, precision=jax.lax.Precision.HIGHEST)
      teacher = self._teacher_scores(batch, frozen, valid)
      student, teacher, valid = self._select(student, teacher, valid,
                                             0 if hard_negatives is None else
                                             hard_negatives.shape[1])
      ranking = self._rank(student, teacher, valid)
    lam_d = functions.flops_weight(step, self.flops_lambda_documents, self.flops_warmup_steps)
    lam_q = functions.flops_weight(step, self.flops_lambda_queries, self.flops_warmup_steps)
    flops_d = functions.flops(documents)
    flops_q = functions.flops(q)
    total = ranking + lam_d * flops_d + (lam_q * flops_q if self.flops_lambda_queries else 0.0)
    metrics = {"ranking_loss": ranking, "flops_documents": flops_d, "flops_queries": flops_q,
               "flops_lambda": lam_d,
               "document_nnz": jnp.mean(jnp.sum(documents > 0, axis=-1).astype(jnp.float32)),
               "query_nnz": jnp.mean(jnp.sum(q > 0, axis=-1).astype(jnp.float32))}
    return total, metrics

  # -- candidates and teachers -----------------------------------------------------------------

  @staticmethod
  def _valid_candidates(batch_size: int, hard_negatives, hard_negative_mask) -> jax.Array:
    """[B, C] mask: False for absent hard negatives (all-zero token rows)."""
    columns = jnp.ones((batch_size,), bool)
    if hard_negatives is not None:
      absent = (jnp.ones(hard_negatives.shape[:2], bool) if hard_negative_mask is None
                else hard_negative_mask.astype(bool))
      columns = jnp.concatenate([columns, absent.reshape(-1)])
    return jnp.broadcast_to(columns[None, :], (batch_size, columns.shape[0]))

  def _teacher_scores(self, batch, frozen, valid):
    if batch is None:
      raise ValueError("SparseLoss with teachers needs the batch (the trainer passes it)")
    queries = batch["left_encoder_input_tokens"]
    candidates = batch["right_encoder_input_tokens"]
    negatives = batch.get("right_negative_encoder_input_tokens")
    if negatives is not None:
      width = max(candidates.shape[-1], negatives.shape[-1])
      pad = lambda x: jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, width - x.shape[-1])])
      candidates = jnp.concatenate([pad(candidates),
                                    pad(negatives).reshape(-1, width)], axis=0)
    scores = []
    for i, teacher in enumerate(self.teachers):
      if isinstance(teacher, teachers_lib.PrecomputedTeacher):
        scores.append(self._precomputed(batch, teacher, negatives))
      else:
        scores.append(teacher.score(frozen[str(i)], queries, candidates, self.special_ids))
    return scores

  def _precomputed(self, batch, teacher, negatives):
    """The data's scores [B, 1 + N] put in the in-batch layout's own columns (others unused)."""
    given = batch.get("teacher_scores")
    own = 1 + (0 if negatives is None else negatives.shape[1])
    if given is None or given.ndim != 3 or given.shape[-1] != own or (
        teacher.index >= given.shape[1]):
      raise ValueError(
          f"PrecomputedTeacher(index={teacher.index}): the batch's teacher_scores have shape "
          f"{None if given is None else tuple(given.shape)}, expected [batch, >{teacher.index}, "
          f"{own}] (one score for the positive and each of the {own - 1} hard negatives; "
          "check the data's teacher_scores and TASK_FEATURE_LENGTHS['negative_targets'])")
    return ("own", given[:, teacher.index, :])

  def _select(self, student, teacher, valid, num_negatives: int):
    """Students' and teachers' scores over the `candidates` columns, positive in column 0."""
    batch_size = student.shape[0]
    rows = jnp.arange(batch_size)[:, None]
    if self.candidates == "own":
      columns = jnp.concatenate(
          [rows, batch_size + rows * num_negatives + jnp.arange(num_negatives)[None, :]], axis=1)
    else:
      columns = (rows + jnp.arange(student.shape[1])[None, :]) % student.shape[1]
    take = lambda x: jnp.take_along_axis(x, columns, axis=1)
    teacher = [t[1] if isinstance(t, tuple) else take(t) for t in teacher]
    return take(student), teacher, take(valid)

  def _rank(self, student, teacher_scores, valid):
    teacher = teachers_lib.ensemble(teacher_scores, self.teacher_scale, valid)
    very_low = -1e4
    if self.ranking == "kl":
      return functions.kl_distillation(jnp.where(valid, student, very_low),
                                       jnp.where(valid, teacher, very_low), self.temperature)
    weights = valid[:, 1:].astype(jnp.float32)  # margin_mse over the valid negatives only
    margins = (student[:, :1] - student[:, 1:]) - (teacher[:, :1] - teacher[:, 1:])
    return jnp.sum(jnp.square(margins) * weights) / jnp.maximum(jnp.sum(weights), 1.0)
