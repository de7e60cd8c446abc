"""Retrieval metrics through `pytrec_eval` (trec_eval), TREC run files and metrics JSON.

Metric names dualenc reports and the trec_eval measure behind each:

| name         | trec_eval measure | meaning                                                        |
|--------------|-------------------|----------------------------------------------------------------|
| `p@1`        | `P_1`             | is the top-1 result relevant (grade > 0)                       |
| `mrr@10`     | `recip_rank`      | 1 / rank of the first relevant result within the top 10, else 0 |
| `ndcg@10`    | `ndcg_cut_10`     | sum_{r<=10} g_r / log2(r + 1), over the same for the ideal      |
|              |                   | ordering of all judged documents; gain g = the qrels grade      |
| `recall@k`   | `recall_k`        | relevant results in the top k / relevant judged documents      |
| `map`        | `map`             | mean of precision at each relevant result's rank, over all      |
|              |                   | relevant judged documents, for the retrieved depth (top_k)      |

trec_eval's `recip_rank` has no cut-off, so `mrr@10` is `recip_rank` of the run truncated to
its top 10 (`truncate_run`). Truncation ranks as trec_eval does: score descending, ties by
document id descending (string order), so a cut never changes which documents trec_eval
would have ranked first.

Every value is a per-query mean over the queries that have qrels and appear in the run
(trec_eval's default averaging); `macro_average` then averages tasks with equal weight.
"""

from __future__ import annotations

import json
import math
from typing import Dict, Mapping, Optional, Sequence, Tuple

import pytrec_eval

from dualenc import fs

Qrels = Mapping[str, Mapping[str, int]]
Run = Mapping[str, Mapping[str, float]]
Metrics = Dict[str, float]

MRR_DEPTH = 10
# dualenc name -> (trec_eval measure, run depth it is computed on; None = whole run).
MEASURES: Dict[str, Tuple[str, Optional[int]]] = {
    "p@1": ("P_1", None),
    "mrr@10": ("recip_rank", MRR_DEPTH),
    "ndcg@10": ("ndcg_cut_10", None),
    "recall@1": ("recall_1", None),
    "recall@10": ("recall_10", None),
    "recall@100": ("recall_100", None),
    "map": ("map", None),
}
METRIC_NAMES: Tuple[str, ...] = tuple(MEASURES)


def ranked(docs: Mapping[str, float]) -> list:
  """[(doc id, score)] in trec_eval's order: score descending, ties by doc id descending."""
  return sorted(docs.items(), key=lambda item: (item[1], item[0]), reverse=True)


def truncate_run(run: Run, depth: int) -> Dict[str, Dict[str, float]]:
  """Each query's `depth` best documents, chosen in trec_eval's ranking order."""
  return {qid: dict(ranked(docs)[:depth]) for qid, docs in run.items()}


def _check_inputs(qrels: Qrels, run: Run) -> None:
  for qid, judged in qrels.items():
    for did, grade in judged.items():
      if not isinstance(grade, int) or isinstance(grade, bool):
        raise TypeError(f"qrels[{qid!r}][{did!r}] = {grade!r}: grades must be int")
  for qid, docs in run.items():
    for did, score in docs.items():
      if not isinstance(score, float) or not math.isfinite(score):
        raise ValueError(f"run[{qid!r}][{did!r}] = {score!r}: scores must be finite floats")


def evaluate_run(qrels: Qrels, run: Run,
                 metrics: Sequence[str] = METRIC_NAMES) -> Tuple[Metrics, Dict[str, Metrics]]:
  """(mean over queries, per query) of `metrics` for a run against qrels, via pytrec_eval.

  Args:
    qrels: {query id: {doc id: int grade}}; grade <= 0 is judged non-relevant.
    run: {query id: {doc id: float score}}, higher is better; any depth.
    metrics: names from METRIC_NAMES.
  Returns:
    ({metric: mean}, {query id: {metric: value}}). Queries absent from qrels or from the run
    are not evaluated (trec_eval's default); the means are over the evaluated queries, and
    NaN when there are none.
  """
  unknown = [m for m in metrics if m not in MEASURES]
  if unknown:
    raise ValueError(f"unknown metric(s) {unknown}; known: {list(METRIC_NAMES)}")
  _check_inputs(qrels, run)
  per_query: Dict[str, Metrics] = {}
  by_depth: Dict[Optional[int], list] = {}
  for name in metrics:
    by_depth.setdefault(MEASURES[name][1], []).append(name)
  for depth, names in by_depth.items():
    measures = {MEASURES[n][0] for n in names}
    evaluator = pytrec_eval.RelevanceEvaluator(dict(qrels), measures)
    results = evaluator.evaluate(dict(run) if depth is None else truncate_run(run, depth))
    for qid, values in results.items():
      per_query.setdefault(qid, {}).update({n: float(values[MEASURES[n][0]]) for n in names})
  means = {n: (sum(v[n] for v in per_query.values()) / len(per_query) if per_query
               else float("nan")) for n in metrics}
  return means, dict(sorted(per_query.items()))


def macro_average(per_task: Mapping[str, Mapping[str, float]]) -> Metrics:
  """Unweighted mean over tasks of each metric that every task reports."""
  if not per_task:
    raise ValueError("macro_average of no tasks")
  common = set.intersection(*(set(m) for m in per_task.values()))
  names = [n for n in next(iter(per_task.values())) if n in common]
  return {n: sum(m[n] for m in per_task.values()) / len(per_task) for n in names}


def write_trec_run(path, run: Run, tag: str = "dualenc") -> None:
  """TREC run file: `qid Q0 docid rank score tag`, ranks from 1 in trec_eval's order."""
  path = fs.path(path)
  for name in [tag] + [d for docs in run.values() for d in docs] + list(run):
    if any(c.isspace() for c in name) or not name:
      raise ValueError(f"{path}: id or tag {name!r} is empty or contains whitespace; a TREC "
                       "run file cannot hold it")
  lines = [f"{qid} Q0 {did} {rank} {score!r} {tag}\n"  # repr: exact round trip
           for qid, docs in run.items() for rank, (did, score) in enumerate(ranked(docs), 1)]
  fs.write_text(path, "".join(lines))


def read_trec_run(path) -> Dict[str, Dict[str, float]]:
  """Inverse of `write_trec_run` (any whitespace-separated six-column TREC run file)."""
  run: Dict[str, Dict[str, float]] = {}
  with fs.path(path).open("r") as f:
    for line_number, line in enumerate(f, start=1):
      fields = line.split()
      if not fields:
        continue
      if len(fields) != 6:
        raise ValueError(f"{path}:{line_number}: expected 6 fields (qid Q0 docid rank score "
                         f"tag), got {len(fields)}")
      run.setdefault(fields[0], {})[fields[2]] = float(fields[4])
  return run


def write_json(path, payload: Mapping) -> None:
  """Pretty, key-sorted JSON written atomically (NaN written as null)."""
  fs.write_text(path, json.dumps(_nan_to_none(payload), indent=2, sort_keys=True) + "\n")


def _nan_to_none(value):
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, Mapping):
    return {k: _nan_to_none(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_nan_to_none(v) for v in value]
  return value
