r"""Embedding-space analysis of a dual encoder (SamToNe paper, figures 1, 5 and 6), as PNGs.

  python -m dualenc.analysis --checkpoint=runs/tiny/checkpoints/30 --output_dir=runs/tiny/analysis
  python -m dualenc.analysis --hf_checkpoint=$MINILM --beir_dir=../shared/data/scifact \
      --cache_dir=runs/eval/minilm_scifact/embeddings --output_dir=runs/eval/analysis

(the flags of dualenc.evaluate select model and data; --task picks one task of a mixture;
--cache_dir reuses an evaluation's embeddings) writes
  tsne.png              t-SNE of query-tower embeddings of queries and document-tower
                        embeddings of documents in one plane (figure 1: do the towers share
                        one space, or does each side form its own cluster?)
  top1_similarity.png   histogram of cos(q, top-1 retrieved document) over queries (figure 5)
  qq_qp_ratio.png       histogram of sim(q_i, q_j) / sim(q_i, p_j) for random pairs i != j,
                        p_j the best-graded relevant document of q_j (figure 6: how close
                        queries sit to each other relative to other queries' documents; the
                        central 90% is drawn, small denominators give long tails)
  analysis.json         the numbers behind the histograms (quantiles, counts)
"""

from __future__ import annotations

if __name__ == "__main__":  # run as dualenc.X, not __main__: see dualenc/cli.py
  from dualenc import cli
  cli.run_program(__spec__.name)

import io
import json
import logging
import sys
from typing import Any, Dict, Optional, Sequence

from dualenc import evaluate  # first: it sets the CPU device count before JAX starts
from dualenc import fs
import numpy as np


def top1_similarity(query_embeddings: np.ndarray, doc_embeddings: np.ndarray) -> np.ndarray:
  """[Q] cosine similarity between each query and its nearest document (exact)."""
  q = _unit(query_embeddings)
  d = _unit(doc_embeddings)
  from dualenc.evaluation import search  # pylint: disable=g-import-not-at-top
  scores, _ = search.ExactSearcher(d).search(q, 1)
  return scores[:, 0].astype(np.float64)


