r"""Retrieval evaluation from the shell: trained checkpoints, zero-shot checkpoints, search.

Trained dualenc checkpoint over its task or mixture (gin: the run's files, or MODEL_DIR/config.gin
by default; `eval/*.gin` choose searcher and batching):

  python -m dualenc.evaluate --checkpoint=runs/ft/checkpoints/1000 \
      [--gin_file=runs/ft/config.gin] [--gin_file=eval/scann.gin] [--split=test] \
      [--gin.MIXTURE_OR_TASK_NAME="'other_task'"] [--output_dir=runs/ft/eval/1000]

Zero-shot, any BEIR directory, any Hugging Face / sentence-transformers checkpoint, no gin:

  python -m dualenc.evaluate --hf_checkpoint=DIR --beir_dir=DIR --split=test --output_dir=OUT \
      [--searcher=exact|scann] [--top_k=100] [--save_index=OUT/index]

Either way OUT/metrics.json holds ndcg@10, mrr@10, p@1, recall@{1,10,100} and map (means over
the queries with qrels) and OUT/run.trec the ranking; a mixture writes one directory per task
and OUT/metrics.json with every task and the macro average. Embeddings are cached under
--cache_dir (default OUT/embeddings), so re-running (e.g. with another searcher) re-encodes
nothing.

  python -m dualenc.evaluate search --index_dir=OUT/index    (same as python -m dualenc.search)
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pathlib
import sys
from typing import Any, Dict, Optional, Sequence

import gin

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
EVAL_BASE_GIN = "eval/base.gin"


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
  source.add_argument("--checkpoint", help="dualenc checkpoint step dir MODEL_DIR/checkpoints/N")
  source.add_argument("--hf_checkpoint", help="Hugging Face / sentence-transformers directory")
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
  return parser


def _options(args) -> retrieval.RetrievalOptions:
  base = retrieval.RetrievalOptions()  # gin's bindings, if any
  drop = base.drop_self_hits
  if args.drop_self_hits != "auto":
    drop = args.drop_self_hits == "true"
  elif args.beir_dir:
    drop = pathlib.Path(args.beir_dir).resolve().name.lower() in SELF_HIT_DATASETS
  return retrieval.RetrievalOptions(searcher=args.searcher or base.searcher,
                                    top_k=args.top_k or base.top_k, drop_self_hits=drop)


def _encode_options(args) -> encode.EncodeOptions:
  base = encode.EncodeOptions()
  return encode.EncodeOptions(batch_tokens=args.batch_tokens or base.batch_tokens,
                              max_batch_size=base.max_batch_size, sort_window=base.sort_window,
                              progress=base.progress and not args.no_progress)


def _cache_dir(args, output_dir: pathlib.Path) -> Optional[pathlib.Path]:
  if args.no_cache:
    return None
  return pathlib.Path(args.cache_dir) if args.cache_dir else output_dir / "embeddings"


def run_zero_shot(args) -> Dict[str, Any]:
  """--hf_checkpoint with --beir_dir: one BEIR split, no gin."""
  from dualenc.data import readers  # pylint: disable=g-import-not-at-top
  output_dir = pathlib.Path(args.output_dir)
  beir_dir = pathlib.Path(args.beir_dir).expanduser().resolve()
  split = args.split or "test"
  data = readers.open_dataset(beir_dir, "beir", on_bad_record=args.on_bad_record).eval_data(split)
  model = loading.from_hf_checkpoint(args.hf_checkpoint, dtype=args.dtype or "float32",
                                     max_length=args.max_length)
  mesh = partitioning.make_mesh(-1, args.mesh_model)
  encoders = retrieval.ModelEncoders(model, mesh, _encode_options(args))
  name = beir_dir.name
  result = retrieval.evaluate_retrieval(
      encoders, data, name=name, options=_options(args), scann_config=search.ScannConfig(),
      cache_dir=_cache_dir(args, output_dir), output_dir=output_dir,
      index_dir=args.save_index)
  _print_table({name: result.metrics})
  print(f"wrote {output_dir / 'metrics.json'} and {output_dir / 'run.trec'}")
  return result.metrics


def _import_task_modules() -> None:
  """Registers dualenc's built-in tasks (the top-level `tasks` package) when it is installed."""
  try:
    importlib.import_module("tasks")
  except ModuleNotFoundError as e:
    if e.name != "tasks":
      raise


def run_checkpoint(args, gin_files: Sequence[str], bindings: Sequence[str]) -> Dict[str, Any]:
  """--checkpoint (+ gin): a trained model over its task or mixture, or over --beir_dir."""
  step_dir = pathlib.Path(args.checkpoint).expanduser().resolve()
  if not gin_files:
    default = step_dir.parent.parent / "config.gin"
    if not default.is_file():
      raise SystemExit(f"no --gin_file given and {default} does not exist; pass the gin files "
                       "the checkpoint was trained with")
    gin_files = [str(default)]
  gin.clear_config()
  gin_utils.parse([EVAL_BASE_GIN] + list(gin_files), bindings)
  _import_task_modules()
  model, task_names, feature_lengths, split = eval_task()
  split = args.split or split
  if args.beir_dir:
    from dualenc.data import registry  # pylint: disable=g-import-not-at-top
    beir_dir = pathlib.Path(args.beir_dir).expanduser().resolve()
    task_names = registry.register_dataset(f"beir_{beir_dir.name}", str(beir_dir), "beir",
                                           on_bad_record=args.on_bad_record)
  output_dir = pathlib.Path(args.output_dir or step_dir.parent.parent / "eval" / step_dir.name)
  tasks = retrieval.leaf_task_names(task_names)
  retrieval_model = loading.from_dualenc_checkpoint(
      model, step_dir, retrieval.task_vocabulary(tasks[0]), feature_lengths, dtype=args.dtype)
  mesh = partitioning.make_mesh(-1, args.mesh_model)
  results = retrieval.evaluate_tasks(
      retrieval_model.model, retrieval_model.params, tasks, feature_lengths=feature_lengths,
      split=split, mesh=mesh, options=_options(args), scann_config=search.ScannConfig(),
      encode_options=_encode_options(args), output_dir=output_dir,
      cache_dir=_cache_dir(args, output_dir), retrieval_model=retrieval_model)
  _print_table(results)
  print(f"wrote {output_dir / 'metrics.json'}")
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
  gin_utils.add_gin_flags(parser)
  bindings, rest = gin_utils.split_gin_overrides(argv)
  args = parser.parse_args(rest)
  if bool(args.checkpoint) == bool(args.hf_checkpoint):
    parser.error("pass exactly one of --checkpoint (dualenc) or --hf_checkpoint (zero-shot)")
  if args.hf_checkpoint:
    if not args.beir_dir or not args.output_dir:
      parser.error("--hf_checkpoint needs --beir_dir and --output_dir")
    gin.clear_config()  # gin is optional here: eval/*.gin may tune ScaNN or batching
    gin_utils.parse(args.gin_file, bindings, [p for p in args.gin_search_paths.split(",") if p])
    run_zero_shot(args)
    return 0
  for path in [p for p in args.gin_search_paths.split(",") if p]:
    gin.add_config_file_search_path(os.path.abspath(path))
  run_checkpoint(args, args.gin_file, bindings)
  return 0


if __name__ == "__main__":
  sys.exit(main())
