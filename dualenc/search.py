r"""Answer queries typed on the shell from a saved index (`--save_index` of dualenc.evaluate).

  python -m dualenc.search --index_dir=runs/tiny/index --k=3 --query="parse a date"
  echo "sort a list in place" | python -m dualenc.search --index_dir=runs/tiny/index

--k results per query (default 10), --query repeatable. Without --query, reads one query per
line from standard input until EOF (prompting when it is a terminal). Each hit is printed as
`rank  score  doc_id  text...`; --timing adds each query's milliseconds (query string to top-k
ids).

An inference-free sparse index answers with no model at all: the WordPiece tokenizer and IDF
table saved in it (`query_encoder/`), an inverted index (or Seismic) in NumPy; nothing of JAX,
Flax or TensorFlow is imported. `--query_encoder=DIR` uses another saved query side (refused
when its vocabulary or IDF table is not the index's). A query with no known word piece prints
`(no known terms: 0 results)`. Dense (and siamese sparse) indexes load their query tower as the
index's metadata says: the Hugging Face checkpoint, or the dualenc checkpoint with the gin config
it was evaluated with.
"""

from __future__ import annotations

if __name__ == "__main__":  # run as dualenc.X, not __main__: see dualenc/cli.py
  from dualenc import cli
  cli.run_program(__spec__.name)

import argparse
import logging
import sys
import time
from typing import Iterable, List, Optional, Sequence, Tuple

from dualenc import index as index_lib


def load_query_model(metadata: dict):
  """The model an index was built with (a loading.RetrievalModel), from `metadata['model']`."""
  # JAX starts here, only for indexes whose queries need a model. dualenc.evaluate first: it
  # sets the CPU device count before JAX starts.
  from dualenc import evaluate  # pylint: disable=g-import-not-at-top
  import gin  # pylint: disable=g-import-not-at-top
  from dualenc.evaluation import loading  # pylint: disable=g-import-not-at-top
  source = metadata.get("model") or {}
  if source.get("hf_checkpoint"):
    return loading.from_hf_checkpoint(
        source["hf_checkpoint"], dtype=source.get("dtype", "float32"),
        max_length=source.get("max_length"), pooling=source.get("pooling"),
        normalize=source.get("normalize"), sparse=source.get("sparse", "auto"),
        missing_idf=source.get("missing_idf", 0.0))
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
  """An index and its query side: `search(["text", ...], k)` -> [[(doc id, score, text)]].

  model: a loading.RetrievalModel whose query tower encodes the queries; None for an index
  with a model-free query encoder (inference-free sparse).
  """

  def __init__(self, index: index_lib.Index, model=None):
    self.index, self.model = index, model
    self._row = {d: i for i, d in enumerate(index.doc_ids)}
    if model is not None:
      from dualenc.evaluation import encode  # pylint: disable=g-import-not-at-top
      self._encode = encode
      self.tower = encode.TowerEncoder(model.model, model.params, "query")
    elif index.query_encoder is None:
      raise ValueError("the index has no model-free query encoder: pass a model")

  def _with_texts(self, hits) -> List[Tuple[str, float, str]]:
    texts = self.index.doc_texts
    return [(d, s, texts[self._row[d]] if texts else "") for d, s in hits]

  def search(self, queries: Sequence[str], k: int) -> List[List[Tuple[str, float, str]]]:
    if self.model is None:
      return [self._with_texts(self.index.search_text(q, k)) for q in queries]
    encode = self._encode
    if len(queries) == 1:
      embeddings = encode.encode_one(self.tower, self.model.query_tokenizer, queries[0])
    else:
      embeddings = encode.encode_texts(self.tower, self.model.query_tokenizer, list(queries),
                                       encode.EncodeOptions(progress=False))
    return [self._with_texts(hits) for hits in self.index.search(embeddings, k)]


def open_engine(index_dir, query_encoder_dir: Optional[str] = None) -> QueryEngine:
  """The QueryEngine of a saved index: model-free when the index has a query encoder."""
  index = index_lib.Index.load(index_dir, query_encoder=query_encoder_dir)
  if index.query_encoder is not None:
    return QueryEngine(index)
  return QueryEngine(index, load_query_model(index.metadata))


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
  parser.add_argument("--query_encoder", help="a sparse index: use this saved query encoder "
                      "directory instead of the index's own")
  parser.add_argument("--timing", action="store_true", help="print each query's milliseconds")
  args = parser.parse_args(argv)
  try:
    engine = open_engine(args.index_dir, args.query_encoder)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  queries = args.query or _lines(sys.stdin)
  for query in queries:
    start = time.perf_counter()
    (hits,) = engine.search([query], args.k)
    took = (time.perf_counter() - start) * 1000
    print(f"# {query}" + (f"  ({took:.2f} ms)" if args.timing else ""))
    if not hits:
      print("(no known terms: 0 results)" if engine.model is None else "(0 results)")
    for rank, (doc_id, score, text) in enumerate(hits, start=1):
      snippet = " ".join(text.split())[:args.width]
      print(f"{rank:3d}  {score:.4f}  {doc_id}  {snippet}")
    sys.stdout.flush()
  return 0

