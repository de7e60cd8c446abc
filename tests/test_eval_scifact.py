"""all-MiniLM-L6-v2 zero-shot on real SciFact through the CLI, documents read at 64 tokens:
exact search and the CLI's metrics against an independent NumPy search + trec_eval; ScaNN from
the cached embeddings against exact search (recall, NDCG); the search command; the three
analysis figures.

The corpus (5,183 abstracts) is encoded once per session by the first CLI run; every other
test reads the CLI's embedding cache (the ScaNN CLI run must not re-encode). At the model's own
256 tokens that encode took over 8 minutes on a busy 2-core CI machine, 64 take about a quarter:
the published NDCG@10 (0.645, at 256 tokens) is reproduced by the README's command instead, its
figures in the README."""

import json

import numpy as np
import pytest
import pytrec_eval

from dualenc import analysis, evaluate
from dualenc import search as dualenc_search
from dualenc.evaluation import search

MAX_LENGTH = 64


@pytest.fixture(scope="session")
def scifact(shared_data_dir, minilm_dir, tmp_path_factory):
  root = tmp_path_factory.mktemp("scifact")
  args = ["--hf_checkpoint", str(minilm_dir), "--beir_dir", str(shared_data_dir / "scifact"),
          "--split", "test", "--cache_dir", str(root / "embeddings"), "--no_progress",
          "--max_length", str(MAX_LENGTH)]
  assert evaluate.main(args + ["--output_dir", str(root / "exact")]) == 0
  cache = root / "embeddings"
  doc_meta = json.loads((cache / "scifact.document.json").read_text())
  query_meta = json.loads((cache / "scifact.query.json").read_text())
  return {"root": root, "args": args, "cache": cache, "data": shared_data_dir / "scifact",
          "docs": np.load(cache / "scifact.document.npy"), "doc_ids": doc_meta["ids"],
          "queries": np.load(cache / "scifact.query.npy"), "query_ids": query_meta["ids"]}


def read_qrels(path):
  """Independent qrels parser: header line, CRLF line ends."""
  qrels = {}
  for line in path.read_bytes().decode().splitlines()[1:]:
    qid, did, grade = line.strip().split("\t")
    qrels.setdefault(qid, {})[did] = int(grade)
  return qrels


def test_zero_shot_exact_search_covers_every_query_and_document(scifact):
  metrics = json.loads((scifact["root"] / "exact" / "metrics.json").read_text())
  # 64 tokens cut most abstracts short: below the published 0.645, far above chance.
  assert 0.5 < metrics["ndcg@10"] < 0.66
  for key in ("ndcg@10", "mrr@10", "p@1", "recall@100", "map"):
    assert 0 < metrics[key] <= 1
  assert metrics["num_queries"] == 300 and metrics["counts"]["documents"] == 5183
  assert scifact["docs"].shape == (5183, 384) and scifact["queries"].shape == (300, 384)
  run_lines = (scifact["root"] / "exact" / "run.trec").read_text().splitlines()
  assert len(run_lines) == 300 * 100


def test_zero_shot_scann_matches_exact_search_from_the_cached_embeddings(scifact):
  cached = {p.name: p.stat().st_mtime_ns for p in scifact["cache"].iterdir()}
  out = scifact["root"] / "scann"
  assert evaluate.main(scifact["args"] + ["--output_dir", str(out), "--searcher", "scann",
                                          "--save_index", str(out / "index")]) == 0
  assert {p.name: p.stat().st_mtime_ns for p in scifact["cache"].iterdir()} == cached
  metrics = json.loads((out / "metrics.json").read_text())
  assert metrics["settings"]["searcher_settings"]["mode"] == "tree_ah"  # not brute force
  # The defaults search widely enough that approximate search costs no measurable quality.
  exact = json.loads((scifact["root"] / "exact" / "metrics.json").read_text())
  assert metrics["ndcg@10"] == pytest.approx(exact["ndcg@10"], abs=0.004)
  index = search.Index.load(out / "index")
  assert index.metadata["model"]["max_length"] == MAX_LENGTH and len(index.doc_ids) == 5183


