r"""`python -m dualenc.export`: a trained checkpoint as files other tools load.

  python -m dualenc.export --checkpoint=runs/main --output_dir=exports/main_dense
  python -m dualenc.export --checkpoint=runs/main/sparse --output_dir=exports/main_sparse
  python -m dualenc.export --checkpoint=runs/main/sparse --format=opensearch \
      --output_dir=exports/main_opensearch

--format:
  sentence-transformers (default)  SentenceTransformer (dense) or SparseEncoder (sparse) directory
  huggingface                      transformers directories: BertModel / T5EncoderModel (dense;
                                   `query/` and `document/` for asymmetric towers; models with a
                                   projection need sentence-transformers), BertForMaskedLM +
                                   idf.json (sparse, OpenSearch's model layout)
  opensearch                       idf.json, mapping.json, documents.jsonl (bulk), query.json for
                                   an inference-free model and a corpus (the checkpoint's task, or
                                   --beir_dir)

The model is what the run's MODEL_DIR/config.gin builds (required: a checkpoint without it is
refused), with --gin.X=Y overrides; lengths are the run's evaluation lengths. The export is
written beside OUTPUT_DIR and moved into place when complete; an OUTPUT_DIR holding anything but
this same export is refused, never overwritten. dualenc_export.json records what was exported.
"""

from __future__ import annotations

if __name__ == "__main__":  # run as dualenc.X, not __main__: see dualenc/cli.py
  from dualenc import cli
  cli.run_program(__spec__.name)

# pylint: disable=g-import-not-at-top,wrong-import-position
import argparse
import json
import os
import sys
from typing import Any, Dict, Optional, Sequence

from dualenc import fs
from dualenc import gin_utils

FORMATS = ("sentence-transformers", "huggingface", "opensearch")
MANIFEST = "dualenc_export.json"


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m dualenc.export", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--checkpoint", required=True,
                      help="MODEL_DIR/checkpoints/STEP (or MODEL_DIR for its newest step)")
  parser.add_argument("--output_dir", required=True, help="new directory to create")
  parser.add_argument("--format", default="sentence-transformers",
                      help=f"one of {', '.join(FORMATS)}")
  parser.add_argument("--query_max_length", type=int,
                      help="query tokens incl. framing (default: the run's evaluation length)")
  parser.add_argument("--document_max_length", type=int,
                      help="document tokens incl. framing (default: the run's evaluation length)")
  opensearch = parser.add_argument_group("--format=opensearch")
  opensearch.add_argument("--beir_dir", help="corpus to encode (default: the checkpoint's task)")
  opensearch.add_argument("--split", default=None, help="the task's split (default: the run's)")
  opensearch.add_argument("--query", help="query.json's query (default: the first query)")
  opensearch.add_argument("--index_name", default="dualenc", help="bulk lines' _index")
  opensearch.add_argument("--prune_top_k", type=int, help="keep each document's k largest "
                          "weights (default: the model's prune_top_k)")
  opensearch.add_argument("--prune_ratio", type=float, help="keep weights >= ratio x the "
                          "document's largest (default: the model's prune_ratio)")
  gin_utils.add_gin_flags(parser)
  return parser


# ---------------------------------------------------------------------------------------------
# The output directory: refuse anything but the same export (fs.staged_directory writes beside
# it and moves the export into place when complete).


def existing_export(output_dir) -> Optional[Dict[str, Any]]:
  """None when `output_dir` is absent or empty; its manifest's request when it holds an
  export; FileExistsError when it holds anything else."""
  if not output_dir.exists():
    return None
  if not output_dir.is_dir():
    raise FileExistsError(f"--output_dir {output_dir} is a file")
  if not any(output_dir.iterdir()):
    return None
  manifest = output_dir / MANIFEST
  if not manifest.is_file():
    raise FileExistsError(f"--output_dir {output_dir} is not empty and holds no dualenc export; "
                          "choose a new directory (nothing was written)")
  return json.loads(manifest.read_text()).get("request")


# ---------------------------------------------------------------------------------------------
# Export.


