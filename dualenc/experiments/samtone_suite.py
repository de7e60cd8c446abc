"""Suite `samtone` (SamToNe paper, Tables 1-3 and Figures 1, 5, 6): towers x losses x datasets
x seeds, every cell the same fine-tuning budget from all-MiniLM-L6-v2, then the evaluator.

  cells     {SDE, ADE-SPL} x {in-batch softmax, PAIR (alpha 0.1), SamToNe query side, SamToNe
            both sides} on {SciFact, WikiQA (1 hard negative), the default dataset} x seeds;
            on WikiQA also SamToNe both sides with the id masks off (the paper's section 3.4)
  table     mean +- std over seeds of each cell's metrics, and the median top-1 similarity and
            sim(q_i,q_j)/sim(q_i,p_j) of its test embeddings
  figures   per dataset (seed 0): top-1 similarity and the qq/qp ratio of in-batch softmax and
            SamToNe overlaid (one panel per tower), and their t-SNE maps side by side
"""

from __future__ import annotations

import pathlib
from typing import Any, Dict, List, Mapping

import numpy as np

from dualenc.experiments import grid

LOSSES = {  # name -> (gin file, label, extra flags)
    "in_batch": ("losses/in_batch_softmax.gin", "in-batch softmax", []),
    "pair": ("losses/pair.gin", "PAIR (α = 0.1)", []),
    "samtone": ("losses/samtone.gin", "SamToNe (query side)", []),
    "samtone_both": ("losses/samtone_both.gin", "SamToNe (both sides, id masks)", []),
    "samtone_both_nomask": ("losses/samtone_both.gin", "SamToNe (both sides, no id masks)",
                            ["--gin.train.train.mask_false_negatives=False"]),
}
# The paper's comparisons first, PAIR (a second baseline) last, within each seed and dataset.
RUN_ORDER = ("in_batch", "samtone", "samtone_both", "samtone_both_nomask", "pair")
ARCHITECTURES = {"sde": "SDE", "ade_spl": "ADE-SPL"}
# SDE: one MiniLM for both sides. ADE-SPL: two MiniLMs and one shared projection (384 -> 384),
# identity at step 0 so both towers start from the pretrained embedding space.
ARCHITECTURE_FLAGS = {"sde": [], "ade_spl": ["--gin.towers.DualEncoder.embedding_dim=384",
                                             "--gin.towers.DualEncoder.projection_init='identity'"]}
# Per dataset: data gin, training lengths, evaluation lengths, evaluation flags, metrics shown.
DATASETS = {
    "scifact": dict(gin="data/scifact.gin", train="{'inputs': 32, 'targets': 128}",
                    eval="{'inputs': 64, 'targets': 128}", eval_flags=[],
                    metrics=("ndcg@10", "mrr@10", "recall@100")),
    "wikiqa": dict(gin="data/wikiqa_hard_negatives.gin",
                   train="{'inputs': 32, 'targets': 64, 'negative_targets': [1, 64]}",
                   eval="{'inputs': 32, 'targets': 64}",
                   eval_flags=["--beir_dir={data}/wikiqa/test"], metrics=("p@1", "mrr@10", "ndcg@10")),
    "default": dict(gin="data/default.gin", train="{'inputs': 32, 'targets': 128}",
                    eval="{'inputs': 64, 'targets': 128}", eval_flags=[],
                    metrics=("ndcg@10", "mrr@10", "recall@100")),
}
# Measured on the 2-core dev machine (train + evaluate + figure data), seconds per cell.
ESTIMATE_S = {"scifact": 330, "wikiqa": 240, "default": 250}
FIGURE_LOSSES = ("in_batch", "samtone")
SHOWN_ANALYSIS = ("top1_median", "ratio_median")


