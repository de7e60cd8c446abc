"""Sparse retrieval's search side: the exact inverted index against dense NumPy search, Seismic's
recall against exact, efficiency counts against an independent count, the model-free query
path (equal to the model's query tower, importing no JAX/Flax/TensorFlow), BM25 against bm25s,
and bad query sides. Real data: SciFact tokenized with all-MiniLM-L6-v2's WordPiece vocabulary;
documents weighted log1p(tf) (a learned model's vectors need a trained model, which CI lacks)."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse

from dualenc import index as index_lib
from dualenc.evaluation import retrieval
from dualenc.sparse import idf as idf_lib
from dualenc.sparse import index as sparse_index
from dualenc.sparse import query as query_lib

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
FORBIDDEN = ("jax", "jaxlib", "flax", "tensorflow")


@pytest.fixture(scope="module")
def scifact(shared_data_dir):
  """SciFact test: documents as log1p(tf) WordPiece vectors, queries through a QueryEncoder
  with the corpus's IDF table."""
  from dualenc.data import readers  # pylint: disable=g-import-not-at-top
  data = readers.open_dataset(shared_data_dir / "scifact", "beir").eval_data("test")
  vocab = idf_lib.default_vocab_path()
  tokens = idf_lib.vocab_tokens(vocab)
  specials = set(idf_lib.special_token_ids(tokens))
  encoded = idf_lib.wordpiece_tokenizer(vocab).encode_batch(list(data.corpus_texts),
                                                            add_special_tokens=False)
  rows, cols, vals = [], [], []
  for row, e in enumerate(encoded):
    ids, counts = np.unique([i for i in e.ids[:254] if i not in specials], return_counts=True)
    rows += [row] * len(ids)
    cols += ids.tolist()
    vals += np.log1p(counts).tolist()
  docs = scipy.sparse.csr_matrix((np.float32(vals), (rows, cols)),
                                 shape=(len(encoded), len(tokens)))
  encoder = query_lib.QueryEncoder(vocab, idf_lib.corpus_idf(list(data.corpus_texts)), 64)
  return {"data": data, "docs": docs, "encoder": encoder,
          "queries": encoder.encode_batch(list(data.query_texts))}


def _expected_top(dense_scores: np.ndarray, k: int):
  matched = np.flatnonzero(dense_scores > 0)
  order = np.lexsort((matched, -dense_scores[matched]))[:k]
  return dense_scores[matched[order]], matched[order]


def test_inverted_index_equals_dense_numpy_search_and_round_trips(scifact, tmp_path):
  docs, queries = scifact["docs"], scifact["queries"]
  dense = queries.toarray() @ docs.toarray().T  # [Q, N] float32: the reference
  index = sparse_index.InvertedIndex(docs, shard_size=2000, query_block=64)  # 3 shards merged
  assert index.settings["num_shards"] == 3
  scores, ids = index.search(queries, 100)
  identical = 0
  for row in range(queries.shape[0]):
    want_scores, want_ids = _expected_top(dense[row], 100)
    n = len(want_ids)
    assert (ids[row, n:] == -1).all() and np.isneginf(scores[row, n:]).all()
    # Ties aside: the same scores in the same order, and every returned id scores that much.
    np.testing.assert_allclose(scores[row, :n], want_scores, rtol=1e-5)
    np.testing.assert_allclose(dense[row, ids[row, :n]], scores[row, :n], rtol=1e-5)
    one_scores, one_ids = index.search_one(*scifact["encoder"].encode(
        scifact["data"].query_texts[row]), 100)
    np.testing.assert_allclose(one_scores, want_scores, rtol=1e-5)
    identical += np.array_equal(ids[row, :n], want_ids) and np.array_equal(one_ids, want_ids)
  assert identical >= 0.95 * queries.shape[0]
  index_lib.Index(index, scifact["data"].corpus_ids, query_encoder=scifact["encoder"]).save(
      tmp_path / "saved")
  loaded = index_lib.Index.load(tmp_path / "saved")
  assert isinstance(loaded.searcher.shards[0].data, np.ndarray)
  assert isinstance(loaded.searcher.shards[0].data.base, np.memmap)  # mapped, not read
  np.testing.assert_array_equal(loaded.searcher.search(queries, 100)[1], ids)
  text = scifact["data"].query_texts[0]
  assert loaded.search_text(text, 5) == index_lib.Index(
      index, scifact["data"].corpus_ids).search(scifact["encoder"].encode_batch([text]), 5)[0]
  assert retrieval.index_bytes(index) == sum(
      p.stat().st_size for p in (tmp_path / "saved" / "inverted").iterdir())