def _load(args, bindings, parser):
  """(model, params, vocabulary, task names, lengths, split, step_dir) of --checkpoint."""
  from dualenc import checkpoints  # pylint: disable=g-import-not-at-top
  from dualenc import convert  # pylint: disable=g-import-not-at-top
  from dualenc import evaluate  # pylint: disable=g-import-not-at-top
  from dualenc.evaluation import loading  # pylint: disable=g-import-not-at-top
  from dualenc.evaluation import retrieval  # pylint: disable=g-import-not-at-top
  import gin  # pylint: disable=g-import-not-at-top
  if not fs.path(args.checkpoint).exists():
    raise convert.CheckpointError(f"--checkpoint {args.checkpoint}: not found")
  step_dir = checkpoints.step_directory(args.checkpoint)
  run_config = step_dir.parent.parent / "config.gin"
  if not run_config.is_file():
    raise convert.CheckpointError(
        f"--checkpoint {step_dir}: {run_config} not found; an export needs the gin config the "
        "checkpoint was trained with (the trainer writes MODEL_DIR/config.gin)")
  gin.clear_config()
  evaluate._import_task_modules()  # pylint: disable=protected-access
  search_paths = [p for p in args.gin_search_paths.split(",") if p]
  gin_utils.parse(evaluate.run_gin_files(step_dir, args.gin_file, parser), bindings,
                  search_paths)
  model, task_names, feature_lengths, split = evaluate.eval_task()
  names = retrieval.leaf_task_names(task_names)
  params = loading.restore_params(model, step_dir)
  lengths = {"query": args.query_max_length or int(feature_lengths["inputs"]),
             "document": args.document_max_length or int(feature_lengths["targets"])}
  return (model, params, _training_vocabulary(names[0]), names, lengths, args.split or split,
          step_dir)


def _training_vocabulary(task_name: str):
  """The vocabulary the run trained with: `train.train.vocabulary` (runs bind it to
  @get_vocabulary(), configured by their gin), else the task's registered one."""
  import gin  # pylint: disable=g-import-not-at-top
  from dualenc.data import vocabularies  # pylint: disable=g-import-not-at-top
  from dualenc.evaluation import retrieval  # pylint: disable=g-import-not-at-top
  try:
    bound = gin.query_parameter("train.train.vocabulary")
  except ValueError:
    bound = None
  return vocabularies.get_vocabulary() if bound is not None else retrieval.task_vocabulary(
      task_name)


def _check_format(fmt: str, model) -> None:
  sparse = getattr(model, "architecture", None) == "sparse"
  if fmt == "opensearch" and not (sparse and model.query_encoder in ("idf", "ones")):
    raise ValueError("--format=opensearch needs an inference-free sparse model "
                     "(SparseEncoder.query_encoder 'idf' or 'ones'): its queries are a "
                     "tokenizer and a table; this model needs a network at query time")
  if fmt == "huggingface" and not sparse and model.embedding_dim:
    raise ValueError(f"--format=huggingface: this model projects its embeddings to "
                     f"{model.embedding_dim} dimensions, which a plain transformers directory "
                     "cannot hold; use --format=sentence-transformers")


def _write_huggingface(directory, model, params, vocabulary, lengths) -> None:
  from dualenc.export import hf  # pylint: disable=g-import-not-at-top
  from dualenc.export import sentence_transformers as st  # pylint: disable=g-import-not-at-top
  from dualenc.sparse import idf as idf_lib  # pylint: disable=g-import-not-at-top
  config = model.encoder_config
  if model.architecture == "sparse":
    hf.write_transformer(directory, config, st.mlm_tensors(model, params), vocabulary,
                         lengths["document"], mlm=True)
    if model.query_encoder != "mlm":
      idf_lib.save_idf(directory / "idf.json", st.query_weights(model, params),
                       vocabulary.tokens)
    return
  sides = ("document",) if model.architecture == "sde" else ("query", "document")
  for side in sides:
    target = directory if model.architecture == "sde" else directory / side
    hf.write_transformer(target, config,
                         hf.encoder_tensors(config, st.tower_encoder_params(model, params, side)),
                         vocabulary, lengths[side])


