"""What evaluation needs of a model: the DualEncoder, its params, and one tokenizer per tower.

Two sources:
  `from_hf_checkpoint(dir)`     a Hugging Face / sentence-transformers directory, zero-shot:
                                one shared (SDE) tower; pooling, normalisation and maximum
                                length from the sentence-transformers files when present.
  `from_dualenc_checkpoint(...)` a dualenc training checkpoint (`MODEL_DIR/checkpoints/<step>`)
                                with the model gin built; texts framed with the task vocabulary
                                exactly as in training.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
from typing import Any, Dict, Mapping, Optional

import jax
import numpy as np
from flax import linen as nn

from dualenc import convert
from dualenc import fs
from dualenc import towers
# Gin configurables: imported here, before a program's gin config is locked, because a
# Hugging Face checkpoint may turn out to be a sparse model only once it is read.
from dualenc.data import vocabularies
from dualenc.evaluation import encode
from dualenc.sparse import pretrained

# sentence-transformers pooling modes -> DualEncoder.pooling
_POOLINGS = {"mean": "mean", "cls": "first"}


@dataclasses.dataclass
class RetrievalModel:
  """A model ready to encode texts.

  fingerprint identifies weights and settings (keys the embedding cache; None: never cache,
  e.g. params that change during training); source says how to load it again (stored in saved
  indexes so `dualenc.search` can encode queries).
  """

  model: towers.DualEncoder
  params: Any
  query_tokenizer: Any
  document_tokenizer: Any
  fingerprint: Optional[Dict[str, Any]]
  source: Dict[str, Any]

  def tokenizer(self, side: str):
    return self.query_tokenizer if side == "query" else self.document_tokenizer


def _weights_identity(directory) -> Dict[str, Any]:
  """Size and modification time of every weight file: cheap, and changes with the weights."""
  files = sorted(p for p in fs.path(directory).iterdir()
                 if p.suffix in (".safetensors", ".bin", ".json") and p.is_file())
  return {p.name: fs.identity(p) for p in files}


SPARSE_KINDS = ("auto", "splade", "dense")


def from_hf_checkpoint(path, *, dtype: str = "float32", max_length: Optional[int] = None,
                       pooling: Optional[str] = None, normalize: Optional[bool] = None,
                       sparse: str = "auto", missing_idf: float = 0.0) -> RetrievalModel:
  """A Hugging Face checkpoint as a shared-tower (SDE) retrieval model, or as a sparse one.

  With sentence-transformers files (modules.json) the pipeline's pooling, normalisation and
  max_seq_length are used (all-MiniLM-L6-v2: mean, normalised, 256); otherwise mean pooling,
  normalised, and the model's maximum positions (512 for T5). Arguments override either.

  sparse: 'auto' reads a sentence-transformers SparseEncoder directory, or a BertForMaskedLM
  with an idf.json beside it, as a `dualenc.sparse.SparseEncoder` (`sparse.pretrained`; tokens
  idf.json lacks get `missing_idf`); 'splade' reads a bare BertForMaskedLM as siamese SPLADE;
  'dense' never reads a sparse model. Raises convert.CheckpointError for unsupported or
  malformed checkpoints.
  """
  if sparse not in SPARSE_KINDS:
    raise ValueError(f"sparse={sparse!r}; expected one of {SPARSE_KINDS}")
  source_dir = fs.path(path)
  if not source_dir.is_dir():
    raise convert.CheckpointError(f"--hf_checkpoint {source_dir}: directory not found")
  with fs.local_copy(source_dir) as directory:
    if sparse == "splade" or (sparse == "auto" and _is_sparse(directory)):
      return _sparse_model(directory, source_dir, sparse, missing_idf, dtype, max_length)
    model, params, tokenizer, settings, weights_subdir = _load_hf(directory, dtype, max_length,
                                                                  pooling, normalize)
  text_tokenizer = encode.HfTokenizer(tokenizer, settings["max_length"])
  fingerprint = {"kind": "hf", "path": str(source_dir),
                 "weights": _weights_identity(source_dir / weights_subdir), **settings,
                 "dtype": dtype, "tokenizer": text_tokenizer.fingerprint}
  source = {"hf_checkpoint": str(source_dir), "dtype": dtype, **settings}
  return RetrievalModel(model, params, text_tokenizer, text_tokenizer, fingerprint, source)


def _is_sparse(directory: pathlib.Path) -> bool:
  if (directory / "modules.json").is_file():
    return pretrained.is_sparse_encoder_dir(directory)
  return (directory / "idf.json").is_file() and (directory / "config.json").is_file() and \
      convert.has_mlm_head(directory)


def _sparse_model(directory: pathlib.Path, source_dir, sparse: str, missing_idf: float,
                  dtype: str, max_length: Optional[int]) -> RetrievalModel:
  """A public sparse model (`dualenc.sparse.pretrained`) with dualenc's WordPiece framing,
  which gives the Hugging Face BERT tokenizer's ids."""
  loaded = pretrained.load(directory, kind="splade" if sparse == "splade" else "auto",
                           missing_idf=missing_idf, dtype=dtype)
  vocabulary = vocabularies.WordPieceVocabulary(loaded.vocab_path, lower_case=loaded.lower_case)
  lengths = {side: min(max_length, n) if max_length else n for side, n in loaded.lengths.items()}
  settings = dict(loaded.settings, query_max_length=lengths["query"],
                  document_max_length=lengths["document"])
  fingerprint = {"kind": "hf_sparse", "path": str(source_dir),
                 "weights": _weights_identity_tree(source_dir), "missing_idf": missing_idf,
                 "dtype": dtype, **settings}
  source = {"hf_checkpoint": str(source_dir), "dtype": dtype, "sparse": sparse,
            "missing_idf": missing_idf, "max_length": max_length}
  return RetrievalModel(loaded.model, loaded.params,
                        encode.SeqioTokenizer(vocabulary, lengths["query"]),
                        encode.SeqioTokenizer(vocabulary, lengths["document"]), fingerprint,
                        source)