def build(*, scale: str = "cpu", seeds=(0, 1, 2), datasets=("scifact", "wikiqa", "default"),
          train_steps: int = 20) -> grid.Suite:
  """The grid; scale='tiny' is the two-cell, tiny-model version the tests run."""
  if scale == "tiny":
    base = ["--gin_file=runs/tiny_cpu.gin", "--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=8",
            "--gin.towers.DualEncoder.architecture='sde'"]
    cells = [_cell("default", "sde", loss, 0, base, tiny=True) for loss in FIGURE_LOSSES]
    return grid.Suite("samtone_tiny", [], cells, render)
  base = ["--gin_file=runs/finetune.gin", f"--gin.TRAIN_STEPS={train_steps}",
          "--gin.BATCH_SIZE=32", "--gin.COMPUTE_DTYPE='bfloat16'", "--gin.TEMPERATURE=0.05",
          "--gin.optimizers.learning_rate_schedule.base_learning_rate=5e-5",
          f"--gin.optimizers.learning_rate_schedule.warmup_steps={max(1, train_steps // 10)}",
          f"--gin.train.train.checkpoint_every_steps={train_steps}"]
  cells = []
  # Seed-major: every comparison gets its first seed before any gets its third.
  for seed in seeds:
    for dataset in sorted(datasets, key=("default", "wikiqa", "scifact").index):
      for loss in RUN_ORDER:
        if loss == "samtone_both_nomask" and dataset != "wikiqa":
          continue
        for arch in ARCHITECTURES:
          cells.append(_cell(dataset, arch, loss, seed, base))
  return grid.Suite("samtone", [], cells, render)


def _cell(dataset: str, arch: str, loss: str, seed: int, base: List[str],
          tiny: bool = False) -> grid.Cell:
  spec = DATASETS[dataset]
  loss_gin, _, extra = LOSSES[loss]
  train = [grid.PY, "-m", "dualenc.train", *base, f"--gin_file=architectures/{arch}.gin",
           f"--gin_file={loss_gin}", "--gin.MODEL_DIR='{dir}'", f"--gin.SEED={seed}",
           "--gin.train.train.progress_bar=False", *extra]
  if not tiny:
    train[4:4] = [f"--gin_file={spec['gin']}", f"--gin.TASK_FEATURE_LENGTHS={spec['train']}",
                  f"--gin.EVAL_FEATURE_LENGTHS={spec['eval']}"]
    train += ARCHITECTURE_FLAGS[arch]
  # Trained in bf16 (faster here), encoded in float32: bf16 encoding measured 1.5x slower on
  # this CPU (SciFact's 5,183 abstracts: 189 s vs 124 s), with NDCG@10 within 0.002.
  evaluate = [grid.PY, "-m", "dualenc.evaluate", "--checkpoint={dir}", "--no_progress",
              "--output_dir={dir}/eval", *([] if tiny else ["--dtype=float32"]),
              *spec["eval_flags"]]
  name = f"{dataset}/{arch}/{loss}/seed{seed}"
  factors = {"dataset": dataset, "architecture": arch, "loss": loss, "seed": seed}
  wants_figure = seed == 0 and loss in FIGURE_LOSSES
  return grid.Cell(name, factors, [train, evaluate], "eval/metrics.json",
                   5 if tiny else ESTIMATE_S[dataset],
                   after=lambda cell_dir, report: figure_data(cell_dir, report, name, dataset,
                                                               wants_figure))


# ------------------------------------------------------------------------------------------
# Figure data: from the evaluation's cached embeddings, right after a cell.
# ------------------------------------------------------------------------------------------


def figure_data(cell_dir: pathlib.Path, report: pathlib.Path, name: str, dataset: str,
                keep_arrays: bool) -> Dict[str, Any]:
  """Median top-1 similarity and qq/qp ratio of the cell's test embeddings (for the table);
  for figure cells also the arrays (top-1 similarities, 5,000 ratios, t-SNE coordinates) as
  REPORT/figure_data/<name>.npz, float16."""
  from dualenc import analysis  # pylint: disable=g-import-not-at-top
  queries, docs, positives = _embeddings(cell_dir / "eval", dataset)
  top1 = analysis.top1_similarity(queries, docs)
  pairs = analysis.qq_qp_ratios(queries, docs[positives], num_pairs=20000, seed=0)
  ratio = pairs["ratio"][np.isfinite(pairs["ratio"])]
  out = {"analysis": {"top1_median": float(np.median(top1)),
                      "ratio_median": float(np.median(ratio)),
                      "qq_mean": float(np.mean(pairs["qq"])),
                      "qp_mean": float(np.mean(pairs["qp"]))}}
  if keep_arrays:
    tsne = analysis.tsne_points(queries, docs, max_points=600, seed=0)
    path = report / "figure_data" / (name.replace("/", "__") + ".npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, top1=top1.astype(np.float16), ratio=ratio[:5000].astype(np.float16),
                        tsne_queries=tsne["queries"].astype(np.float16),
                        tsne_documents=tsne["documents"].astype(np.float16))
  return out