def _write_opensearch(directory, args, model, params, vocabulary, names, lengths, split,
                      step_dir) -> Dict[str, int]:
  from dualenc import partitioning  # pylint: disable=g-import-not-at-top
  from dualenc.evaluation import loading  # pylint: disable=g-import-not-at-top
  from dualenc.evaluation import retrieval  # pylint: disable=g-import-not-at-top
  from dualenc.export import opensearch  # pylint: disable=g-import-not-at-top
  from dualenc.export import sentence_transformers as st  # pylint: disable=g-import-not-at-top
  if args.beir_dir:
    from dualenc.data import readers  # pylint: disable=g-import-not-at-top
    data = readers.open_dataset(fs.path(args.beir_dir), "beir").eval_data(split)
  else:
    from dualenc.data import registry  # pylint: disable=g-import-not-at-top
    data = registry.eval_data(names[0], split)
  retrieval_model = loading.from_dualenc_checkpoint(
      model, step_dir, vocabulary, {"inputs": lengths["query"], "targets": lengths["document"]},
      params=params)
  encoders = retrieval.ModelEncoders(retrieval_model, partitioning.make_mesh(-1, 1))
  vectors = encoders.encode("document", data.corpus_ids, data.corpus_texts)
  vectors = opensearch.prune_rows(vectors, args.prune_top_k, args.prune_ratio)
  query = args.query if args.query is not None else data.query_texts[0]
  return opensearch.write(
      directory, tokens=vocabulary.tokens, query_table=st.query_weights(model, params),
      query_encoder=retrieval.model_free_query_encoder(retrieval_model),
      doc_ids=data.corpus_ids, doc_texts=data.corpus_texts, doc_vectors=vectors,
      query_text=query, index_name=args.index_name)


def export(args, bindings: Sequence[str], parser: argparse.ArgumentParser) -> Dict[str, Any]:
  """Runs the export the flags describe; returns the manifest written."""
  if args.format not in FORMATS:
    raise ValueError(f"--format={args.format!r}: unknown format; expected one of "
                     f"{', '.join(FORMATS)}")
  output_dir = fs.path(args.output_dir)
  previous = existing_export(output_dir)  # refuse a foreign directory before any work
  from dualenc.evaluation import loading  # pylint: disable=g-import-not-at-top
  model, params, vocabulary, names, lengths, split, step_dir = _load(args, bindings, parser)
  _check_format(args.format, model)
  request = {"format": args.format, "checkpoint": os.path.abspath(os.fspath(step_dir)),
             "checkpoint_files": loading._weights_identity_tree(step_dir),  # pylint: disable=protected-access
             "lengths": lengths, "gin_overrides": list(bindings) + list(args.gin_file)}
  if args.format == "opensearch":
    request.update(beir_dir=args.beir_dir, split=split, query=args.query,
                   index_name=args.index_name, prune_top_k=args.prune_top_k,
                   prune_ratio=args.prune_ratio)
  if previous == request:
    print(f"{output_dir} already holds this export; nothing written")
    return json.loads((output_dir / MANIFEST).read_text())
  if previous is not None:
    raise FileExistsError(
        f"--output_dir {output_dir} holds another export (format {previous.get('format')!r} of "
        f"{previous.get('checkpoint')}); choose a new directory (nothing was overwritten)")
  manifest: Dict[str, Any] = {
      "request": request, "dualenc_version": "0.1.0", "task": names[0],
      "model": {"kind": getattr(model, "architecture", None),
                "encoder": type(model.encoder_config).__name__,
                "query_encoder": getattr(model, "query_encoder", None),
                "activation": getattr(model, "activation", None),
                "prune_top_k": getattr(model, "prune_top_k", None),
                "prune_ratio": getattr(model, "prune_ratio", None)}}

  def write(directory) -> None:
    from dualenc.export import sentence_transformers as st  # pylint: disable=g-import-not-at-top
    if args.format == "sentence-transformers":
      writer = st.write_sparse if model.architecture == "sparse" else st.write_dense
      writer(directory, model, params, vocabulary, lengths)
    elif args.format == "huggingface":
      _write_huggingface(directory, model, params, vocabulary, lengths)
    else:
      manifest["opensearch"] = _write_opensearch(directory, args, model, params, vocabulary,
                                                 names, lengths, split, step_dir)
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")

  with fs.staged_directory(output_dir) as staging:
    write(staging)
  print(f"exported {step_dir} ({manifest['model']['kind']}) as {args.format} to {output_dir}")
  top_k, ratio = manifest["model"]["prune_top_k"], manifest["model"]["prune_ratio"]
  if args.format != "opensearch" and top_k:
    print(f"note: the model keeps {top_k} terms per document; pass max_active_dims={top_k} "
          "to SparseEncoder(...) or encode_document(...) for the same vectors")
  if args.format != "opensearch" and ratio:
    print(f"note: the model drops document weights under {ratio} x the largest; "
          "sentence-transformers has no such option, so its vectors keep them")
  return manifest


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  parser = build_parser()
  bindings, rest = gin_utils.split_gin_overrides(argv)
  args = parser.parse_args(rest)
  export(args, bindings, parser)
  return 0