def test_search_command_answers_a_query_from_the_saved_index(scifact, capsys):
  index_dir = scifact["root"] / "scann" / "index"
  if not index_dir.exists():
    pytest.fail("the ScaNN CLI test did not save an index")
  qid = scifact["query_ids"][0]
  text = next(json.loads(line)["text"] for line in
              (scifact["data"] / "queries.jsonl").read_text().splitlines()
              if json.loads(line)["_id"] == qid)
  assert dualenc_search.main(["--index_dir", str(index_dir), "--k", "3", "--query", text]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[0] == f"# {text}" and len(lines) == 4
  ranked = [l.split() for l in (scifact["root"] / "scann" / "run.trec").read_text().splitlines()
            if l.split()[0] == qid]
  assert lines[1].split()[2] == ranked[0][2]  # same top document as the evaluation run


def test_scann_default_settings_recall_exact_top10(scifact):
  exact = search.ExactSearcher(scifact["docs"]).search(scifact["queries"], 10)[1]
  scann = search.ScannSearcher(scifact["docs"], k=100)  # defaults, as the CLI builds it
  assert scann.settings["mode"] == "tree_ah"
  approx = scann.search(scifact["queries"], 10)[1]
  recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(approx, exact)])
  assert recall >= 0.99  # the issue asks for 0.95; 25 builds here gave 0.9990-0.9997


def test_exact_search_equals_numpy_argsort_on_real_embeddings(scifact):
  scores, indices = search.ExactSearcher(scifact["docs"]).search(scifact["queries"], 100)
  full = scifact["queries"].astype(np.float64) @ scifact["docs"].astype(np.float64).T
  reference = np.argsort(-full, axis=1, kind="stable")[:, :100]
  np.testing.assert_allclose(scores, np.take_along_axis(full, reference, 1), atol=1e-5)
  differ = indices != reference
  # Positions may only swap between documents whose float64 scores tie to float32 precision.
  gaps = np.abs(np.take_along_axis(full, indices, 1) - np.take_along_axis(full, reference, 1))
  assert differ.mean() < 0.001 and np.all(gaps[differ] < 1e-6)


def test_cli_metrics_equal_numpy_search_plus_trec_eval(scifact):
  qrels = read_qrels(scifact["data"] / "qrels" / "test.tsv")
  assert sorted(qrels) == sorted(scifact["query_ids"])
  full = scifact["queries"].astype(np.float64) @ scifact["docs"].astype(np.float64).T
  top = np.argsort(-full, axis=1, kind="stable")[:, :100]
  run = {q: {scifact["doc_ids"][j]: float(full[i, j]) for j in top[i]}
         for i, q in enumerate(scifact["query_ids"])}
  top10 = {q: {scifact["doc_ids"][j]: float(full[i, j]) for j in top[i, :10]}
           for i, q in enumerate(scifact["query_ids"])}
  measures = {"ndcg_cut_10", "P_1", "recall_100", "map", "recall_10"}
  direct = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
  mrr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
  mean = lambda results, m: np.mean([v[m] for v in results.values()])
  metrics = json.loads((scifact["root"] / "exact" / "metrics.json").read_text())
  assert metrics["ndcg@10"] == pytest.approx(mean(direct, "ndcg_cut_10"), abs=1e-6)
  assert metrics["p@1"] == pytest.approx(mean(direct, "P_1"), abs=1e-6)
  assert metrics["recall@10"] == pytest.approx(mean(direct, "recall_10"), abs=1e-6)
  assert metrics["recall@100"] == pytest.approx(mean(direct, "recall_100"), abs=1e-6)
  assert metrics["map"] == pytest.approx(mean(direct, "map"), abs=1e-6)
  assert metrics["mrr@10"] == pytest.approx(mean(mrr, "recip_rank"), abs=1e-6)


def test_analysis_command_writes_three_figures_from_the_cache(scifact, tmp_path):
  out = tmp_path / "analysis"
  args = [a for a in scifact["args"]] + ["--output_dir", str(out), "--tsne_points", "150"]
  assert analysis.main(args) == 0
  for name in ("tsne.png", "top1_similarity.png", "qq_qp_ratio.png"):
    assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  summary = json.loads((out / "analysis.json").read_text())
  full = scifact["queries"].astype(np.float64) @ scifact["docs"].astype(np.float64).T
  assert summary["top1_similarity"]["q50"] == pytest.approx(np.median(full.max(axis=1)),
                                                            abs=1e-5)
  assert summary["top1_similarity"]["count"] == 300