def beir_dir(dataset: str) -> pathlib.Path:
  """The BEIR folder a dataset's test queries and qrels come from."""
  if dataset == "default":
    from dualenc.data import default_dataset  # pylint: disable=g-import-not-at-top
    return default_dataset.build()
  return pathlib.Path(grid.data_dir()) / {"scifact": "scifact", "wikiqa": "wikiqa/test"}[dataset]


def _embeddings(eval_dir: pathlib.Path, dataset: str):
  """(queries [Q, D] that have a relevant corpus document, corpus [N, D], row of each query's
  best-graded positive [Q]) of an evaluation, from its embedding cache."""
  import json  # pylint: disable=g-import-not-at-top
  from dualenc import analysis  # pylint: disable=g-import-not-at-top
  from dualenc.data import readers  # pylint: disable=g-import-not-at-top
  cache = eval_dir / "embeddings"
  (doc_meta,) = sorted(cache.glob("*.document.json"))
  task = doc_meta.name[:-len(".document.json")]
  docs = np.load(cache / f"{task}.document.npy")
  queries = np.load(cache / f"{task}.query.npy")
  doc_ids = json.loads(doc_meta.read_text())["ids"]
  query_ids = json.loads((cache / f"{task}.query.json").read_text())["ids"]
  qrels = readers.open_dataset(beir_dir(dataset), "beir").eval_data("test").qrels
  corpus = set(doc_ids)
  keep = [i for i, q in enumerate(query_ids)
          if any(g > 0 and d in corpus for d, g in qrels.get(q, {}).items())]
  positives = analysis.positives_of([query_ids[i] for i in keep], qrels, doc_ids)
  return queries[keep], docs, positives


# ------------------------------------------------------------------------------------------
# Table and figures.
# ------------------------------------------------------------------------------------------


def summarise(entries: Mapping[str, Any]) -> Dict[str, Any]:
  """(dataset, architecture, loss) -> {metric: mean/std/n over seeds}, plus each loss's
  difference to in-batch softmax on the dataset's first metric, paired over the seeds both
  have run (grid.paired_difference)."""
  out: Dict[str, Any] = {}
  by_seed: Dict[str, Dict[int, float]] = {}  # key -> seed -> the dataset's first metric
  for (dataset, arch, loss), runs in grid.group(
      entries, ("dataset", "architecture", "loss")).items():
    names = DATASETS[dataset]["metrics"]
    stats = {m: grid.seed_statistics([r["metrics"][m] for r in runs]) for m in names}
    for key in SHOWN_ANALYSIS:
      stats[key] = grid.seed_statistics([r["analysis"][key] for r in runs])
    stats["seeds"] = sorted(r["factors"]["seed"] for r in runs)
    out[f"{dataset}/{arch}/{loss}"] = stats
    by_seed[f"{dataset}/{arch}/{loss}"] = {r["factors"]["seed"]: r["metrics"][names[0]]
                                           for r in runs}
  for key, stats in out.items():
    dataset, arch, loss = key.split("/")
    if loss == "in_batch":
      continue
    delta = grid.paired_difference(by_seed[key], by_seed.get(f"{dataset}/{arch}/in_batch", {}))
    if delta:
      stats["delta_vs_in_batch"] = dict(delta, metric=DATASETS[dataset]["metrics"][0])
  return out


