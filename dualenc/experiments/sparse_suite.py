"""Suite `sparse` (inference-free learned sparse retrieval, Geng et al. 2024): on SciFact and the
default dataset, from all-MiniLM-L6-v2 with an MLM head fitted on the corpus, every cell the
same budget (runs/sparse_cpu.gin / runs/sparse_scifact_cpu.gin, shortened):

  IDF-aware vs idf = 1      query side = tokenizer + the corpus's IDF table, or all ones
                            (SPLADE-doc), both distilled from the BM25 + MiniLM ensemble
  teachers                  ensemble KD vs KD from BM25 alone, from MiniLM alone, and in-batch
                            InfoNCE (no teacher); IDF-aware
  FLOPS weight sweep        lambda x {1/4, 1, 4, 16, 64} for IDF-aware and idf = 1 (seed 0):
                            NDCG@10 against FLOPS, BM25 and the dense teacher as lines
  references                BM25 (bm25s) and all-MiniLM-L6-v2 zero-shot, same test queries
"""

from __future__ import annotations

import pathlib
from typing import Any, Dict, List, Mapping

import numpy as np

from dualenc.experiments import grid

FLOPS_LAMBDA = 5e-4  # runs/sparse_cpu.gin's
# Multiples of FLOPS_LAMBDA, besides 1, on seed 0 only. At 40 steps the penalty is ~0.1 of the
# ranking loss at x4 and comparable to it at x16 (measured): x64 shows where sparsity costs NDCG.
SWEEP = (0.25, 4.0, 16.0, 64.0)
SWEEP_SEED = 0  # not "the first seed asked for": `--seeds=1` must not run a second sweep
TEACHERS = {  # name -> (label, flags)
    "ensemble": ("ensemble KD (BM25 + MiniLM)", []),
    "bm25": ("KD from BM25 alone",
             ["--gin.dualenc.sparse.SparseLoss.teachers=[@bm25/dualenc.sparse.BM25Teacher()]"]),
    "dense": ("KD from MiniLM alone",
              ["--gin.dualenc.sparse.SparseLoss.teachers=[@dense/dualenc.sparse.ModelTeacher()]"]),
    "infonce": ("in-batch InfoNCE (no teacher)",
                ["--gin.dualenc.sparse.SparseLoss.ranking='in_batch_softmax'",
                 "--gin.dualenc.sparse.SparseLoss.teachers=[]"]),
}
QUERY_SIDES = {"idf": "IDF-aware (tokenizer + IDF)", "ones": "idf = 1 (SPLADE-doc)"}
DATASETS = {
    "default": dict(gin="runs/sparse_cpu.gin", corpus="--task=dualenc_default",
                    beir="{default_beir}"),
    "scifact": dict(gin="runs/sparse_scifact_cpu.gin", corpus="--beir_dir={data}/scifact",
                    beir="{data}/scifact"),
}
ESTIMATE_S = {"default": 400, "scifact": 600}
METRICS = ("ndcg@10", "mrr@10", "recall@100", "doc_nnz", "query_nnz", "flops")
EVAL_LENGTHS = "{'inputs': 64, 'targets': 128}"


