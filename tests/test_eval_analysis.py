"""Embedding-space analysis: the numbers behind figures 5 and 6 against NumPy, and the PNGs."""

import json

import numpy as np
import pytest

from dualenc import analysis


def unit(x):
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_top1_similarity_and_ratios_equal_numpy():
  rng = np.random.default_rng(0)
  docs = unit(rng.normal(size=(200, 8)))
  queries = unit(rng.normal(size=(50, 8)))
  np.testing.assert_allclose(analysis.top1_similarity(queries, docs),
                             (queries @ docs.T).max(axis=1), atol=1e-6)
  positives = docs[:50]
  pairs = analysis.qq_qp_ratios(queries * 3.0, positives, num_pairs=500, seed=1)  # any norm
  i, j = pairs["i"], pairs["j"]
  assert np.all(i != j) and set(i) | set(j) <= set(range(50))
  np.testing.assert_allclose(pairs["qq"], np.sum(queries[i] * queries[j], 1), atol=1e-6)
  np.testing.assert_allclose(pairs["qp"], np.sum(queries[i] * positives[j], 1), atol=1e-6)
  np.testing.assert_array_equal(pairs["ratio"], pairs["qq"] / pairs["qp"])
  with pytest.raises(ValueError, match="need >= 2 queries"):
    analysis.qq_qp_ratios(queries[:1], positives[:1])


def test_positive_is_the_best_graded_relevant_document():
  doc_ids = ["a", "b", "c"]
  qrels = {"q1": {"c": 1, "b": 2}, "q2": {"a": 1, "c": 1, "zz": 5}, "q3": {"a": 0}}
  np.testing.assert_array_equal(analysis.positives_of(["q1", "q2"], qrels, doc_ids), [1, 0])
  with pytest.raises(ValueError, match="'q3' has no relevant document"):
    analysis.positives_of(["q3"], qrels, doc_ids)


def test_make_figures_writes_three_pngs_and_a_summary(tmp_path):
  rng = np.random.default_rng(0)
  docs = unit(rng.normal(size=(60, 8)))
  queries = unit(docs[:30] + 0.1 * rng.normal(size=(30, 8)))
  paths = analysis.make_figures(queries, docs, np.arange(30), tmp_path, name="toy",
                                tsne_max_points=30, num_pairs=200)
  for key in ("tsne", "top1_similarity", "qq_qp_ratio"):
    assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  summary = json.loads(paths["summary"].read_text())
  assert summary["top1_similarity"]["count"] == 30
  assert summary["top1_similarity"]["q50"] > 0.9  # each query sits next to its own document
  assert summary["qq_qp_ratio"]["finite"] == 200
