r"""Mine hard negatives with BM25 (or a dense model) and write teacher scores: JSONL training data.

  python -m dualenc.sparse.mine --beir_dir=../shared/data/scifact --split=train \
      --output=runs/mined/scifact/train.jsonl --negatives=2 --dense_teacher=$MINILM

For every judged (query, positive) pair of the split: the top-ranked documents of the miner
(`--miner=bm25`: dualenc.sparse.bm25, i.e. bm25s with English stop words and Snowball
stemming; or `--miner=dense`: the dense
teacher's exact search) that are not judged relevant become its hard negatives, and each teacher
scores the query against [positive, negatives...]: `bm25` always, `dense` with
--dense_teacher (cosine of a Hugging Face / sentence-transformers model's embeddings). One
record per line, the `jsonl` format (`dualenc.data.readers`):

  {"query_id", "query", "positive_id", "positive", "negatives": [...],
   "teacher_scores": {"bm25": [s_pos, s_neg1, ...], "dense": [...]}}

Train on it with `register_dataset.format = 'jsonl'` and a PrecomputedTeacher per teacher
(`SparseLoss.candidates = 'own'`).
"""

from __future__ import annotations

if __name__ == "__main__":  # run as dualenc.X, not __main__: see dualenc/cli.py
  from dualenc import cli
  cli.run_program(__spec__.name)

import argparse
import json
from typing import Dict, List, Optional, Sequence

import numpy as np

from dualenc import fs
from dualenc.sparse import bm25

def dense_score_matrix(hf_checkpoint, queries: Sequence[str], doc_ids: Sequence[str],
                       docs: Sequence[str], max_length: Optional[int] = None) -> np.ndarray:
  """[Q, N] cosine similarities from a dense model's shared tower (texts cut at max_length
  tokens; None: the model's own limit, e.g. all-MiniLM-L6-v2's 256)."""
  from dualenc.evaluation import loading, retrieval  # pylint: disable=g-import-not-at-top
  encoders = retrieval.ModelEncoders(loading.from_hf_checkpoint(hf_checkpoint,
                                                                max_length=max_length))
  d = encoders.encode("document", list(doc_ids), list(docs))
  q = encoders.encode("query", [str(i) for i in range(len(queries))], list(queries))
  return q @ d.T


def mine(eval_data, *, negatives: int, miner: str, dense_teacher=None,
         dense_max_length: Optional[int] = None, depth: int = 100) -> List[Dict]:
  """Records (see the module docstring) for every judged pair of an EvalData."""
  doc_ids, docs = list(eval_data.corpus_ids), list(eval_data.corpus_texts)
  judged = [q for q in eval_data.query_ids if q in eval_data.qrels]
  query_text = dict(zip(eval_data.query_ids, eval_data.query_texts))
  queries = [query_text[q] for q in judged]
  scores = {"bm25": bm25.BM25Searcher(docs).scores(queries)}
  if dense_teacher:
    scores["dense"] = dense_score_matrix(dense_teacher, queries, doc_ids, docs,
                                         dense_max_length)
  if miner not in scores:
    raise ValueError(f"--miner={miner!r} needs its teacher (--dense_teacher for 'dense')")
  row_of = {d: i for i, d in enumerate(doc_ids)}
  records = []
  for i, qid in enumerate(judged):
    relevant = {d for d, g in eval_data.qrels[qid].items() if g > 0 and d in row_of}
    ranked = np.argsort(-scores[miner][i], kind="stable")[:depth]
    hard = [int(j) for j in ranked if doc_ids[j] not in relevant][:negatives]
    for positive in sorted(relevant):
      columns = [row_of[positive]] + hard
      records.append({
          "query_id": qid, "query": queries[i], "positive_id": positive,
          "positive": docs[row_of[positive]], "negatives": [docs[j] for j in hard],
          "teacher_scores": {name: [float(m[i, j]) for j in columns]
                             for name, m in scores.items()}})
  return records


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m dualenc.sparse.mine", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--beir_dir", required=True)
  parser.add_argument("--split", default="train")
  parser.add_argument("--output", required=True, help="JSONL file to write (local or gs://)")
  parser.add_argument("--negatives", type=int, default=2)
  parser.add_argument("--miner", choices=("bm25", "dense"), default="bm25")
  parser.add_argument("--dense_teacher", default=None,
                      help="Hugging Face / sentence-transformers dense model directory")
  parser.add_argument("--max_length", type=int, default=None,
                      help="tokens of each text the dense teacher reads (default: its own limit)")
  args = parser.parse_args(argv)
  from dualenc.data import readers  # pylint: disable=g-import-not-at-top
  records = mine(readers.open_dataset(args.beir_dir, "beir").eval_data(args.split),
                 negatives=args.negatives, miner=args.miner, dense_teacher=args.dense_teacher,
                 dense_max_length=args.max_length)
  fs.write_text(args.output, "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                     for r in records))
  print(f"{len(records)} records with {args.negatives} hard negatives ({args.miner}) and "
        f"teacher scores {sorted(records[0]['teacher_scores']) if records else []} -> "
        f"{args.output}")
  return 0
