"""Contrastive losses for dual encoders: pure functions over the embeddings of the global batch.

Notation shared by every docstring here. Inputs: queries `q` [B, D] and their positive documents
`d` [B, D] (row i of each is a pair), optional `hard_negatives` h [B, N, D]. `sim` is cosine
(rows L2-normalised inside the loss, the default) or dot product. With temperature tau:

  S = sim(q, d) / tau                 [B, B]    S[i, j]: query i against document j
  Q = sim(q, q) / tau                 [B, B]    same-tower (query) similarities
  P = sim(d, d) / tau                 [B, B]    same-tower (document) similarities
  H = sim(q, h.reshape(B*N, D)) / tau [B, B*N]  every query against the hard negatives of
                                                every example (pooled across the batch, as in
                                                T5X retrieval)

and lse(...) is the log-sum-exp over all the entries listed.

Global batch: under `jax.jit` with the batch sharded over a mesh axis of type Auto, XLA gathers
what `q @ d.T` needs, so the negatives are the whole global batch with no collective written here.

Numerics: similarities, logits and log-sum-exps are computed in float32 whatever the embedding
dtype (float64 stays float64), so bfloat16 embeddings are safe at tau = 0.01 where logits reach
+-100. Removed (masked) logits are set to a large finite negative: exp underflows to exactly 0
and gradients stay finite. The positive S[i, i] is never removed, so no normaliser is empty.

False negatives (`query_ids`, `doc_ids`: [B] integer ids; `hard_negative_ids`: [B, N]): a
negative whose id equals its anchor's own id is removed from that anchor's normaliser:
Q[i, j] when query_ids[j] == query_ids[i]; P[i, j] when doc_ids[j] == doc_ids[i]; S[i, j] (j != i)
in the query->document term when doc_ids[j] == doc_ids[i]; S[j, i] (j != i) in the
document->query term when query_ids[j] == query_ids[i]; a pooled hard negative (k, n) of anchor i
when hard_negative_ids[k, n] == doc_ids[i]. Q[i, i] and P[i, i] (self-similarities) are never
negatives.

Absent hard negatives (`hard_negative_mask`: [B, N] bool, True = a real negative; None = all
real): pipelines pad examples that have fewer than N hard negatives (e.g. with all-zero rows).
A masked-out h[k, n] is removed from everything it would enter: the pooled H[i, (k, n)] of every
anchor i, GTE's G[i, (k, n)] and triplet's set of anchor k. Loss and gradients are then those of
the batch with that negative deleted, and its own gradient is exactly 0 (finite even for a zero
row under cosine).

`get_loss(name, **hyper_parameters)` binds a loss by name for configuration systems (gin).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Dict, NamedTuple, Optional

import jax
import jax.numpy as jnp

Array = jax.Array
SIMILARITIES = ("cosine", "dot")
# Finite rather than -inf: exp() underflows to exactly 0 and no inf - inf can appear in a gradient.
_REMOVED_LOGIT = -1e9
# Squared-norm floor of the cosine normalisation: a zero embedding gives zero similarities, not NaN.
_MIN_SQUARED_NORM = 1e-12


class _Batch(NamedTuple):
  """Validated inputs cast to the compute dtype and, for cosine, L2-normalised."""
  q: Array  # [B, D]
  d: Array  # [B, D]
  h: Optional[Array]  # [B*N, D], hard negatives of all examples, example-major
  query_ids: Optional[Array]  # [B]
  doc_ids: Optional[Array]  # [B]
  hard_negative_ids: Optional[Array]  # [B*N]
  hard_negative_mask: Optional[Array]  # [B*N] bool, True = a real hard negative
  num_hard_negatives: int  # N (0 without hard negatives)


def _shape_error(loss: str, name: str, expected: str, value: Any) -> ValueError:
  return ValueError(f"{loss}: `{name}` must be {expected}, got shape {tuple(jnp.shape(value))}")


def _check_hyper_parameters(loss: str, temperature: Any = 1.0, similarity: str = "cosine",
                            alpha: Any = 0.0) -> None:
  """Raises ValueError on a bad similarity name, a non-positive temperature or alpha outside [0, 1].

  Traced values (e.g. a learnt temperature) cannot be checked and are let through.
  """
  if similarity not in SIMILARITIES:
    raise ValueError(f"{loss}: similarity must be one of {SIMILARITIES}, got {similarity!r}")
  if isinstance(temperature, (int, float)) and not temperature > 0:
    raise ValueError(f"{loss}: temperature must be > 0, got {temperature}")
  if isinstance(alpha, (int, float)) and not 0 <= alpha <= 1:
    raise ValueError(f"{loss}: alpha must be in [0, 1], got {alpha}")


def _check_ids(loss: str, name: str, ids: Optional[Array], shape: tuple) -> Optional[Array]:
  if ids is None:
    return None
  ids = jnp.asarray(ids)
  if ids.shape != shape:
    raise _shape_error(loss, name, f"of shape {shape}", ids)
  if not jnp.issubdtype(ids.dtype, jnp.integer):
    raise ValueError(f"{loss}: `{name}` must hold integer ids, got dtype {ids.dtype}")
  return ids


def _check_hard_negative_mask(loss: str, mask: Optional[Array], has_hard_negatives: bool,
                              shape: tuple) -> Optional[Array]:
  if mask is None:
    return None
  if not has_hard_negatives:
    raise ValueError(f"{loss}: `hard_negative_mask` given without `hard_negatives`")
  mask = jnp.asarray(mask)
  if mask.shape != shape:
    raise _shape_error(loss, "hard_negative_mask", f"[B, N] = {list(shape)} like `hard_negatives`",
                       mask)
  if mask.dtype != jnp.bool_:
    raise ValueError(f"{loss}: `hard_negative_mask` must be bool (True = a real hard negative), "
                     f"got dtype {mask.dtype}")
  return mask.reshape(-1)


def _prepare(loss: str, q: Array, d: Array, hard_negatives: Optional[Array],
             query_ids: Optional[Array], doc_ids: Optional[Array],
             hard_negative_ids: Optional[Array], similarity: str,
             hard_negative_mask: Optional[Array] = None) -> _Batch:
  """Validates shapes, casts to float32 (at least) and normalises rows for cosine similarity."""
  q, d = jnp.asarray(q), jnp.asarray(d)
  if q.ndim != 2:
    raise _shape_error(loss, "q", "[B, D]", q)
  if d.shape != q.shape:
    raise _shape_error(loss, "d", f"[B, D] = {list(q.shape)} like `q`", d)
  batch, dim = q.shape
  dtype = jnp.promote_types(jnp.promote_types(q.dtype, d.dtype), jnp.float32)

  def prepare_rows(x: Array) -> Array:
    x = x.astype(dtype)
    if similarity == "cosine":
      x = x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), _MIN_SQUARED_NORM))
    return x

  h, num_hard_negatives = None, 0
  if hard_negatives is not None:
    hard_negatives = jnp.asarray(hard_negatives)
    if (hard_negatives.ndim != 3 or hard_negatives.shape[0] != batch
        or hard_negatives.shape[2] != dim):
      raise _shape_error(loss, "hard_negatives", f"[B, N, D] = [{batch}, N, {dim}]", hard_negatives)
    num_hard_negatives = hard_negatives.shape[1]
    h = prepare_rows(hard_negatives.reshape(batch * num_hard_negatives, dim))
  if hard_negative_ids is not None:
    if hard_negatives is None or doc_ids is None:
      raise ValueError(f"{loss}: `hard_negative_ids` needs `hard_negatives` and `doc_ids` (the ids "
                       "of hard negatives are compared with the anchors' positive document ids)")
    hard_negative_ids = _check_ids(loss, "hard_negative_ids", hard_negative_ids,
                                   (batch, num_hard_negatives)).reshape(-1)
  return _Batch(prepare_rows(q), prepare_rows(d), h,
                _check_ids(loss, "query_ids", query_ids, (batch,)),
                _check_ids(loss, "doc_ids", doc_ids, (batch,)),
                hard_negative_ids,
                _check_hard_negative_mask(loss, hard_negative_mask, h is not None,
                                          (batch, num_hard_negatives)),
                num_hard_negatives)


def _sim(a: Array, b: Array) -> Array:
  """[M, D] x [K, D] -> [M, K]; HIGHEST precision because TPUs default to bf16 passes for f32."""
  return jnp.einsum("md,kd->mk", a, b, precision=jax.lax.Precision.HIGHEST)


def _same(ids_a: Optional[Array], ids_b: Optional[Array], shape: tuple) -> Array:
  """[M, K] bool, ids_a[m] == ids_b[k]; all False when either side has no ids."""
  if ids_a is None or ids_b is None:
    return jnp.zeros(shape, bool)
  return ids_a[:, None] == ids_b[None, :]


def _removed_hard_negatives(batch: _Batch) -> Array:
  """[B, B*N] bool: pooled hard negative (k, n) leaves anchor i's normaliser (same id or absent)."""
  b = batch.q.shape[0]
  removed = _same(batch.doc_ids, batch.hard_negative_ids, (b, batch.h.shape[0]))
  if batch.hard_negative_mask is not None:
    removed = removed | ~batch.hard_negative_mask[None, :]
  return removed