def qq_qp_ratios(query_embeddings: np.ndarray, positive_embeddings: np.ndarray,
                 num_pairs: int = 20000, seed: int = 0) -> Dict[str, np.ndarray]:
  """sim(q_i, q_j) / sim(q_i, p_j) for random ordered pairs i != j (cosine similarities).

  positive_embeddings[j] is query j's positive document. Returns {'i', 'j', 'qq', 'qp',
  'ratio'} arrays of the sampled pairs.
  """
  q, p = _unit(query_embeddings), _unit(positive_embeddings)
  if len(q) != len(p) or len(q) < 2:
    raise ValueError(f"need >= 2 queries each with a positive; got {len(q)} and {len(p)}")
  rng = np.random.default_rng(seed)
  i = rng.integers(0, len(q), num_pairs)
  j = (i + rng.integers(1, len(q), num_pairs)) % len(q)  # uniform over j != i
  qq = np.einsum("nd,nd->n", q[i], q[j], dtype=np.float64)
  qp = np.einsum("nd,nd->n", q[i], p[j], dtype=np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    ratio = qq / qp
  return {"i": i, "j": j, "qq": qq, "qp": qp, "ratio": ratio}


def _unit(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def tsne_points(query_embeddings: np.ndarray, doc_embeddings: np.ndarray, max_points: int = 1000,
                seed: int = 0) -> Dict[str, np.ndarray]:
  """2-D t-SNE (cosine metric) of up to max_points queries and max_points documents, jointly."""
  from sklearn.manifold import TSNE  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  pick = lambda x: x[np.sort(rng.permutation(len(x))[:max_points])]
  q, d = pick(_unit(query_embeddings)), pick(_unit(doc_embeddings))
  points = np.concatenate([q, d])
  perplexity = float(min(30, max(2, (len(points) - 1) // 3)))
  xy = TSNE(n_components=2, metric="cosine", init="pca", perplexity=perplexity,
            random_state=seed).fit_transform(points)
  return {"queries": xy[:len(q)], "documents": xy[len(q):]}


def pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def save_png(fig, path) -> None:
  """PNG through dualenc.fs (matplotlib writes local files only)."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=120)
  fs.write_bytes(path, buffer.getvalue())


def plot_tsne(points: Dict[str, np.ndarray], path, title: str) -> None:
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(6, 6))
  ax.scatter(*points["documents"].T, s=6, alpha=0.5, label="documents (document tower)",
             color="tab:orange")
  ax.scatter(*points["queries"].T, s=6, alpha=0.5, label="queries (query tower)",
             color="tab:blue")
  ax.set_title(title)
  ax.legend(loc="best", markerscale=3)
  ax.set_xticks([])
  ax.set_yticks([])
  fig.tight_layout()
  save_png(fig, path)
  plt.close(fig)


def plot_histogram(values: np.ndarray, path, title: str, xlabel: str,
                   clip_quantiles: Optional[Sequence[float]] = None) -> Dict[str, float]:
  """Histogram PNG of the finite values (optionally within quantiles); returns a summary."""
  plt = pyplot()
  finite = values[np.isfinite(values)]
  shown = finite
  if clip_quantiles is not None and len(finite):
    lo, hi = np.quantile(finite, clip_quantiles)
    shown = finite[(finite >= lo) & (finite <= hi)]
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.hist(shown, bins=50, color="tab:blue", alpha=0.8)
  median = float(np.median(finite)) if len(finite) else float("nan")
  ax.axvline(median, color="black", linestyle="--", linewidth=1, label=f"median {median:.3f}")
  ax.set_title(title)
  ax.set_xlabel(xlabel)
  ax.set_ylabel("count")
  ax.legend(loc="best")
  fig.tight_layout()
  save_png(fig, path)
  plt.close(fig)
  quantiles = np.quantile(finite, [0.05, 0.25, 0.5, 0.75, 0.95]) if len(finite) else [np.nan] * 5
  return {"count": int(len(values)), "finite": int(len(finite)), "shown": int(len(shown)),
          "mean": float(np.mean(finite)) if len(finite) else float("nan"),
          **{f"q{int(q * 100):02d}": float(v) for q, v in
             zip([0.05, 0.25, 0.5, 0.75, 0.95], quantiles)}}


def make_figures(query_embeddings: np.ndarray, doc_embeddings: np.ndarray,
                 positive_index: np.ndarray, output_dir, *, name: str = "",
                 tsne_max_points: int = 1000, num_pairs: int = 20000,
                 seed: int = 0) -> Dict[str, Any]:
  """The three figures and analysis.json for one task.

  Args:
    query_embeddings: [Q, D] query-tower embeddings of the judged queries.
    doc_embeddings: [N, D] document-tower embeddings of the corpus.
    positive_index: [Q] corpus row of each query's positive (first relevant) document.
  Returns:
    {'tsne', 'top1_similarity', 'qq_qp_ratio', 'summary'}: paths written.
  """
  output_dir = fs.path(output_dir)
  suffix = f" ({name})" if name else ""
  paths = {key: output_dir / f"{key}.png" for key in ("tsne", "top1_similarity", "qq_qp_ratio")}
  plot_tsne(tsne_points(query_embeddings, doc_embeddings, tsne_max_points, seed), paths["tsne"],
            f"t-SNE of query and document embeddings{suffix}")
  top1 = top1_similarity(query_embeddings, doc_embeddings)
  summary = {"top1_similarity": plot_histogram(
      top1, paths["top1_similarity"], f"cosine similarity to the top-1 document{suffix}",
      "cos(q, top-1 document)")}
  pairs = qq_qp_ratios(query_embeddings, doc_embeddings[positive_index], num_pairs, seed)
  summary["qq_qp_ratio"] = plot_histogram(
      pairs["ratio"], paths["qq_qp_ratio"], f"sim(q_i, q_j) / sim(q_i, p_j), i != j{suffix}",
      "sim(q_i, q_j) / sim(q_i, p_j)   (central 90% shown)",
      clip_quantiles=(0.05, 0.95))
  summary["qq_similarity_mean"] = float(np.mean(pairs["qq"]))
  summary["qp_similarity_mean"] = float(np.mean(pairs["qp"]))
  paths["summary"] = output_dir / "analysis.json"
  fs.write_text(paths["summary"], json.dumps(summary, indent=2, sort_keys=True) + "\n")
  return paths


def positives_of(query_ids: Sequence[str], qrels, doc_ids: Sequence[str]) -> np.ndarray:
  """Corpus row of each query's best-graded relevant document (ties: first in corpus order)."""
  row = {d: i for i, d in enumerate(doc_ids)}
  out = []
  for qid in query_ids:
    judged = [(g, -row[d]) for d, g in qrels.get(qid, {}).items() if g > 0 and d in row]
    if not judged:
      raise ValueError(f"query {qid!r} has no relevant document in the corpus")
    out.append(-max(judged)[1])
  return np.asarray(out, np.int64)


def main(argv: Optional[Sequence[str]] = None) -> int:
  from dualenc import gin_utils  # pylint: disable=g-import-not-at-top
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
  parser = evaluate.build_parser()
  parser.prog, parser.description = "python -m dualenc.analysis", __doc__
  parser.add_argument("--task", help="task to analyse (default: the first of the mixture)")
  parser.add_argument("--tsne_points", type=int, default=1000)
  bindings, rest = gin_utils.split_gin_overrides(list(sys.argv[1:] if argv is None else argv))
  args = parser.parse_args(rest)
  if not args.output_dir:
    parser.error("--output_dir is required")
  setup = evaluate.prepare(args, bindings, parser, task=args.task)
  name, load = next(iter(setup.tasks.items()))
  encoders = setup.encoders
  if getattr(setup.retrieval_model.model, "architecture", "") == "sparse":
    parser.error("the embedding-space figures are for dense towers; a sparse model's "
                 "efficiency figures (doc_nnz, query_nnz, flops) are in dualenc.evaluate's "
                 "metrics.json")
  from dualenc.evaluation import retrieval  # pylint: disable=g-import-not-at-top
  checked = retrieval.check_eval_data(load(), name)
  cache_dir = evaluate.cache_dir_of(args, fs.path(args.output_dir))
  docs = encoders.encode("document", checked.doc_ids, checked.doc_texts, cache_dir=cache_dir,
                         cache_name=f"{name}.document")
  queries = encoders.encode("query", checked.query_ids, checked.query_texts,
                            cache_dir=cache_dir, cache_name=f"{name}.query")
  corpus = set(checked.doc_ids)
  keep = [i for i, q in enumerate(checked.query_ids)
          if any(g > 0 and d in corpus for d, g in checked.qrels[q].items())]
  paths = make_figures(queries[keep], docs,
                       positives_of([checked.query_ids[i] for i in keep], checked.qrels,
                                    checked.doc_ids), args.output_dir, name=name,
                       tsne_max_points=args.tsne_points)
  for key, path in paths.items():
    print(f"{key}: {path}")
  return 0

