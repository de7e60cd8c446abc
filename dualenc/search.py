r"""Answer queries typed on the shell from a saved index (`--save_index` of dualenc.evaluate).

  python -m dualenc.search --index_dir=runs/tiny/index --k=3 --query="parse a date"
  echo "sort a list in place" | python -m dualenc.search --index_dir=runs/tiny/index

--k results per query (default 10), --query repeatable. Without --query, reads one query per line from standard input until EOF (prompting when it is
a terminal). The query tower is loaded as the index's metadata says: the Hugging Face
checkpoint, or the dualenc checkpoint with the gin config it was evaluated with. Each hit is
printed as `rank  score  doc_id  text...`.
"""

from __future__ import annotations

if __name__ == "__main__":  # run as dualenc.X, not __main__: see dualenc/cli.py
  from dualenc import cli
  cli.run_program(__spec__.name)

import argparse
import logging
import sys
from typing import Iterable, List, Optional, Sequence, Tuple

from dualenc import evaluate  # first: it sets the CPU device count before JAX starts
import gin

from dualenc.evaluation import encode
from dualenc.evaluation import loading
from dualenc.evaluation import search


def load_query_model(metadata: dict) -> loading.RetrievalModel:
  """The model an index was built with, from its saved `metadata['model']`."""
  source = metadata.get("model") or {}
  if source.get("hf_checkpoint"):
    return loading.from_hf_checkpoint(
        source["hf_checkpoint"], dtype=source.get("dtype", "float32"),
        max_length=source.get("max_length"), pooling=source.get("pooling"),
        normalize=source.get("normalize"))
  if source.get("dualenc_checkpoint") and source.get("gin_config"):
    from dualenc.evaluation import retrieval  # pylint: disable=g-import-not-at-top
    evaluate._import_task_modules()  # pylint: disable=protected-access
    gin.clear_config()
    gin.parse_config(source["gin_config"])
    model, task_names, feature_lengths, _ = evaluate.eval_task()
    names = retrieval.leaf_task_names(task_names)
    return loading.from_dualenc_checkpoint(model, source["dualenc_checkpoint"],
                                           retrieval.task_vocabulary(names[0]), feature_lengths)
  raise ValueError(f"the index does not say how to load its query encoder (metadata {source}); "
                   "rebuild it with python -m dualenc.evaluate ... --save_index=DIR")


class QueryEngine:
  """Index + query tower: `search(["text", ...], k)` -> [[(doc id, score, text)]]."""

  def __init__(self, index: search.Index, model: loading.RetrievalModel):
    self.index, self.model = index, model
    self.tower = encode.TowerEncoder(model.model, model.params, "query")

  def search(self, queries: Sequence[str], k: int) -> List[List[Tuple[str, float, str]]]:
    embeddings = encode.encode_texts(self.tower, self.model.query_tokenizer, list(queries),
                                     encode.EncodeOptions(progress=False))
    texts = self.index.doc_texts
    row = {d: i for i, d in enumerate(self.index.doc_ids)}
    return [[(d, s, texts[row[d]] if texts else "") for d, s in hits]
            for hits in self.index.search(embeddings, k)]


def _lines(stream) -> Iterable[str]:
  interactive = stream.isatty()
  while True:
    if interactive:
      print("query> ", end="", flush=True)
    line = stream.readline()
    if not line:
      return
    if line.strip():
      yield line.strip()


def main(argv: Optional[Sequence[str]] = None) -> int:
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
  parser = argparse.ArgumentParser(prog="python -m dualenc.search", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--index_dir", required=True, help="directory written by --save_index")
  parser.add_argument("--k", type=int, default=10, help="results per query")
  parser.add_argument("--query", action="append", default=[], help="query text (repeatable)")
  parser.add_argument("--width", type=int, default=100, help="characters of text shown")
  args = parser.parse_args(argv)
  try:
    index = search.Index.load(args.index_dir)
    engine = QueryEngine(index, load_query_model(index.metadata))
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  queries = args.query or _lines(sys.stdin)
  for query in queries:
    (hits,) = engine.search([query], args.k)
    print(f"# {query}")
    for rank, (doc_id, score, text) in enumerate(hits, start=1):
      snippet = " ".join(text.split())[:args.width]
      print(f"{rank:3d}  {score:.4f}  {doc_id}  {snippet}")
    sys.stdout.flush()
  return 0