def _remove(logits: Array, removed: Array) -> Array:
  return jnp.where(removed, _REMOVED_LOGIT, logits)


def _mean_nll(logit_blocks: list, positive: Array) -> Array:
  """mean_i [ lse(row i of the concatenated blocks) - positive[i] ]; blocks are [B, *]."""
  return jnp.mean(jax.nn.logsumexp(jnp.concatenate(logit_blocks, axis=1), axis=1) - positive)


class _Logits(NamedTuple):
  """The masked logit blocks of a batch (under jit, blocks a loss does not use are not computed)."""
  positive: Array  # [B], S[i, i]
  query_to_doc: Array  # [B, B], S with same-doc-id negatives removed
  query_to_hard: Optional[Array]  # [B, B*N], H without same-doc-id and absent hard negatives
  query_to_query: Array  # [B, B], Q without self and same-query-id entries
  doc_to_query: Array  # [B, B], S^T with same-query-id negatives removed
  doc_to_doc: Array  # [B, B], P without self and same-doc-id entries


def _logits(batch: _Batch, temperature: Any) -> _Logits:
  b = batch.q.shape[0]
  eye = jnp.eye(b, dtype=bool)
  s = _sim(batch.q, batch.d) / temperature
  query_to_hard = None
  if batch.h is not None:
    query_to_hard = _remove(_sim(batch.q, batch.h) / temperature, _removed_hard_negatives(batch))
  same_query = _same(batch.query_ids, batch.query_ids, (b, b))
  same_doc = _same(batch.doc_ids, batch.doc_ids, (b, b))
  return _Logits(
      positive=jnp.diagonal(s),
      query_to_doc=_remove(s, same_doc & ~eye),
      query_to_hard=query_to_hard,
      query_to_query=_remove(_sim(batch.q, batch.q) / temperature, same_query | eye),
      # Row i of S^T is column i of S: document i against every query.
      doc_to_query=_remove(s.T, same_query & ~eye),
      doc_to_doc=_remove(_sim(batch.d, batch.d) / temperature, same_doc | eye))


