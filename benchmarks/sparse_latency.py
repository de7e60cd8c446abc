r"""Query latency: the inference-free sparse model vs BM25 (and a dense model), same corpus, same
queries, same run.

  .venv/bin/python benchmarks/sparse_latency.py            # after `make main`; ~1 minute

Every row is the whole query path, from the query string to the top-k document ids, one query
at a time, each timed alone (dualenc/latency.py: warm-up pass, GC paused, p50/p99 over
`--repeats` passes of every test query):

  BM25                     bm25s: its tokenizer (stop words, Snowball stemming) + get_scores,
                           NumPy top-k over the documents matching a term
  inference-free, exact    the saved sparse index: WordPiece tokenizer + IDF lookup (NumPy),
                           exact inverted index (dualenc/sparse/index.py)
  inference-free, Seismic  the same query vectors, Seismic (pyseismic-lsr, default settings)
  dense                    the SamToNe model of `make main`: tokenizer + jitted query tower
                           (XLA's CPU threads) + exact search of the corpus embeddings

The sparse rows, BM25 and the NumPy work run on one thread (nothing in them is parallel); the
dense row is given the machine's cores. The target (Geng et al. 2024): inference-free p50 <=
1.1x BM25's.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
from typing import Dict, List

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


def _rows_sparse(index, texts: List[str], k: int, repeats: int) -> Dict[str, Dict[str, float]]:
  from dualenc import latency  # pylint: disable=g-import-not-at-top
  from dualenc.sparse import index as sparse_index  # pylint: disable=g-import-not-at-top
  rows = {"inference-free, exact inverted index": latency.measure(
      lambda text: index.search_text(text, k), texts, repeats=repeats)}
  encoder = index.query_encoder
  docs = index.searcher.document_vectors()
  seismic = sparse_index.SeismicIndex(docs)
  rows["inference-free, Seismic (approximate)"] = latency.measure(
      lambda text: seismic.search_one(*encoder.encode(text), k), texts, repeats=repeats)
  rows["(inference-free query encoding alone)"] = latency.measure(
      encoder.encode, texts, repeats=repeats)
  return rows


def _row_bm25(doc_texts: List[str], texts: List[str], k: int, repeats: int) -> Dict[str, float]:
  from dualenc import latency  # pylint: disable=g-import-not-at-top
  from dualenc.sparse import bm25  # pylint: disable=g-import-not-at-top
  searcher = bm25.BM25Searcher(doc_texts)
  return latency.measure(lambda text: searcher.search_one(text, k), texts, repeats=repeats)


def _row_dense(model_dir: pathlib.Path, doc_ids, doc_texts, texts, k: int,
               repeats: int) -> Dict[str, float]:
  import gin  # pylint: disable=g-import-not-at-top
  from dualenc import checkpoints, evaluate, gin_utils, latency  # pylint: disable=g-import-not-at-top
  from dualenc.data import vocabularies  # pylint: disable=g-import-not-at-top
  from dualenc.evaluation import encode, loading, retrieval, search  # pylint: disable=g-import-not-at-top
  step_dir = checkpoints.step_directory(str(model_dir))
  evaluate._import_task_modules()  # pylint: disable=protected-access
  gin.clear_config()
  gin_utils.parse([str(model_dir / "config.gin")], [])
  model, _, lengths, _ = evaluate.eval_task()
  encoders = retrieval.ModelEncoders(loading.from_dualenc_checkpoint(
      model, step_dir, vocabularies.get_vocabulary(), lengths),
      options=encode.EncodeOptions(progress=False))
  cache = model_dir / "eval" / f"step_{step_dir.name}" / "embeddings"
  docs = encoders.encode("document", doc_ids, doc_texts, cache_dir=cache,
                         cache_name="dualenc_default.document")
  searcher = search.ExactSearcher(docs)
  tower, tokenizer = encoders.towers["query"], encoders.retrieval_model.query_tokenizer
  return latency.measure(
      lambda text: searcher.search(encode.encode_one(tower, tokenizer, text), k)[1], texts,
      warmup=len(texts), repeats=repeats)


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--index_dir", default="runs/main/sparse/index",
                      help="a saved inference-free sparse index (make main writes this one)")
  parser.add_argument("--task", default="dualenc_default", help="whose test queries are timed")
  parser.add_argument("--dense_model_dir", default="runs/main",
                      help="a dense dualenc run for the contrast row ('' to skip)")
  parser.add_argument("--k", type=int, default=100)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--output", default="runs/bench/sparse_latency.json")
  args = parser.parse_args()
  os.chdir(REPO_ROOT)
  from dualenc import index as index_lib  # pylint: disable=g-import-not-at-top
  from dualenc import evaluate  # pylint: disable=g-import-not-at-top
  from dualenc.data import registry  # pylint: disable=g-import-not-at-top
  evaluate._import_task_modules()  # pylint: disable=protected-access
  index = index_lib.Index.load(args.index_dir)
  if index.query_encoder is None or index.doc_texts is None:
    raise SystemExit(f"{args.index_dir}: not an inference-free sparse index with texts")
  data = registry.eval_data(args.task, "test")
  texts = [t for q, t in zip(data.query_ids, data.query_texts) if q in data.qrels]
  rows = {"BM25 (bm25s)": _row_bm25(index.doc_texts, texts, args.k, args.repeats)}
  rows.update(_rows_sparse(index, texts, args.k, args.repeats))
  if args.dense_model_dir:
    rows["dense SamToNe MiniLM (encoder + exact search)"] = _row_dense(
        pathlib.Path(args.dense_model_dir), index.doc_ids, index.doc_texts, texts, args.k,
        args.repeats)
  base = rows["BM25 (bm25s)"]["query_ms_p50"]
  print(f"{len(texts)} queries x {args.repeats} passes, {len(index.doc_ids)} documents, top "
        f"{args.k}; {platform.processor() or platform.machine()}, {os.cpu_count()} cores\n")
  print("| query path | p50 ms | p99 ms | queries/s | p50 / BM25's |")
  print("|---|---|---|---|---|")
  for name, row in rows.items():
    print(f"| {name} | {row['query_ms_p50']:.3f} | {row['query_ms_p99']:.3f} | "
          f"{row['queries_per_second']:.0f} | {row['query_ms_p50'] / base:.2f}x |")
  ratio = rows["inference-free, exact inverted index"]["query_ms_p50"] / base
  print(f"\ninference-free (exact) p50 / BM25 p50 = {ratio:.2f}x (target <= 1.1x: "
        f"{'met' if ratio <= 1.1 else 'not met'})")
  output = pathlib.Path(args.output)
  output.parent.mkdir(parents=True, exist_ok=True)
  output.write_text(json.dumps({"rows": rows, "ratio_to_bm25": ratio, "queries": len(texts),
                                "documents": len(index.doc_ids)}, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