def test_seismic_recall_at_10_against_exact_search_on_scifact(scifact, tmp_path):
  docs, queries = scifact["docs"], scifact["queries"]
  exact = sparse_index.InvertedIndex(docs).search(queries, 10)[1]
  seismic = sparse_index.SeismicIndex(docs)  # the default SeismicConfig
  approx = seismic.search(queries, 10)[1]
  recall = np.mean([len(set(e[e >= 0]) & set(a[a >= 0])) / max(1, (e >= 0).sum())
                    for e, a in zip(exact, approx)])
  print(f"Seismic Recall@10 against exact search on SciFact: {recall:.4f}")
  assert recall >= 0.95
  one = [seismic.search_one(queries.indices[queries.indptr[r]:queries.indptr[r + 1]],
                            queries.data[queries.indptr[r]:queries.indptr[r + 1]], 10)[1]
         for r in range(20)]
  assert all(np.array_equal(o, a[:len(o)]) for o, a in zip(one, approx[:20]))
  index_lib.Index(seismic, scifact["data"].corpus_ids).save(tmp_path / "seismic")
  loaded = index_lib.Index.load(tmp_path / "seismic")
  np.testing.assert_array_equal(loaded.searcher.search(queries, 10)[1], approx)


def test_flops_and_nonzeros_equal_an_independent_count():
  # By hand: 2 queries, 3 documents over 4 terms.
  queries = np.array([[1, 0, 2, 0], [0, 0, 1, 1]], np.float32)
  docs = np.array([[1, 1, 0, 0], [0, 3, 1, 0], [0, 0, 0, 0]], np.float32)
  # p_q = [1/2, 0, 1, 1/2], p_d = [1/3, 2/3, 1/3, 0] -> 1/6 + 1/3 = 1/2.
  assert retrieval.sparsity(queries, docs) == pytest.approx(
      {"query_nnz": 2.0, "doc_nnz": 4 / 3, "flops": 0.5})


def test_flops_and_nonzeros_on_real_data_equal_a_set_count(scifact):
  queries, docs = scifact["queries"], scifact["docs"]
  query_terms = [set(queries[r].indices) for r in range(queries.shape[0])]
  doc_terms = [set(docs[r].indices) for r in range(docs.shape[0])]
  q_count, d_count = {}, {}
  for terms, count in ((query_terms, q_count), (doc_terms, d_count)):
    for row in terms:
      for t in row:
        count[t] = count.get(t, 0) + 1
  flops = sum(q_count[t] / len(query_terms) * d_count.get(t, 0) / len(doc_terms)
              for t in q_count)
  got = retrieval.sparsity(queries, docs)
  assert got["query_nnz"] == pytest.approx(np.mean([len(t) for t in query_terms]))
  assert got["doc_nnz"] == pytest.approx(np.mean([len(t) for t in doc_terms]))
  assert got["flops"] == pytest.approx(flops, rel=1e-9)