def _query_to_doc_blocks(logits: _Logits) -> list:
  return [logits.query_to_doc] + ([] if logits.query_to_hard is None else [logits.query_to_hard])


def in_batch_softmax(q: Array, d: Array, *, temperature: Any = 0.01, bidirectional: bool = True,
                     hard_negatives: Optional[Array] = None, query_ids: Optional[Array] = None,
                     doc_ids: Optional[Array] = None, hard_negative_ids: Optional[Array] = None,
                     hard_negative_mask: Optional[Array] = None,
                     similarity: str = "cosine") -> Array:
  """In-batch softmax (InfoNCE) loss, the dual-encoder baseline. Returns a scalar.

  L_qd = mean_i [ lse(S[i, :], H[i, :]) - S[i, i] ]
  L_dq = mean_i [ lse(S[:, i]) - S[i, i] ]
  loss = L_qd + L_dq if bidirectional (summed, as in T5X retrieval and SamToNe) else L_qd.

  Args: q, d [B, D]; hard_negatives [B, N, D] (pooled, q->d only); query_ids, doc_ids [B] and
  hard_negative_ids [B, N] integer ids for false-negative removal (module docstring);
  hard_negative_mask [B, N] bool, True = a real hard negative (None = all real): a False
  h[k, n] leaves H[i, (k, n)] for every i; temperature tau > 0; similarity "cosine" or "dot".
  """
  _check_hyper_parameters("in_batch_softmax", temperature, similarity)
  batch = _prepare("in_batch_softmax", q, d, hard_negatives, query_ids, doc_ids,
                   hard_negative_ids, similarity, hard_negative_mask)
  logits = _logits(batch, temperature)
  loss = _mean_nll(_query_to_doc_blocks(logits), logits.positive)
  if bidirectional:
    loss = loss + _mean_nll([logits.doc_to_query], logits.positive)
  return loss