def _load_hf(directory: pathlib.Path, dtype: str, max_length: Optional[int],
             pooling: Optional[str], normalize: Optional[bool]):
  """(model, params, tokenizer, {pooling, normalize, max_length}, weights subdirectory) of a
  local Hugging Face / sentence-transformers directory."""
  if (directory / "modules.json").is_file():
    st = convert.load_sentence_transformer(directory, dtype=dtype)
    module, variables, tokenizer = st.module, st.variables, st.tokenizer
    st_pooling, st_normalize, st_length = st.pooling_mode, st.normalize, st.max_seq_length
    weights_subdir = (json.loads((directory / "modules.json").read_text())[0]
                      .get("path", "") or ".")
  else:
    module, variables = convert.from_huggingface(directory, dtype)
    tokenizer_path = directory / "tokenizer.json"
    if not tokenizer_path.is_file():
      raise convert.CheckpointError(f"{directory}: no tokenizer.json (zero-shot evaluation "
                                    "tokenizes with the checkpoint's own tokenizer)")
    import tokenizers  # pylint: disable=g-import-not-at-top
    tokenizer = tokenizers.Tokenizer.from_file(str(tokenizer_path))
    st_pooling, st_normalize = "mean", True
    st_length = getattr(module.config, "max_position_embeddings", 512)
    weights_subdir = "."
  pooling = pooling or st_pooling
  if pooling not in _POOLINGS:
    raise convert.CheckpointError(f"{directory}: pooling {pooling!r} is not supported by "
                                  f"dualenc towers (supported: {sorted(_POOLINGS)})")
  normalize = st_normalize if normalize is None else normalize
  max_length = int(max_length or st_length)
  limit = getattr(module.config, "max_position_embeddings", None)
  if limit is not None and max_length > limit:
    raise ValueError(f"max_length {max_length} exceeds the model's {limit} positions")
  model = towers.DualEncoder(encoder_config=module.config, architecture="sde",
                             pooling=_POOLINGS[pooling], embedding_dim=None, normalize=normalize)
  settings = {"pooling": pooling, "normalize": normalize, "max_length": max_length}
  return model, {"encoder": variables["params"]}, tokenizer, settings, weights_subdir