def test_model_free_query_vectors_equal_the_models_query_tower(scifact):
  import jax  # pylint: disable=g-import-not-at-top
  from dualenc.data import vocabularies  # pylint: disable=g-import-not-at-top
  from dualenc.encoders import bert  # pylint: disable=g-import-not-at-top
  from dualenc.evaluation import encode, loading  # pylint: disable=g-import-not-at-top
  from dualenc.sparse import model as sparse_model  # pylint: disable=g-import-not-at-top
  config = bert.BertConfig(vocab_size=30522, d_model=32, num_heads=2, num_layers=1, d_ff=64,
                           max_position_embeddings=64)
  module = sparse_model.SparseEncoder(config)
  ids = np.ones((1, 8), np.int32)
  from flax import linen as nn  # pylint: disable=g-import-not-at-top
  params = nn.unbox(module.init(jax.random.PRNGKey(0), ids, ids, ids, ids)["params"])
  params = sparse_model.with_idf(params, scifact["encoder"].idf)
  vocabulary = vocabularies.WordPieceVocabulary(idf_lib.default_vocab_path())
  model = loading.from_dualenc_checkpoint(module, None, vocabulary,
                                          {"inputs": 64, "targets": 64}, params=params)
  free = retrieval.model_free_query_encoder(model)
  texts = list(scifact["data"].query_texts) + ["", "\u2603 \u2603", "word " * 80]
  tower = encode.TowerEncoder(module, params, "query")
  from_model = encode.encode_texts(tower, model.query_tokenizer, texts,
                                   encode.EncodeOptions(progress=False))
  from_numpy = free.encode_batch(texts)
  assert abs(from_model - from_numpy).max() == 0.0
  assert free.encode("")[0].size == 0 and free.encode("\u2603 \u2603")[0].size == 0


def _save_small_index(scifact, directory, encoder=None):
  docs = scifact["docs"][:400]
  return index_lib.Index(sparse_index.InvertedIndex(docs), scifact["data"].corpus_ids[:400],
                         scifact["data"].corpus_texts[:400],
                         query_encoder=encoder or scifact["encoder"]).save(directory)


def test_a_saved_sparse_index_answers_from_the_shell_without_jax_flax_or_tensorflow(
    scifact, tmp_path):
  _save_small_index(scifact, tmp_path / "index")
  script = (
      "import sys\nfrom dualenc import search\n"
      f"code = search.main(['--index_dir={tmp_path / 'index'}', '--k=3', "
      "'--query=vitamin D deficiency', '--query=\u2603'])\n"
      f"loaded = sorted({{m.split('.')[0] for m in sys.modules}} & set({FORBIDDEN!r}))\n"
      "print('LOADED', loaded)\nsys.exit(code or bool(loaded))\n")
  done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True,
                        text=True, timeout=120)
  assert done.returncode == 0, done.stdout + done.stderr
  assert "LOADED []" in done.stdout
  lines = done.stdout.splitlines()
  assert lines[0] == "# vitamin D deficiency" and lines[1].lstrip().startswith("1  ")
  assert "(no known terms: 0 results)" in done.stdout
  shell = subprocess.run([sys.executable, "-m", "dualenc.search", f"--index_dir={tmp_path / 'index'}",
                          "--k=2", "--timing"], input="bone density\n", cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=120)
  assert shell.returncode == 0 and " ms)" in shell.stdout and "  2  " in shell.stdout