def samtone(q: Array, d: Array, *, temperature: Any = 0.01, query_side: bool = True,
            doc_side: bool = False, hard_negatives: Optional[Array] = None,
            query_ids: Optional[Array] = None, doc_ids: Optional[Array] = None,
            hard_negative_ids: Optional[Array] = None,
            hard_negative_mask: Optional[Array] = None, similarity: str = "cosine") -> Array:
  """SamToNe: contrastive loss with same-tower negatives (Moiseev et al. 2023). Returns a scalar.

  L_qd^s = mean_i [ lse(S[i, :], H[i, :], Q[i, j != i]) - S[i, i] ]
  L_dq^s = mean_i [ lse(S[:, i], P[i, j != i]) - S[i, i] ]
  loss = (L_qd^s if query_side else L_qd) + (L_dq^s if doc_side else L_dq)

  with L_qd, L_dq as in `in_batch_softmax`. No hyper-parameter beyond tau. Arguments as in
  `in_batch_softmax` (hard_negative_mask removes absent negatives from H).
  """
  _check_hyper_parameters("samtone", temperature, similarity)
  batch = _prepare("samtone", q, d, hard_negatives, query_ids, doc_ids, hard_negative_ids,
                   similarity, hard_negative_mask)
  logits = _logits(batch, temperature)
  query_blocks = _query_to_doc_blocks(logits) + ([logits.query_to_query] if query_side else [])
  doc_blocks = [logits.doc_to_query] + ([logits.doc_to_doc] if doc_side else [])
  return _mean_nll(query_blocks, logits.positive) + _mean_nll(doc_blocks, logits.positive)


def pair(q: Array, d: Array, *, alpha: Any = 0.1, temperature: Any = 0.01,
         bidirectional: bool = True, hard_negatives: Optional[Array] = None,
         query_ids: Optional[Array] = None, doc_ids: Optional[Array] = None,
         hard_negative_ids: Optional[Array] = None,
         hard_negative_mask: Optional[Array] = None, similarity: str = "cosine") -> Array:
  """PAIR: in-batch softmax plus a passage-centric term (Ren et al. 2021). Returns a scalar.

  L_p = mean_i [ lse(S[i, i], P[i, j != i]) - S[i, i] ]
  loss = (1 - alpha) * in_batch_softmax(...) + alpha * L_p,   alpha in [0, 1].

  Arguments as in `in_batch_softmax` (hard_negative_mask removes absent negatives from H);
  `doc_ids` also removes same-id documents from P.
  """
  _check_hyper_parameters("pair", temperature, similarity, alpha)
  batch = _prepare("pair", q, d, hard_negatives, query_ids, doc_ids, hard_negative_ids,
                   similarity, hard_negative_mask)
  logits = _logits(batch, temperature)
  query_centric = _mean_nll(_query_to_doc_blocks(logits), logits.positive)
  if bidirectional:
    query_centric = query_centric + _mean_nll([logits.doc_to_query], logits.positive)
  passage_centric = _mean_nll([logits.positive[:, None], logits.doc_to_doc], logits.positive)
  return (1 - alpha) * query_centric + alpha * passage_centric


def improved_contrastive(q: Array, d: Array, *, temperature: Any = 0.01,
                         hard_negatives: Optional[Array] = None,
                         query_ids: Optional[Array] = None, doc_ids: Optional[Array] = None,
                         hard_negative_ids: Optional[Array] = None,
                         hard_negative_mask: Optional[Array] = None,
                         similarity: str = "cosine") -> Array:
  """GTE's "improved contrastive loss" (Li et al. 2023): one joint normaliser. Returns a scalar.

  G = sim(d, h.reshape(B*N, D)) / tau  [B, B*N], documents against all hard negatives.
  loss = mean_i [ lse(S[i, :], H[i, :], Q[i, j != i], S[:, i], P[i, j != i],
                      G[i, (k, n) with k != i]) - S[i, i] ]

  S[i, i] enters the normaliser twice (from the q->d and d->q sums), as in the paper's Z and
  sentence-transformers' joint MultipleNegativesRankingLoss, so the loss is bounded below by
  log 2. A document is not contrasted with its own hard negatives. Arguments as in
  `in_batch_softmax`; G entries are also removed when hard_negative_ids[k, n] == doc_ids[i], and
  an absent h[k, n] (hard_negative_mask[k, n] False) leaves both H[:, (k, n)] and G[:, (k, n)].
  """
  _check_hyper_parameters("improved_contrastive", temperature, similarity)
  batch = _prepare("improved_contrastive", q, d, hard_negatives, query_ids, doc_ids,
                   hard_negative_ids, similarity, hard_negative_mask)
  logits = _logits(batch, temperature)
  blocks = _query_to_doc_blocks(logits) + [
      logits.query_to_query, logits.doc_to_query, logits.doc_to_doc]
  if batch.h is not None:
    b = batch.q.shape[0]
    owner = jnp.repeat(jnp.arange(b), batch.num_hard_negatives)  # example of each hard negative
    own_or_removed = (jnp.arange(b)[:, None] == owner[None, :]) | _removed_hard_negatives(batch)
    blocks.append(_remove(_sim(batch.d, batch.h) / temperature, own_or_removed))
  return _mean_nll(blocks, logits.positive)