def render(suite: grid.Suite, entries: Mapping[str, Any], report: pathlib.Path) -> str:
  """Markdown tables (one per dataset), table.json and the figures under REPORT/figures/."""
  summary = summarise(entries)
  grid.write_json(report / "table.json", summary)
  lines = []
  for dataset, spec in DATASETS.items():
    rows = [(k.split("/")[1], k.split("/")[2]) for k in summary if k.startswith(dataset + "/")]
    if not rows:
      continue
    metrics = spec["metrics"]
    lines += [f"**{dataset}** (test split; mean ± std over seeds)", "",
              f"| tower | loss | seeds | {' | '.join(metrics)} | Δ{metrics[0]} vs in-batch "
              "(paired, ± s.e.) | median top-1 cos | median qq/qp |",
              "|---" * (len(metrics) + 6) + "|"]
    for arch in ARCHITECTURES:
      for loss in LOSSES:
        stats = summary.get(f"{dataset}/{arch}/{loss}")
        if stats is None:
          continue
        lines.append("| " + " | ".join(
            [ARCHITECTURES[arch], LOSSES[loss][1], str(len(stats["seeds"]))]
            + [grid.mean_std_cell(stats[m]) for m in metrics]
            + [grid.difference_cell(stats.get("delta_vs_in_batch"))]
            + [grid.mean_std_cell(stats[k], 3) for k in SHOWN_ANALYSIS]) + " |")
    lines.append("")
  draw_figures(report)
  return "\n".join(lines).rstrip()


def draw_figures(report: pathlib.Path) -> List[pathlib.Path]:
  """REPORT/figures/<dataset>_{top1,ratio,tsne}.png from REPORT/figure_data (seed 0)."""
  from dualenc import analysis  # pylint: disable=g-import-not-at-top
  data_dir, out_dir = report / "figure_data", report / "figures"
  written = []
  for dataset in DATASETS:
    arrays = {}
    for arch in ARCHITECTURES:
      for loss in FIGURE_LOSSES:
        path = data_dir / f"{dataset}__{arch}__{loss}__seed0.npz"
        if path.exists():
          with np.load(path) as f:
            arrays[arch, loss] = {k: f[k].astype(np.float32) for k in f.files}
    archs = [a for a in ARCHITECTURES if all((a, l) in arrays for l in FIGURE_LOSSES)]
    if not archs:
      continue
    out_dir.mkdir(parents=True, exist_ok=True)
    plt = analysis.pyplot()
    for key, xlabel in (("top1", "cos(q, top-1 document)"),
                        ("ratio", "sim(q_i, q_j) / sim(q_i, p_j), i != j (central 90%)")):
      fig, axes = plt.subplots(1, len(archs), figsize=(5 * len(archs), 3.6), squeeze=False)
      for ax, arch in zip(axes[0], archs):
        values = [arrays[arch, l][key] for l in FIGURE_LOSSES]
        both = np.concatenate(values)
        lo, hi = ((np.quantile(both, 0.05), np.quantile(both, 0.95)) if key == "ratio"
                  else (both.min(), both.max()))
        bins = np.linspace(lo, hi, 41)
        for loss, v, color in zip(FIGURE_LOSSES, values, ("tab:blue", "tab:red")):
          ax.hist(v[(v >= lo) & (v <= hi)], bins=bins, alpha=0.5, color=color,
                  label=f"{LOSSES[loss][1]} (median {np.median(v):.2f})")
        ax.set_title(f"{dataset}, {ARCHITECTURES[arch]}")
        ax.set_xlabel(xlabel)
        ax.legend(loc="best", fontsize=8)
      fig.tight_layout()
      written.append(out_dir / f"{dataset}_{key}.png")
      analysis.save_png(fig, written[-1])
      plt.close(fig)
    fig, axes = plt.subplots(len(archs), 2, figsize=(7, 3.5 * len(archs)), squeeze=False)
    for row, arch in zip(axes, archs):
      for ax, loss in zip(row, FIGURE_LOSSES):
        points = arrays[arch, loss]
        ax.scatter(*points["tsne_documents"].T, s=3, alpha=0.5, color="tab:orange",
                   label="documents")
        ax.scatter(*points["tsne_queries"].T, s=3, alpha=0.5, color="tab:blue", label="queries")
        ax.set_title(f"{ARCHITECTURES[arch]}, {LOSSES[loss][1]}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][0].legend(loc="best", markerscale=3, fontsize=8)
    fig.suptitle(f"t-SNE of test queries and documents ({dataset})", fontsize=10)
    fig.tight_layout()
    written.append(out_dir / f"{dataset}_tsne.png")
    analysis.save_png(fig, written[-1])
    plt.close(fig)
  return written