def test_a_query_side_of_another_vocabulary_or_idf_table_is_refused(scifact, tmp_path):
  _save_small_index(scifact, tmp_path / "index")
  other_idf = scifact["encoder"].idf.copy()
  other_idf[2000] += 1.0
  query_lib.QueryEncoder(scifact["encoder"].vocab_path, other_idf, 64).save(tmp_path / "idf")
  tokens = list(scifact["encoder"].tokens)
  tokens[2000] = "zzzz"
  (tmp_path / "vocab.txt").write_text("\n".join(tokens) + "\n")
  query_lib.QueryEncoder(tmp_path / "vocab.txt", None, 64).save(tmp_path / "vocab")
  with pytest.raises(ValueError, match="IDF table .* is not the one .* was built with"):
    index_lib.Index.load(tmp_path / "index", query_encoder=tmp_path / "idf")
  with pytest.raises(ValueError, match="vocabulary .* is not the one"):
    index_lib.Index.load(tmp_path / "index", query_encoder=tmp_path / "vocab")
  done = subprocess.run([sys.executable, "-m", "dualenc.search",
                         f"--index_dir={tmp_path / 'index'}", f"--query_encoder={tmp_path / 'idf'}",
                         "--query=x"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
  assert done.returncode == 2 and done.stderr.startswith("error: ") and "IDF" in done.stderr
  # A tampered idf.json next to its query_encoder.json is caught on load.
  saved = tmp_path / "index" / "query_encoder" / "idf.json"
  table = json.loads(saved.read_text())
  table["the"] = 99.0
  saved.write_text(json.dumps(table))
  with pytest.raises(ValueError, match="idf_sha256 does not match"):
    index_lib.Index.load(tmp_path / "index")


def test_bm25_cli_equals_bm25s_called_directly_with_the_same_settings(shared_data_dir, tmp_path):
  import bm25s  # pylint: disable=g-import-not-at-top
  import pytrec_eval  # pylint: disable=g-import-not-at-top
  import Stemmer  # pylint: disable=g-import-not-at-top
  from dualenc.data import readers  # pylint: disable=g-import-not-at-top
  out = tmp_path / "bm25"
  done = subprocess.run([sys.executable, "-m", "dualenc.evaluate", "--bm25",
                         f"--beir_dir={shared_data_dir / 'scifact'}", "--split=test",
                         f"--output_dir={out}"], cwd=REPO_ROOT, capture_output=True, text=True,
                        timeout=300)
  assert done.returncode == 0, done.stderr
  metrics = json.loads((out / "metrics.json").read_text())
  data = readers.open_dataset(shared_data_dir / "scifact", "beir").eval_data("test")
  stemmer = Stemmer.Stemmer("english")
  retriever = bm25s.BM25(k1=1.5, b=0.75, method="lucene")
  retriever.index(bm25s.tokenize(list(data.corpus_texts), stopwords="en", stemmer=stemmer,
                                 show_progress=False), show_progress=False)
  judged = [i for i, q in enumerate(data.query_ids) if q in data.qrels]
  docs, scores = retriever.retrieve(
      bm25s.tokenize([data.query_texts[i] for i in judged], stopwords="en", stemmer=stemmer,
                     show_progress=False), k=100, show_progress=False, n_threads=1)
  run = {data.query_ids[i]: {data.corpus_ids[d]: float(s) for d, s in zip(drow, srow)}
         for i, drow, srow in zip(judged, docs, scores)}
  qrels = {q: {d: int(g) for d, g in j.items()} for q, j in data.qrels.items()}
  direct = np.mean([v["ndcg_cut_10"] for v in pytrec_eval.RelevanceEvaluator(
      qrels, {"ndcg_cut"}).evaluate(run).values()])
  print(f"BM25 SciFact test NDCG@10: dualenc.evaluate --bm25 {metrics['ndcg@10']:.4f}, bm25s "
        f"directly {direct:.4f}")
  assert abs(metrics["ndcg@10"] - direct) <= 0.01
  assert metrics["settings"]["searcher_settings"]["stopwords"] == "en"
  assert 0 < metrics["query_ms_p50"] <= metrics["query_ms_p99"] and metrics["index_bytes"] > 0
  subprocess.run([sys.executable, "-m", "dualenc.evaluate", "--bm25", "--bm25_stopwords=none",
                  "--bm25_no_stemming", f"--beir_dir={shared_data_dir / 'scifact'}",
                  f"--output_dir={tmp_path / 'plain'}"], cwd=REPO_ROOT, check=True,
                 capture_output=True, timeout=300)
  plain = json.loads((tmp_path / "plain" / "metrics.json").read_text())
  assert plain["settings"]["searcher_settings"]["stopwords"] is None
  assert plain["settings"]["searcher_settings"]["stemmer"] is None
  assert plain["ndcg@10"] != metrics["ndcg@10"]