def triplet(q: Array, d: Array, hard_negatives: Optional[Array] = None, *, margin: Any,
            same_tower: bool = False, query_ids: Optional[Array] = None,
            doc_ids: Optional[Array] = None, hard_negative_ids: Optional[Array] = None,
            hard_negative_mask: Optional[Array] = None, similarity: str = "cosine") -> Array:
  """Margin triplet loss on raw similarities (no temperature). Returns a scalar.

  s = sim(q, d) [B, B]; each anchor q_i has negatives n in
    N_i = { h[i, n] : n < N }  (its own hard negatives, not pooled)
          + { q_j : j != i }    (other queries, if same_tower),
  minus those removed by ids (module docstring; h[i, n] when hard_negative_ids[i, n] == doc_ids[i])
  and the absent h[i, n] (hard_negative_mask[i, n] False).
  loss = sum_i sum_{n in N_i} max(0, margin - s[i, i] + sim(q_i, n)) / sum_i |N_i|,
  the mean over all remaining (anchor, negative) triplets (0 when none remains).

  Args: q, d [B, D]; hard_negatives [B, N, D] (may be None only when same_tower); margin in
  similarity units; same_tower: other queries also act as negatives (the SamToNe idea applied
  to triplets, named future work in the paper); ids and hard_negative_mask as in
  `in_batch_softmax`.
  """
  _check_hyper_parameters("triplet", similarity=similarity)
  if hard_negatives is None and not same_tower:
    raise ValueError("triplet: needs `hard_negatives` [B, N, D] or same_tower=True (no negatives)")
  batch = _prepare("triplet", q, d, hard_negatives, query_ids, doc_ids, hard_negative_ids,
                   similarity, hard_negative_mask)
  b = batch.q.shape[0]
  positive = jnp.sum(batch.q * batch.d, axis=-1)
  negatives, valid = [], []
  if batch.h is not None:
    h = batch.h.reshape(b, batch.num_hard_negatives, -1)
    negatives.append(jnp.einsum("bd,bnd->bn", batch.q, h, precision=jax.lax.Precision.HIGHEST))
    removed = jnp.zeros((b, batch.num_hard_negatives), bool)
    if batch.hard_negative_ids is not None:
      removed = batch.hard_negative_ids.reshape(b, -1) == batch.doc_ids[:, None]
    if batch.hard_negative_mask is not None:
      removed = removed | ~batch.hard_negative_mask.reshape(b, -1)
    valid.append(~removed)
  if same_tower:
    negatives.append(_sim(batch.q, batch.q))
    valid.append(~(_same(batch.query_ids, batch.query_ids, (b, b)) | jnp.eye(b, dtype=bool)))
  negatives, valid = jnp.concatenate(negatives, axis=1), jnp.concatenate(valid, axis=1)
  hinge = jnp.where(valid, jax.nn.relu(margin - positive[:, None] + negatives), 0.0)
  return jnp.sum(hinge) / jnp.maximum(jnp.sum(valid), 1)


