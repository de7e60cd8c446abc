"""Retrieval evaluation of a model on one task (`evaluate_retrieval`) or a mixture
(`evaluate_tasks`, also the trainer's periodic-evaluation hook).

One task: encode the corpus with the document tower and the judged queries with the query
tower (cached when a cache_dir is given), search top_k (exact or ScaNN), score the run with
trec_eval (`metrics.evaluate_run`), and optionally write `metrics.json`, `run.trec`,
`per_query.json` and a saved index.

Bad input (see `check_eval_data`):
  empty corpus, duplicate document ids, no judged query left  -> ValueError
  queries without qrels             -> counted warning; not searched, not averaged
  qrels naming an unknown query     -> counted warning; those judgements are unused
  qrels naming an unknown document  -> counted warning; kept, as trec_eval would: the
                                       document counts as relevant but can never be retrieved,
                                       so recall and NDCG are lower. (The BEIR reader already
                                       refuses such rows by default, naming file and line.)
  queries whose judgements are all grade <= 0 -> counted warning; scored 0 as by trec_eval.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import gin
import jax
import numpy as np

from dualenc import fs
from dualenc.evaluation import encode
from dualenc.evaluation import loading
from dualenc.evaluation import metrics as metrics_lib
from dualenc.evaluation import search

log = logging.getLogger(__name__)

MACRO_AVERAGE = "macro_average"


@gin.configurable(module="dualenc.evaluation")
@dataclasses.dataclass(frozen=True)
class RetrievalOptions:
  """searcher: 'exact' or 'scann' (dense), 'exact' (an inverted index) or 'seismic' (sparse);
  top_k: run depth (MAP and recall@100 need >= 100); drop_self_hits: BEIR's ArguAna/Quora
  convention (drop a hit whose id is the query's); query_latency: time every query through a
  model-free query path (inference-free sparse models) into query_ms_p50/p99."""

  searcher: str = "exact"
  top_k: int = 100
  drop_self_hits: bool = False
  query_latency: bool = True

  def __post_init__(self):
    if self.searcher not in search.SEARCHERS:
      raise ValueError(f"RetrievalOptions.searcher={self.searcher!r}; expected one of "
                       f"{search.SEARCHERS}")
    if self.top_k < 1:
      raise ValueError(f"RetrievalOptions.top_k={self.top_k} must be >= 1")


@dataclasses.dataclass
class TaskResult:
  name: str
  metrics: Dict[str, float]
  per_query: Dict[str, Dict[str, float]]
  run: Dict[str, Dict[str, float]]
  counts: Dict[str, int]
  seconds: Dict[str, float]
  efficiency: Dict[str, float] = dataclasses.field(default_factory=dict)


def sparsity(query_vectors, doc_vectors) -> Dict[str, float]:
  """Sparse vectors' efficiency figures: mean non-zeros per query and per document, and
  FLOPS = sum_t p_q(t) * p_d(t), p the fraction of queries / documents with a non-zero weight
  on term t (the definition of SPLADE, OpenSearch and sentence-transformers)."""
  import scipy.sparse  # pylint: disable=g-import-not-at-top
  q, d = (scipy.sparse.csr_matrix(x) for x in (query_vectors, doc_vectors))
  q.eliminate_zeros()
  d.eliminate_zeros()
  p_q = np.bincount(q.indices, minlength=q.shape[1]) / max(q.shape[0], 1)
  p_d = np.bincount(d.indices, minlength=d.shape[1]) / max(d.shape[0], 1)
  return {"query_nnz": float(q.nnz / max(q.shape[0], 1)),
          "doc_nnz": float(d.nnz / max(d.shape[0], 1)), "flops": float(np.dot(p_q, p_d))}


@dataclasses.dataclass
class CheckedData:
  doc_ids: List[str]
  doc_texts: List[str]
  query_ids: List[str]
  query_texts: List[str]
  qrels: Dict[str, Dict[str, int]]
  counts: Dict[str, int]


def check_eval_data(data, name: str = "") -> CheckedData:
  """Validates an EvalData-like object (corpus_ids/texts, query_ids/texts, qrels).

  Raises ValueError for an empty corpus, duplicate ids, or no judged queries; counts and logs
  the recoverable problems listed in the module docstring.
  """
  where = f"{name}: " if name else ""
  doc_ids, doc_texts = [str(d) for d in data.corpus_ids], list(data.corpus_texts)
  query_ids, query_texts = [str(q) for q in data.query_ids], list(data.query_texts)
  if len(doc_ids) != len(doc_texts) or len(query_ids) != len(query_texts):
    raise ValueError(f"{where}ids and texts differ in length")
  if not doc_ids:
    raise ValueError(f"{where}the corpus is empty: nothing to retrieve")
  for what, ids in (("document", doc_ids), ("query", query_ids)):
    if len(set(ids)) != len(ids):
      duplicate = next(i for i, n in collections.Counter(ids).items() if n > 1)
      raise ValueError(f"{where}duplicate {what} id {duplicate!r}")
  qrels = {str(q): {str(d): int(g) for d, g in judged.items()} for q, judged in
           data.qrels.items()}
  known_docs, known_queries = set(doc_ids), set(query_ids)
  counts = {
      "documents": len(doc_ids),
      "queries_without_qrels": sum(q not in qrels for q in query_ids),
      "qrels_unknown_queries": sum(q not in known_queries for q in qrels),
      "qrels_unknown_documents": sum(d not in known_docs for q in qrels if q in known_queries
                                     for d in qrels[q]),
      "queries_without_relevant": sum(q in qrels and max(qrels[q].values(), default=0) <= 0
                                      for q in query_ids),
      "skipped_records": len(getattr(data, "skipped", []) or []),
  }
  keep = [i for i, q in enumerate(query_ids) if q in qrels]
  if not keep:
    raise ValueError(f"{where}no query has qrels: nothing to evaluate ({len(query_ids)} "
                     f"queries, qrels for {len(qrels)} query ids)")
  counts["queries"] = len(keep)
  messages = {
      "queries_without_qrels": "queries have no qrels; skipped",
      "qrels_unknown_queries": "qrels query ids are not among the queries; ignored",
      "qrels_unknown_documents": "qrels rows name documents absent from the corpus; kept as "
                                 "relevant but unretrievable (lower recall/NDCG)",
      "queries_without_relevant": "queries have no judgement with grade > 0; they score 0",
      "skipped_records": "bad records were skipped by the reader (on_bad_record='warn')",
  }
  for key, message in messages.items():
    if counts[key]:
      log.warning("%s%d %s", where, counts[key], message)
  return CheckedData(doc_ids, doc_texts, [query_ids[i] for i in keep],
                     [query_texts[i] for i in keep],
                     {q: j for q, j in qrels.items() if q in known_queries}, counts)


class ModelEncoders:
  """The two jitted towers of a RetrievalModel, built once and reused across tasks."""

  def __init__(self, retrieval_model: loading.RetrievalModel, mesh=None,
               options: Optional[encode.EncodeOptions] = None):
    self.retrieval_model = retrieval_model
    self.options = options or encode.EncodeOptions()
    self.towers = {side: encode.TowerEncoder(retrieval_model.model, retrieval_model.params,
                                             side, mesh) for side in encode.SIDES}

  def settings(self) -> Dict[str, Any]:
    """How texts become embeddings: the maximum tokens per tower and the compute dtype
    (recorded in metrics.json: evaluations of one checkpoint agree only under equal settings)."""
    model = self.retrieval_model
    return {"query_max_length": model.query_tokenizer.max_length,
            "document_max_length": model.document_tokenizer.max_length,
            "dtype": str(model.model.encoder_config.dtype)}

  def encode(self, side: str, ids: Sequence[str], texts: Sequence[str], *,
             cache_dir=None, cache_name: str = "") -> np.ndarray:
    tokenizer = self.retrieval_model.tokenizer(side)
    fingerprint = self.retrieval_model.fingerprint
    if fingerprint is not None:
      fingerprint = dict(fingerprint, side=side, max_length=tokenizer.max_length)
    return encode.cached_encode(
        cache_dir, cache_name or side, fingerprint, ids, texts,
        lambda: encode.encode_texts(self.towers[side], tokenizer, texts, self.options,
                                    description=f"{cache_name or side}"))


def model_free_query_encoder(retrieval_model: loading.RetrievalModel):
  """The NumPy query side (dualenc.sparse.query.QueryEncoder) of an inference-free sparse
  model (query_encoder 'idf' or 'ones'); None for dense and siamese models."""
  model = retrieval_model.model
  if getattr(model, "architecture", None) != "sparse" or model.query_encoder == "mlm":
    return None
  from dualenc.sparse import corpus  # pylint: disable=g-import-not-at-top
  from dualenc.sparse import query as query_lib  # pylint: disable=g-import-not-at-top
  tokenizer = retrieval_model.query_tokenizer
  vocab_path = corpus._vocab_path(tokenizer.vocabulary)  # pylint: disable=protected-access
  return query_lib.QueryEncoder.from_model(model, retrieval_model.params, vocab_path,
                                          tokenizer.max_length)


def index_bytes(searcher) -> int:
  """Bytes of the searcher's index as `Index.save` writes it (vectors, postings, codebooks)."""
  import tempfile  # pylint: disable=g-import-not-at-top
  from dualenc import index as index_lib  # pylint: disable=g-import-not-at-top
  from dualenc.sparse import index as sparse_index  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as tmp:
    index_lib.write_searcher(searcher, fs.path(tmp))
    return sparse_index.directory_bytes(tmp)


def evaluate_retrieval(encoders: ModelEncoders, data, *, name: str = "task",
                       options: Optional[RetrievalOptions] = None,
                       scann_config: Optional[search.ScannConfig] = None,
                       cache_dir=None, output_dir=None, index_dir=None,
                       seismic_config=None) -> TaskResult:
  """Evaluates one retrieval problem (an EvalData) end to end; see the module docstring.

  Args:
    encoders: the model's towers (`ModelEncoders`).
    data: corpus_ids/texts, query_ids/texts, qrels (e.g. `registry.eval_data(task, split)`).
    cache_dir: embedding cache (`<cache_dir>/<name>.{document,query}.npy`); None: no cache.
    output_dir: where metrics.json, run.trec and per_query.json go; None: nothing written.
    index_dir: save the search index there (with doc ids, texts and the model's source).
  """
  options = options or RetrievalOptions()
  checked = check_eval_data(data, name)
  seconds = {}
  start = time.perf_counter()
  doc_embeddings = encoders.encode("document", checked.doc_ids, checked.doc_texts,
                                   cache_dir=cache_dir, cache_name=f"{name}.document")
  # Inference-free sparse models are evaluated through the query path they are served with:
  # tokenizer + IDF table in NumPy (equal to the model's query tower: tests/test_sparse_search.py).
  query_encoder = model_free_query_encoder(encoders.retrieval_model)
  if query_encoder is not None:
    query_embeddings = query_encoder.encode_batch(checked.query_texts)
  else:
    query_embeddings = encoders.encode("query", checked.query_ids, checked.query_texts,
                                       cache_dir=cache_dir, cache_name=f"{name}.query")
  seconds["encode"] = time.perf_counter() - start
  start = time.perf_counter()
  searcher = search.make_searcher(options.searcher, doc_embeddings,
                                  options.top_k + options.drop_self_hits, scann_config,
                                  seismic_config)
  seconds["index"] = time.perf_counter() - start
  start = time.perf_counter()
  run = search.retrieve(searcher, query_embeddings, checked.query_ids, checked.doc_ids,
                        options.top_k, drop_self_hits=options.drop_self_hits)
  seconds["search"] = time.perf_counter() - start
  means, per_query = metrics_lib.evaluate_run(checked.qrels, run)
  import scipy.sparse  # pylint: disable=g-import-not-at-top
  efficiency = {}
  if scipy.sparse.issparse(doc_embeddings):
    efficiency = dict(sparsity(query_embeddings, doc_embeddings), index_bytes=index_bytes(searcher))
  if query_encoder is not None and options.query_latency:
    from dualenc import latency  # pylint: disable=g-import-not-at-top
    depth = options.top_k + options.drop_self_hits
    efficiency.update(latency.measure(
        lambda text: searcher.search_one(*query_encoder.encode(text), depth),
        checked.query_texts))
  result = TaskResult(name, means, per_query, run, checked.counts, seconds, efficiency)
  if index_dir is not None and jax.process_index() == 0:
    search.Index(searcher, checked.doc_ids, checked.doc_texts,
                 metadata={"model": encoders.retrieval_model.source, "task": name},
                 query_encoder=query_encoder).save(index_dir)
  if output_dir is not None and jax.process_index() == 0:
    settings = dict(encoders.settings())
    if query_encoder is not None:
      settings["query_path"] = (f"model-free: WordPiece tokenizer + {query_encoder.kind} table "
                                "(NumPy), one query at a time, one thread")
    write_task_outputs(result, output_dir, options, getattr(searcher, "settings", {}), settings)
  return result


def write_task_outputs(result: TaskResult, output_dir, options: RetrievalOptions,
                       searcher_settings: Mapping[str, Any],
                       encode_settings: Mapping[str, Any]) -> None:
  """metrics.json (metrics at the top level, plus counts and settings: searcher, lengths,
  dtype), run.trec, per_query.json."""
  output_dir = fs.path(output_dir)
  payload = dict(result.metrics, **result.efficiency)
  payload.update(task=result.name, num_queries=result.counts["queries"],
                 counts=result.counts, seconds=result.seconds,
                 settings={**dataclasses.asdict(options), **encode_settings,
                           "searcher_settings": dict(searcher_settings)})
  metrics_lib.write_json(output_dir / "metrics.json", payload)
  metrics_lib.write_json(output_dir / "per_query.json", result.per_query)
  metrics_lib.write_trec_run(output_dir / "run.trec", result.run, tag=f"dualenc-{result.name}")


# ---------------------------------------------------------------------------------------------
# Tasks and mixtures.


def leaf_task_names(mixture_or_task_names: Union[str, Sequence[str]]) -> List[str]:
  """Registered seqio task names under the given tasks and/or mixtures (mixtures expanded)."""
  import seqio  # pylint: disable=g-import-not-at-top
  names = [mixture_or_task_names] if isinstance(mixture_or_task_names, str) else list(
      mixture_or_task_names)
  out: List[str] = []
  for name in names:
    try:
      provider = seqio.get_mixture_or_task(name)
    except ValueError as e:
      raise ValueError(f"no seqio task or mixture named {name!r} (import `tasks` or "
                       f"register_dataset(...) first): {e}") from None
    leaves = [t.name for t in provider.tasks] if isinstance(provider, seqio.Mixture) else [name]
    out.extend(n for n in leaves if n not in out)
  return out


def task_vocabulary(task_name: str):
  import seqio  # pylint: disable=g-import-not-at-top
  return seqio.get_mixture_or_task(task_name).output_features["inputs"].vocabulary


def evaluate_tasks(model, params, mixture_or_task_names: Union[str, Sequence[str]], *,
                   feature_lengths: Mapping[str, int], split: str = "test",
                   vocabulary=None, mesh=None,
                   options: Optional[RetrievalOptions] = None,
                   scann_config: Optional[search.ScannConfig] = None,
                   encode_options: Optional[encode.EncodeOptions] = None,
                   output_dir=None, cache_dir=None,
                   encoders: Optional[ModelEncoders] = None, index_dir=None,
                   ) -> Dict[str, Dict[str, float]]:
  """Evaluates a DualEncoder on every task of the given tasks/mixtures; the trainer's hook.

  Args:
    model: the DualEncoder (as trained).
    params: its params (jax.Arrays as the trainer holds them, or NumPy).
    mixture_or_task_names: registered seqio task or mixture name(s); mixtures are expanded.
    feature_lengths: {'inputs': Lq, 'targets': Ld}: TASK_FEATURE_LENGTHS of training.
    split: the split whose qrels are evaluated.
    vocabulary: seqio vocabulary; default the first task's registered one (what training used).
    output_dir: per task `<output_dir>/<task>/{metrics.json,run.trec,per_query.json}`, and
      `<output_dir>/metrics.json` with every task and the macro average.
    cache_dir: embedding cache; leave None during training (params change every call).
    encoders: prepared towers (the CLI's, or reused across calls with the same params); then
      model, params, vocabulary and mesh are unused.
    index_dir: save the task's index there; with several tasks, each under `<index_dir>/<task>`.
  Returns:
    {task: {metric: value}, ..., 'macro_average': {metric: value}} (unweighted over tasks).
  """
  from dualenc.data import registry  # pylint: disable=g-import-not-at-top
  tasks = leaf_task_names(mixture_or_task_names)
  if encoders is None:
    retrieval_model = loading.from_dualenc_checkpoint(
        model, None, vocabulary or task_vocabulary(tasks[0]), feature_lengths, params=params)
    encoders = ModelEncoders(retrieval_model, mesh, encode_options)
  results: Dict[str, Dict[str, float]] = {}
  for task in tasks:
    task_dir = fs.path(output_dir) / task if output_dir is not None else None
    task_index = None
    if index_dir:
      task_index = fs.path(index_dir) / task if len(tasks) > 1 else fs.path(index_dir)
    result = evaluate_retrieval(encoders, registry.eval_data(task, split), name=task,
                                options=options, scann_config=scann_config,
                                cache_dir=cache_dir, output_dir=task_dir, index_dir=task_index)
    results[task] = result.metrics
  results[MACRO_AVERAGE] = metrics_lib.macro_average(results)
  if output_dir is not None and jax.process_index() == 0:
    metrics_lib.write_json(fs.path(output_dir) / "metrics.json",
                           {"split": split, "tasks": {t: results[t] for t in tasks},
                            MACRO_AVERAGE: results[MACRO_AVERAGE]})
  return results


def flatten_for_logging(results: Mapping[str, Mapping[str, float]],
                        prefix: str = "eval") -> Dict[str, float]:
  """{task: {metric: v}} -> {'eval/<task>/<metric>': v} for TensorBoard and metrics.jsonl."""
  return {f"{prefix}/{task}/{name}": float(value) for task, values in results.items()
          for name, value in values.items()}