def with_compute_dtype(model: towers.DualEncoder, dtype: str) -> towers.DualEncoder:
  """The same model computing in `dtype` (e.g. 'bfloat16'); parameters keep their storage."""
  config = dataclasses.replace(model.encoder_config, dtype=dtype)
  return model.clone(encoder_config=config)


def abstract_params(model: towers.DualEncoder) -> Any:
  """Unboxed ShapeDtypeStructs of the model's params (no FLOPs)."""
  ids = np.ones((1, 8), np.int32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids, ids, ids, ids))
  return nn.unbox(shapes)["params"]


def _checkpoint_param_shapes(step_dir) -> Dict[str, tuple]:
  """'/'-joined parameter path -> shape, read from the checkpoint's metadata (no data)."""
  from dualenc import checkpoints  # pylint: disable=g-import-not-at-top
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  params = checkpoints.params_metadata(step_dir)
  if params is None:
    raise ValueError(f"{step_dir}: the checkpoint has no 'params' (not a dualenc train state)")
  flat = traverse_util.flatten_dict(_to_dict(params), sep="/")
  return {k: tuple(getattr(v, "shape", ())) for k, v in flat.items()}


def _to_dict(tree):
  if isinstance(tree, Mapping):
    return {k: _to_dict(v) for k, v in tree.items()}
  return tree


def restore_params(model: towers.DualEncoder, checkpoint_dir) -> Any:
  """Params of a dualenc checkpoint step directory, checked against `model` first.

  Raises ValueError listing the missing, unexpected and reshaped parameters when the
  checkpoint was trained with another architecture or encoder size than gin now builds.
  """
  from dualenc import checkpoints  # pylint: disable=g-import-not-at-top
  step_dir = fs.path(checkpoint_dir)
  expected = abstract_params(model)
  problem = encode.describe_mismatch(encode.flat_shapes(expected),
                                     _checkpoint_param_shapes(step_dir), "gin model",
                                     "checkpoint")
  if problem:
    raise ValueError(
        f"--checkpoint {step_dir} does not fit the model gin builds "
        f"(towers.DualEncoder.architecture={model.architecture!r}, "
        f"{type(model.encoder_config).__name__}.d_model={model.encoder_config.d_model}, "
        f"embedding_dim={model.embedding_dim}): {problem}. Pass the gin files the checkpoint "
        "was trained with (MODEL_DIR/config.gin).")
  return checkpoints.restore_params(step_dir, expected)


def from_dualenc_checkpoint(model: towers.DualEncoder, checkpoint_dir, vocabulary,
                            feature_lengths: Mapping[str, int], *, params: Any = None,
                            dtype: Optional[str] = None) -> RetrievalModel:
  """A trained DualEncoder; `params` given (periodic evaluation) skips reading the checkpoint.

  feature_lengths: {'inputs': query length, 'targets': document length} as in training.
  """
  for key in ("inputs", "targets"):
    if key not in feature_lengths:
      raise ValueError(f"feature_lengths {dict(feature_lengths)} lacks {key!r} (the "
                       "TASK_FEATURE_LENGTHS of training: {'inputs': Lq, 'targets': Ld})")
  if dtype:
    model = with_compute_dtype(model, dtype)
  fingerprint = None
  if params is None:
    params = restore_params(model, checkpoint_dir)
    step_dir = fs.path(checkpoint_dir)
    fingerprint = {"kind": "dualenc", "checkpoint": str(step_dir),
                   "files": _weights_identity_tree(step_dir), "architecture": model.architecture,
                   "dtype": model.encoder_config.dtype, "vocabulary": repr(vocabulary),
                   "lengths": [feature_lengths["inputs"], feature_lengths["targets"]]}
  source = {"dualenc_checkpoint": str(fs.path(checkpoint_dir)) if checkpoint_dir else None}
  return RetrievalModel(
      model, params, encode.SeqioTokenizer(vocabulary, int(feature_lengths["inputs"])),
      encode.SeqioTokenizer(vocabulary, int(feature_lengths["targets"])), fingerprint, source)


def _weights_identity_tree(step_dir) -> str:
  digest = hashlib.sha256()
  for relative, item in fs.files_under(step_dir):
    digest.update(f"{relative}:{fs.identity(item)};".encode())
  return digest.hexdigest()