def contrastive_metrics(q: Array, d: Array, *, similarity: str = "cosine") -> Dict[str, Array]:
  """In-batch retrieval and embedding-space diagnostics of a batch of pairs q, d [B, D], B >= 2.

  With s = sim(q, d) [B, B] and rank_i = 1 + #{j != i : s[i, j] >= s[i, i]} (ties count against
  the positive, so a collapsed encoder scores 1/B, not 1):
    top1_accuracy            mean_i [rank_i == 1]
    mrr                      mean_i 1 / rank_i
    mean_positive_similarity mean_i s[i, i]
    mean_query_similarity    mean_{i != j} sim(q_i, q_j)   (same tower; the paper's Fig. 3 probe)
    mean_doc_similarity      mean_{i != j} sim(d_i, d_j)
  and, on L2-normalised embeddings x, y whatever `similarity` (Wang & Isola 2020, alpha=2, t=2):
    alignment                mean_i ||q_i - d_i||^2
    uniformity_queries       log mean_{i < j} exp(-2 ||q_i - q_j||^2)   (likewise for documents)
  Returns a dict of float32 (float64 for float64 inputs) scalars.
  """
  _check_hyper_parameters("contrastive_metrics", similarity=similarity)
  batch = _prepare("contrastive_metrics", q, d, None, None, None, None, similarity)
  b = batch.q.shape[0]
  if b < 2:
    raise ValueError(f"contrastive_metrics: needs a batch of at least 2 pairs, got {b}")
  eye = jnp.eye(b, dtype=bool)
  s = _sim(batch.q, batch.d)
  positive = jnp.diagonal(s)
  rank = 1 + jnp.sum((s >= positive[:, None]) & ~eye, axis=1)
  off_diagonal_mean = lambda m: jnp.sum(jnp.where(eye, 0.0, m)) / (b * (b - 1))

  unit_batch = batch if similarity == "cosine" else _prepare(
      "contrastive_metrics", q, d, None, None, None, None, "cosine")
  upper = jnp.triu(jnp.ones((b, b), bool), k=1)

  def uniformity(x: Array) -> Array:
    squared_distance = jnp.maximum(2 - 2 * _sim(x, x), 0.0)  # unit rows: |x-y|^2 = 2 - 2 x.y
    log_terms = jnp.where(upper, -2 * squared_distance, -jnp.inf)
    return jax.nn.logsumexp(log_terms) - jnp.log(b * (b - 1) / 2)

  return {
      "top1_accuracy": jnp.mean(rank == 1).astype(s.dtype),
      "mrr": jnp.mean(1.0 / rank).astype(s.dtype),
      "mean_positive_similarity": jnp.mean(positive),
      "mean_query_similarity": off_diagonal_mean(_sim(batch.q, batch.q)),
      "mean_doc_similarity": off_diagonal_mean(_sim(batch.d, batch.d)),
      "alignment": jnp.mean(jnp.sum((unit_batch.q - unit_batch.d) ** 2, axis=-1)),
      "uniformity_queries": uniformity(unit_batch.q),
      "uniformity_docs": uniformity(unit_batch.d),
  }


LOSSES: Dict[str, Callable[..., Array]] = {
    "in_batch_softmax": in_batch_softmax,
    "samtone": samtone,
    "pair": pair,
    "improved_contrastive": improved_contrastive,
    "triplet": triplet,
}
# Supplied per batch by the trainer, never bound as hyper-parameters.
BATCH_ARGUMENTS = ("q", "d", "hard_negatives", "query_ids", "doc_ids", "hard_negative_ids",
                   "hard_negative_mask")


def get_loss(name: str, **hyper_parameters: Any) -> Callable[..., Array]:
  """The loss `name` of LOSSES with its hyper-parameters bound, checked now rather than mid-run.

  Returns loss(q, d, *, hard_negatives=None, query_ids=None, doc_ids=None,
  hard_negative_ids=None, hard_negative_mask=None) -> scalar (the BATCH_ARGUMENTS). Raises
  ValueError naming the loss and the offending hyper-parameter for an unknown name, an unknown
  or missing hyper-parameter or a bad value.
  Example: get_loss("samtone", temperature=0.01, doc_side=True).
  """
  if name not in LOSSES:
    raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
  fn = LOSSES[name]
  parameters = inspect.signature(fn).parameters
  accepted = [p for p in parameters if p not in BATCH_ARGUMENTS]
  for key in hyper_parameters:
    if key not in accepted:
      where = "is supplied per batch" if key in BATCH_ARGUMENTS else "is not a hyper-parameter"
      raise ValueError(f"loss {name!r}: {key!r} {where}; hyper-parameters are {accepted}")
  missing = [p for p in accepted
             if parameters[p].default is inspect.Parameter.empty and p not in hyper_parameters]
  if missing:
    raise ValueError(f"loss {name!r}: missing required hyper-parameter(s) {missing}")
  _check_hyper_parameters(
      name, hyper_parameters.get("temperature", 1.0), hyper_parameters.get("similarity", "cosine"),
      hyper_parameters.get("alpha", 0.0))
  return functools.partial(fn, **hyper_parameters)