def build(*, scale: str = "cpu", seeds=(0, 1, 2), datasets=("default", "scifact"),
          train_steps: int = 40) -> grid.Suite:
  """The grid; scale='tiny' is the two-cell, tiny-model version the tests run."""
  if scale == "tiny":
    steps = [grid.Step("idf/default", [grid.PY, "-m", "dualenc.sparse.idf",
                                       "--task=dualenc_default", "--output={suite}/idf/default.json"],
                       "idf/default.json", 10)]
    base = ["--gin_file=runs/sparse_tiny_cpu.gin", "--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=8",
            "--gin.FLOPS_WARMUP_STEPS=1", "--gin.dualenc.sparse.SparseLoss.teachers="
            "[@bm25/dualenc.sparse.BM25Teacher()]", "--gin.IDF_PATH='{suite}/idf/default.json'",
            "--gin.dualenc.sparse.SparseEncoder.idf_trainable=False",
            # A random MLM head weighs half the vocabulary per document: pruned to 64 terms, the
            # tiny cell's index is small and its evaluation quick.
            "--gin.dualenc.sparse.SparseEncoder.prune_top_k=64"]
    cells = [_cell("default", query, "bm25", 1.0, 0, base, estimate=10)
             for query in QUERY_SIDES]
    return grid.Suite("sparse_tiny", steps, cells, render)
  steps, cells = [], []
  for dataset in datasets:
    spec = DATASETS[dataset]
    steps += [
        grid.Step(f"idf/{dataset}", [grid.PY, "-m", "dualenc.sparse.idf", spec["corpus"],
                                     f"--output={{suite}}/idf/{dataset}.json"],
                  f"idf/{dataset}.json", 30),
        # 1,000 texts of 128 tokens: the head's fit is shared by every cell of the dataset.
        grid.Step(f"mlm_head/{dataset}", [grid.PY, "-m", "dualenc.sparse.mlm_head",
                                          spec["corpus"], "--max_texts=1000", "--max_length=128",
                                          f"--output_dir={{suite}}/mlm_head/{dataset}"],
                  f"mlm_head/{dataset}/config.json", 240)]
    cells += [
        grid.Cell(f"{dataset}/reference/bm25", {"dataset": dataset, "reference": "bm25"},
                  [[grid.PY, "-m", "dualenc.evaluate", "--bm25", f"--beir_dir={spec['beir']}",
                    "--split=test", "--output_dir={dir}"]], "metrics.json", 20),
        grid.Cell(f"{dataset}/reference/dense", {"dataset": dataset, "reference": "dense"},
                  [[grid.PY, "-m", "dualenc.evaluate", "--hf_checkpoint={minilm}",
                    f"--beir_dir={spec['beir']}", "--split=test", "--max_length=128",
                    "--no_progress", "--output_dir={dir}"]], "metrics.json", 90)]
  # float32, as the sparse runs of runs/sparse_cpu.gin (bf16 is not measured for the MLM head's
  # max-pooled log-saturated weights).
  base = [f"--gin.TRAIN_STEPS={train_steps}",
          f"--gin.FLOPS_WARMUP_STEPS={max(1, train_steps // 4)}",
          f"--gin.optimizers.learning_rate_schedule.warmup_steps={max(1, train_steps // 10)}",
          f"--gin.EVAL_FEATURE_LENGTHS={EVAL_LENGTHS}",
          f"--gin.train.train.checkpoint_every_steps={train_steps}"]
  for seed in seeds:  # seed-major: every comparison gets its first seed before any its third
    for dataset in datasets:
      data = [f"--gin_file={DATASETS[dataset]['gin']}",
              f"--gin.IDF_PATH='{{suite}}/idf/{dataset}.json'",
              f"--gin.INITIAL_CHECKPOINT_PATH='{{suite}}/mlm_head/{dataset}'", *base]
      # IDF-aware vs idf = 1 first (with the lambda sweep on seed 0), then teachers.
      runs = [("idf", "ensemble", 1.0), ("ones", "ensemble", 1.0)]
      if seed == SWEEP_SEED:
        runs += [(query, "ensemble", m) for m in SWEEP for query in QUERY_SIDES]
      runs += [("idf", teacher, 1.0) for teacher in ("bm25", "dense", "infonce")]
      for query, teacher, multiple in runs:
        cells.append(_cell(dataset, query, teacher, multiple, seed, data, ESTIMATE_S[dataset]))
  return grid.Suite("sparse", steps, cells, render)


