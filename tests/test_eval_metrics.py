"""Metrics equal trec_eval's (pytrec_eval called directly) and an independent NumPy computation."""

import math

import numpy as np
import pytest
import pytrec_eval

from dualenc.evaluation import metrics

# Graded qrels; d9 is relevant but never retrieved; q4 has no relevant document; q_unrun is
# judged but absent from the run; q_unjudged is in the run but has no qrels.
QRELS = {
    "q1": {"d1": 2, "d2": 1, "d3": 0, "d9": 1},
    "q2": {"d4": 1},
    "q3": {"d5": 3, "d6": 1},
    "q4": {"d7": 0},
    "q_unrun": {"d1": 1},
}
RUN = {
    # d1, d2, d8 tie at 0.5: trec_eval orders ties by doc id descending -> d8, d2, d1.
    "q1": {"d3": 0.9, "d1": 0.5, "d2": 0.5, "d8": 0.5, "d0": 0.1},
    # the only relevant document is 11th: recip_rank 1/11 uncut, 0 within the top 10.
    "q2": {**{f"x{i:02d}": 1.0 - i / 100 for i in range(10)}, "d4": 0.5, "x99": 0.1},
    # tie between the grade-3 and the grade-1 document: d6 > d5, so d6 ranks first.
    "q3": {"d6": 0.8, "d5": 0.8, "d0": 0.7},
    "q4": {"d7": 0.3, "d1": 0.2},
    "q_unjudged": {"d1": 0.9},
}


def trec_order(docs):
  return [d for d, _ in sorted(docs.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)]


def numpy_ndcg10(qrels, docs):
  ranking = trec_order(docs)[:10]
  gains = np.array([max(qrels.get(d, 0), 0) for d in ranking], np.float64)
  dcg = np.sum(gains / np.log2(np.arange(2, len(gains) + 2)))
  ideal = np.sort(np.array([g for g in qrels.values() if g > 0], np.float64))[::-1][:10]
  idcg = np.sum(ideal / np.log2(np.arange(2, len(ideal) + 2)))
  return dcg / idcg if idcg > 0 else 0.0


def numpy_mrr10(qrels, docs):
  for rank, d in enumerate(trec_order(docs)[:10], start=1):
    if qrels.get(d, 0) > 0:
      return 1.0 / rank
  return 0.0


def test_metrics_equal_pytrec_eval_called_directly():
  means, per_query = metrics.evaluate_run(QRELS, RUN)
  assert sorted(per_query) == ["q1", "q2", "q3", "q4"]
  direct = pytrec_eval.RelevanceEvaluator(
      QRELS, {"P_1", "ndcg_cut_10", "recall_1", "recall_10", "recall_100", "map"}).evaluate(RUN)
  names = {"p@1": "P_1", "ndcg@10": "ndcg_cut_10", "recall@1": "recall_1",
           "recall@10": "recall_10", "recall@100": "recall_100", "map": "map"}
  for qid in per_query:
    for ours, theirs in names.items():
      assert per_query[qid][ours] == pytest.approx(direct[qid][theirs], abs=1e-12), (qid, ours)
  for ours, theirs in names.items():
    assert means[ours] == pytest.approx(np.mean([direct[q][theirs] for q in direct]), abs=1e-12)


def test_mrr10_is_recip_rank_of_the_run_cut_at_10():
  _, per_query = metrics.evaluate_run(QRELS, RUN)
  uncut = pytrec_eval.RelevanceEvaluator(QRELS, {"recip_rank"}).evaluate(RUN)
  assert uncut["q2"]["recip_rank"] == pytest.approx(1 / 11)
  assert per_query["q2"]["mrr@10"] == 0.0  # the cut is what makes it MRR@10
  cut_by_hand = {q: dict((d, RUN[q][d]) for d in trec_order(RUN[q])[:10]) for q in RUN}
  direct = pytrec_eval.RelevanceEvaluator(QRELS, {"recip_rank"}).evaluate(cut_by_hand)
  for qid in per_query:
    assert per_query[qid]["mrr@10"] == pytest.approx(direct[qid]["recip_rank"], abs=1e-12)


def test_ndcg_and_mrr_equal_an_independent_numpy_computation():
  _, per_query = metrics.evaluate_run(QRELS, RUN)
  for qid in ("q1", "q2", "q3", "q4"):
    assert per_query[qid]["ndcg@10"] == pytest.approx(numpy_ndcg10(QRELS[qid], RUN[qid]),
                                                      abs=1e-12)
    assert per_query[qid]["mrr@10"] == pytest.approx(numpy_mrr10(QRELS[qid], RUN[qid]),
                                                     abs=1e-12)
  # Spelled out for q1 (ranking d3 d8 d2 d1 d0; grades 0 0 1 2 0; ideal 2 1 1):
  dcg = 1 / math.log2(4) + 2 / math.log2(5)
  idcg = 2 + 1 / math.log2(3) + 1 / math.log2(4)
  assert per_query["q1"]["ndcg@10"] == pytest.approx(dcg / idcg, abs=1e-12)
  assert per_query["q1"]["mrr@10"] == pytest.approx(1 / 3)
  assert per_query["q3"]["p@1"] == 1.0 and per_query["q1"]["p@1"] == 0.0


def test_truncation_and_run_file_follow_trec_eval_order(tmp_path):
  assert list(metrics.truncate_run(RUN, 3)["q1"]) == ["d3", "d8", "d2"]
  path = tmp_path / "run.trec"
  metrics.write_trec_run(path, RUN, tag="t")
  lines = [l.split() for l in path.read_text().splitlines()]
  q1 = [f for f in lines if f[0] == "q1"]
  assert [f[2] for f in q1] == ["d3", "d8", "d2", "d1", "d0"]
  assert [int(f[3]) for f in q1] == [1, 2, 3, 4, 5]
  assert metrics.read_trec_run(path) == RUN  # scores round-trip exactly
  assert metrics.evaluate_run(QRELS, metrics.read_trec_run(path)) == metrics.evaluate_run(
      QRELS, RUN)


def test_macro_average_is_the_unweighted_mean_over_tasks():
  a, _ = metrics.evaluate_run(QRELS, RUN)
  b, _ = metrics.evaluate_run({"q": {"d": 1}}, {"q": {"d": 1.0}})
  macro = metrics.macro_average({"a": a, "b": b})
  for name in metrics.METRIC_NAMES:
    assert macro[name] == pytest.approx((a[name] + b[name]) / 2)
  assert b["ndcg@10"] == 1.0


def test_bad_runs_and_qrels_are_refused():
  with pytest.raises(TypeError, match="grades must be int"):
    metrics.evaluate_run({"q": {"d": 1.5}}, {"q": {"d": 1.0}})
  with pytest.raises(ValueError, match="finite"):
    metrics.evaluate_run({"q": {"d": 1}}, {"q": {"d": float("nan")}})
  with pytest.raises(ValueError, match="unknown metric"):
    metrics.evaluate_run({"q": {"d": 1}}, {"q": {"d": 1.0}}, metrics=["ndcg@5"])
  with pytest.raises(ValueError, match="whitespace"):
    metrics.write_trec_run("/tmp/never.trec", {"q 1": {"d": 1.0}})
  means, per_query = metrics.evaluate_run({"q": {"d": 1}}, {"other": {"d": 1.0}})
  assert per_query == {} and math.isnan(means["ndcg@10"])
