"""Exact search equals a NumPy argsort; ScaNN modes, saved indexes, self-hit dropping, bad input."""

import numpy as np
import pytest

from dualenc.evaluation import search


def unit_rows(rng, n, d):
  x = rng.normal(size=(n, d)).astype(np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def numpy_top_k(queries, docs, k):
  scores = queries.astype(np.float64) @ docs.astype(np.float64).T
  order = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # ties: lower index first
  return np.take_along_axis(scores, order, axis=1), order


def test_exact_search_equals_numpy_argsort_across_chunks():
  rng = np.random.default_rng(0)
  docs, queries = unit_rows(rng, 1000, 16), unit_rows(rng, 300, 16)
  searcher = search.ExactSearcher(docs, chunk_size=128, query_block=64)  # 8 chunks, 5 blocks
  scores, indices = searcher.search(queries, 20)
  ref_scores, ref_indices = numpy_top_k(queries, docs, 20)
  np.testing.assert_array_equal(indices, ref_indices)
  np.testing.assert_allclose(scores, ref_scores, atol=1e-5)


def test_exact_search_ties_go_to_the_lower_index_and_k_is_capped():
  docs = np.array([[1, 0], [0, 1], [1, 0], [1, 0], [0.5, 0.5]], np.float32)  # rows 0, 2, 3 tie
  searcher = search.ExactSearcher(docs, chunk_size=2)
  scores, indices = searcher.search(np.array([[1, 0]], np.float32), 10)
  assert indices.tolist() == [[0, 2, 3, 4, 1]]
  assert scores.shape == (1, 5)


def test_retrieve_builds_runs_and_drops_self_hits():
  docs = np.array([[1, 0], [0.9, 0.1], [0, 1]], np.float32)
  searcher = search.ExactSearcher(docs)
  queries = np.array([[1, 0]], np.float32)
  run = search.retrieve(searcher, queries, ["a"], ["a", "b", "c"], 2)
  assert list(run["a"]) == ["a", "b"]
  run = search.retrieve(searcher, queries, ["a"], ["a", "b", "c"], 2, drop_self_hits=True)
  assert list(run["a"]) == ["b", "c"]  # k results remain after dropping the query's own id


def test_scann_brute_force_mode_equals_exact_and_tree_mode_is_chosen_by_size():
  rng = np.random.default_rng(1)
  docs, queries = unit_rows(rng, 500, 32), unit_rows(rng, 50, 32)
  scann = search.ScannSearcher(docs, k=10)
  assert scann.settings["mode"] == "brute_force"
  _, indices = scann.search(queries, 10)
  np.testing.assert_array_equal(indices, numpy_top_k(queries, docs, 10)[1])
  big = search.ScannConfig().resolve(1_000_000, 100)
  assert big["mode"] == "tree_ah" and big["num_leaves"] == 1000
  assert big["num_leaves_to_search"] == 500 and big["reorder_num_neighbors"] == 400
  assert big["training_sample_size"] == 250_000


@pytest.mark.parametrize("kind", ["exact", "scann"])
def test_saved_index_answers_like_the_original(tmp_path, kind, monkeypatch):
  rng = np.random.default_rng(2)
  # Clustered data so that the ScaNN tree has structure to find.
  centers = unit_rows(rng, 20, 32)
  docs = centers[rng.integers(0, 20, 2000)] + 0.05 * rng.normal(size=(2000, 32)).astype(np.float32)
  queries = docs[:40] + 0.02 * rng.normal(size=(40, 32)).astype(np.float32)
  searcher = search.make_searcher(kind, docs, 10)
  if kind == "scann":
    assert searcher.settings["mode"] == "tree_ah"
  ids = [f"doc{i}" for i in range(len(docs))]
  # Saved under a relative path, then moved: the index's files refer to each other relatively.
  monkeypatch.chdir(tmp_path)
  search.Index(searcher, ids, [f"text {i}" for i in range(len(docs))],
               metadata={"model": {"hf_checkpoint": "x"}}).save("runs/index")
  (tmp_path / "runs" / "index").rename(tmp_path / "moved")
  (tmp_path / "elsewhere").mkdir()
  monkeypatch.chdir(tmp_path / "elsewhere")
  loaded = search.Index.load("../moved")
  assert loaded.metadata == {"model": {"hf_checkpoint": "x"}}
  assert loaded.doc_texts[5] == "text 5"
  s1, i1 = searcher.search(queries, 10)
  s2, i2 = loaded.searcher.search(queries, 10)
  np.testing.assert_array_equal(i1, i2)
  np.testing.assert_allclose(s1, s2, atol=1e-6)
  exact = numpy_top_k(queries, docs, 10)[1]
  recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(i1, exact)])
  assert recall >= 0.95


def test_bad_input_is_refused(tmp_path):
  with pytest.raises(ValueError, match="empty corpus"):
    search.ExactSearcher(np.zeros((0, 4), np.float32))
  with pytest.raises(ValueError, match="empty corpus"):
    search.ScannSearcher(np.zeros((0, 4), np.float32))
  with pytest.raises(ValueError, match="NaN"):
    search.ExactSearcher(np.full((3, 4), np.nan, np.float32))
  searcher = search.ExactSearcher(np.eye(4, dtype=np.float32))
  with pytest.raises(ValueError, match="dimension"):
    searcher.search(np.ones((1, 3), np.float32), 1)
  with pytest.raises(ValueError, match="unknown searcher"):
    search.make_searcher("faiss", np.eye(4, dtype=np.float32), 1)
  with pytest.raises(FileNotFoundError, match="not a dualenc index"):
    search.Index.load(tmp_path)
  index = search.Index(search.make_searcher("scann", np.eye(4, dtype=np.float32), 1),
                       ["a", "b", "c", "d"])
  index.save(tmp_path / "mixture" / "task_a")
  with pytest.raises(FileNotFoundError, match=r"one index per task \(task_a\); pass "
                     r"--index_dir=.*mixture/task_a"):
    search.Index.load(tmp_path / "mixture")
  (tmp_path / "mixture" / "task_a" / "scann" / "scann_docids.pkl").write_bytes(b"x")
  with pytest.raises(ValueError, match="refusing to load a pickle"):
    search.Index.load(tmp_path / "mixture" / "task_a")