def _cell(dataset: str, query: str, teacher: str, multiple: float, seed: int, base: List[str],
          estimate: float) -> grid.Cell:
  train = [grid.PY, "-m", "dualenc.train", *base, "--gin.MODEL_DIR='{dir}'",
           f"--gin.SEED={seed}", f"--gin.FLOPS_LAMBDA={FLOPS_LAMBDA * multiple:g}",
           f"--gin.dualenc.sparse.SparseEncoder.query_encoder='{query}'",
           "--gin.train.train.progress_bar=False", *TEACHERS[teacher][1]]
  evaluate = [grid.PY, "-m", "dualenc.evaluate", "--checkpoint={dir}", "--no_progress",
              "--output_dir={dir}/eval"]
  name = f"{dataset}/{query}/{teacher}/lambda_x{multiple:g}/seed{seed}"
  factors = {"dataset": dataset, "query": query, "teacher": teacher,
             "flops_lambda_multiple": multiple, "seed": seed}
  return grid.Cell(name, factors, [train, evaluate], "eval/metrics.json", estimate)


# ------------------------------------------------------------------------------------------
# Table and figure.
# ------------------------------------------------------------------------------------------


def summarise(entries: Mapping[str, Any]) -> Dict[str, Any]:
  """Row key -> {metric: mean/std/n over seeds}; references keyed '<dataset>/reference/<name>'.

  Every trained row but the IDF-aware ensemble's also gets its NDCG@10 difference to the
  IDF-aware ensemble at the same λ, paired over the seeds both have run
  (grid.paired_difference): idf = 1 against IDF-aware at equal λ, a single teacher or InfoNCE
  against the ensemble."""
  out: Dict[str, Any] = {}
  ndcg_by_seed: Dict[str, Dict[int, float]] = {}
  for entry in entries.values():
    f = entry["factors"]
    if "reference" in f:
      out[f"{f['dataset']}/reference/{f['reference']}"] = {
          m: grid.seed_statistics([entry["metrics"][m]]) for m in METRICS
          if m in entry["metrics"]}
  for key, runs in grid.group(entries, ("dataset", "query", "teacher",
                                        "flops_lambda_multiple")).items():
    if key[1] is None:
      continue
    dataset, query, teacher, multiple = key
    row = f"{dataset}/{query}/{teacher}/x{multiple:g}"
    out[row] = dict(
        {m: grid.seed_statistics([r["metrics"][m] for r in runs]) for m in METRICS},
        seeds=sorted(r["factors"]["seed"] for r in runs), flops_lambda=FLOPS_LAMBDA * multiple)
    ndcg_by_seed[row] = {r["factors"]["seed"]: r["metrics"]["ndcg@10"] for r in runs}
  for row, by_seed in ndcg_by_seed.items():
    dataset, query, teacher, multiple = row.split("/")
    if (query, teacher) == ("idf", "ensemble"):  # the comparison's base
      continue
    base = ndcg_by_seed.get(f"{dataset}/idf/ensemble/{multiple}", {})
    delta = grid.paired_difference(by_seed, base)
    if delta:
      out[row]["delta_vs_idf_ensemble"] = dict(delta, metric="ndcg@10")
  return out


def _label(key: str) -> str:
  dataset, kind, name, *rest = key.split("/")
  del dataset
  if kind == "reference":
    return {"bm25": "BM25 (bm25s)", "dense": "all-MiniLM-L6-v2 (dense teacher, zero-shot)"}[name]
  multiple = float(rest[0][1:])
  lam = f", λ × {multiple:g}" if multiple != 1 else ""
  return f"{QUERY_SIDES[kind]}, {TEACHERS[name][0]}{lam}"


def render(suite: grid.Suite, entries: Mapping[str, Any], report: pathlib.Path) -> str:
  summary = summarise(entries)
  grid.write_json(report / "table.json", summary)
  lines = []
  for dataset in DATASETS:
    keys = [k for k in summary if k.startswith(dataset + "/")]
    if not keys:
      continue
    keys.sort(key=lambda k: (k.split("/")[1] != "reference", k.split("/")[2] != "ensemble",
                             float(k.split("/")[3][1:]) if k.count("/") == 3 else 0, k))
    lines += [f"**{dataset}** (test split; mean ± std over seeds)", "",
              f"| model | seeds | {' | '.join(METRICS)} | Δndcg@10 vs IDF-aware ensemble at "
              "equal λ (paired, ± s.e.) |", "|---" * (len(METRICS) + 3) + "|"]
    for key in keys:
      stats = summary[key]
      cells = [grid.mean_std_cell(stats[m], 4 if m in ("ndcg@10", "mrr@10", "recall@100")
                                  else 2) if m in stats else "" for m in METRICS]
      seeds = str(len(stats.get("seeds", [0])))
      cells.append(grid.difference_cell(stats.get("delta_vs_idf_ensemble")))
      lines.append(f"| {_label(key)} | {seeds} | " + " | ".join(cells) + " |")
    lines.append("")
  draw_tradeoff(summary, report / "figures")
  return "\n".join(lines).rstrip()


def draw_tradeoff(summary: Mapping[str, Any], out_dir: pathlib.Path) -> List[pathlib.Path]:
  """<dataset>_ndcg_vs_flops.png: NDCG@10 against FLOPS over the lambda sweep, one line per
  query side, BM25 and the dense teacher as horizontal lines."""
  from dualenc import analysis  # pylint: disable=g-import-not-at-top
  written = []
  for dataset in DATASETS:
    curves = {}
    for key, stats in summary.items():
      parts = key.split("/")
      if parts[0] == dataset and parts[1] in QUERY_SIDES and parts[2] == "ensemble":
        curves.setdefault(parts[1], []).append(
            (stats["flops"]["mean"], stats["ndcg@10"]["mean"], stats["ndcg@10"]["std"],
             float(parts[3][1:])))
    if not any(len(c) > 1 for c in curves.values()):
      continue
    plt = analysis.pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for (query, points), color in zip(sorted(curves.items()), ("tab:blue", "tab:red")):
      points.sort()
      x, y, err, multiple = (np.array(v) for v in zip(*points))
      ax.errorbar(x, y, yerr=err, marker="o", color=color, label=QUERY_SIDES[query], capsize=3)
      # Labels above and below the line in turn: the points of λ × 1/4 to × 4 sit close together.
      for i, (xi, yi, m) in enumerate(zip(x, y, multiple)):
        ax.annotate(f"λ×{m:g}", (xi, yi), textcoords="offset points",
                    xytext=(4, 5 if i % 2 else -11), fontsize=7)
    for name, style in (("bm25", ":"), ("dense", "--")):
      ref = summary.get(f"{dataset}/reference/{name}")
      if ref:
        ax.axhline(ref["ndcg@10"]["mean"], color="gray", linestyle=style,
                   label=_label(f"{dataset}/reference/{name}"))
    ax.set_xscale("log")
    from matplotlib import ticker  # pylint: disable=g-import-not-at-top
    # Plain numbers, not 4.1 x 10^0, on a few minor ticks: labelling all nine per decade puts
    # 0.9 on top of 1.0.
    ax.xaxis.set_minor_locator(ticker.LogLocator(subs=(2, 3, 4, 5, 7)))
    for axis_setter in (ax.xaxis.set_major_formatter, ax.xaxis.set_minor_formatter):
      axis_setter(ticker.FormatStrFormatter("%.1f"))
    ax.set_xlabel("FLOPS (expected multiply-adds per query-document pair)")
    ax.set_ylabel("NDCG@10")
    ax.set_title(f"{dataset}: accuracy against efficiency over the FLOPS weight λ")
    ax.legend(loc="best", fontsize=7)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    written.append(out_dir / f"{dataset}_ndcg_vs_flops.png")
    analysis.save_png(fig, written[-1])
    plt.close(fig)
  return written
