"""Public learned sparse models as dualenc `SparseEncoder`s: sentence-transformers SparseEncoder
directories and SPLADE `BertForMaskedLM` directories, read offline, no code run.

  sparse = load(path)                           # SparseEncoder directory (inference-free/siamese)
  sparse = load(path, kind="splade")            # bare BertForMaskedLM = siamese SPLADE
  sparse.model, sparse.params                   # dualenc.sparse.SparseEncoder and its params
  sparse.vocab_path, sparse.lower_case, sparse.lengths   # tokenizer and max lengths

Layouts read (module types are matched by class name, so sentence-transformers 5.x and 6.x both
load): Router(query: SparseStaticEmbedding, document: MLMTransformer | Transformer(fill-mask) ->
SpladePooling(max)) for inference-free models (OpenSearch doc-v2/v3, SPLADE-doc), and
MLMTransformer | Transformer -> SpladePooling(max) for siamese SPLADE. The model scores as
sentence-transformers does: no special-token zeroing (its document weights come from the MLM
logits alone) and query weights `weight[token]` for each distinct token, special or not.

IDF tables given as idf.json (SparseStaticEmbedding config `path`, or `idf.json` beside a bare
BertForMaskedLM) leave tokens they lack at `missing_idf`: 0.0 as sentence-transformers'
`SparseStaticEmbedding.from_json` does (MISSING_AS_ZERO), or 1.0 as OpenSearch's training code
does (MISSING_AS_ONE).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from dualenc import convert
from dualenc import fs
from dualenc.convert import CheckpointError, read_json
from dualenc.sparse import idf as idf_lib
from dualenc.sparse import model as model_lib

KINDS = ("auto", "splade")
# SpladePooling activation -> dualenc's (SpladePooling's 'relu' is log1p(relu(x))).
ACTIVATIONS = {"relu": "log1p_relu", "log1p_relu": "log1p_log1p_relu"}
_MLM_MODULES = ("MLMTransformer", "Transformer")


@dataclasses.dataclass
class PretrainedSparse:
  """A loaded public sparse model.

  lengths: {'query': tokens incl. [CLS]/[SEP] as dualenc frames them, 'document': ...}.
  settings: what was read (layout, activation, max lengths), for metrics.json and fingerprints.
  """

  model: Any
  params: Dict[str, Any]
  vocab_path: str
  lower_case: bool
  lengths: Dict[str, int]
  settings: Dict[str, Any]


def is_sparse_encoder_dir(path) -> bool:
  """Whether `path` is a sentence-transformers SparseEncoder directory."""
  directory = pathlib.Path(path)
  config = directory / "config_sentence_transformers.json"
  if config.is_file():
    try:
      if json.loads(config.read_text()).get("model_type") == "SparseEncoder":
        return True
    except (json.JSONDecodeError, AttributeError):
      pass
  return any(kind in ("SpladePooling", "SparseStaticEmbedding")
             for kind, _ in _module_kinds(directory))


def _module_kinds(directory: pathlib.Path) -> List[Tuple[str, pathlib.Path]]:
  """(class name, directory) of every module, routes expanded (query first, then document)."""
  if not (directory / "modules.json").is_file():
    return []
  modules = read_json(directory / "modules.json")
  if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
    raise CheckpointError(f"{directory / 'modules.json'}: expected a list of module objects")
  kinds = []
  for module in modules:
    kind = str(module.get("type", "")).rsplit(".", 1)[-1]
    path = directory / module.get("path", "")
    if kind == "Router":
      kinds += [(f"route:{route}:{k}", p) for route, k, p in _routes(path)]
    else:
      kinds.append((kind, path))
  return kinds


def _routes(directory: pathlib.Path) -> List[Tuple[str, str, pathlib.Path]]:
  config_path = directory / "router_config.json"
  config = read_json(config_path)
  types, structure = config.get("types"), config.get("structure")
  if not isinstance(types, dict) or not isinstance(structure, dict):
    raise CheckpointError(f"{config_path}: expected 'types' and 'structure' objects")
  return [(route, str(types.get(name, "")).rsplit(".", 1)[-1], directory / name)
          for route in ("query", "document") for name in structure.get(route, [])]


# ---------------------------------------------------------------------------------------------
# Pieces.


def _max_length(directory: pathlib.Path, limit: int) -> int:
  """sentence_bert_config.json's max_seq_length, else the tokenizer's model_max_length, capped
  at the model's positions (as sentence-transformers does)."""
  for name, key in (("sentence_bert_config.json", "max_seq_length"),
                    ("tokenizer_config.json", "model_max_length")):
    if (directory / name).is_file():
      value = read_json(directory / name).get(key)
      if isinstance(value, int) and 0 < value < 1_000_000:
        return min(value, limit)
  return limit


def _vocabulary(directory: pathlib.Path) -> Tuple[str, bool]:
  """(vocab.txt path, lower_case) of a BERT WordPiece tokenizer directory (vocab.txt, or the
  vocabulary of tokenizer.json). The vocabulary is copied to a content-addressed file under
  dualenc's cache, so it outlives a temporary copy of a remote checkpoint."""
  lower_case = True
  config_path = directory / "tokenizer_config.json"
  if config_path.is_file():
    lower_case = bool(read_json(config_path).get("do_lower_case", True))
  if (directory / "vocab.txt").is_file():
    tokens = idf_lib.vocab_tokens(directory / "vocab.txt")
  else:
    tokenizer_path = directory / "tokenizer.json"
    if not tokenizer_path.is_file():
      raise CheckpointError(f"{directory}: no vocab.txt or tokenizer.json")
    tokenizer = read_json(tokenizer_path)
    model = tokenizer.get("model") or {}
    if model.get("type") != "WordPiece" or not isinstance(model.get("vocab"), dict):
      raise CheckpointError(f"{tokenizer_path}: a {model.get('type')!r} tokenizer; dualenc's "
                            "sparse models need a BERT WordPiece vocabulary")
    if not config_path.is_file():
      lower_case = bool((tokenizer.get("normalizer") or {}).get("lowercase", True))
    tokens = [""] * len(model["vocab"])
    for token, i in model["vocab"].items():
      tokens[i] = token
  from dualenc.data import default_dataset  # pylint: disable=g-import-not-at-top
  text = "\n".join(tokens) + "\n"
  path = (default_dataset.cache_root() / "vocab" /
          hashlib.sha256(text.encode()).hexdigest()[:16] / "vocab.txt")
  if not path.is_file():
    fs.makedirs(path.parent)
    fs.write_text(path, text)
  return str(path), lower_case


def _static_weights(directory: pathlib.Path, tokens: List[str], missing_idf: float) -> np.ndarray:
  """SparseStaticEmbedding's [V] weights: its safetensors `weight`, or the idf.json its config
  names."""
  config = read_json(directory / "config.json") if (directory / "config.json").is_file() else {}
  json_path = config.get("path")
  if json_path:
    candidate = directory / json_path
    return idf_lib.load_idf(candidate if candidate.is_file() else json_path, tokens,
                            missing=missing_idf)
  store, source = convert.open_weights(directory)
  if "weight" not in store:
    raise CheckpointError(f"{source}: no 'weight' tensor (SparseStaticEmbedding's IDF table)")
  weight = np.asarray(store.get("weight"), np.float32)
  if weight.shape != (len(tokens),):
    raise CheckpointError(f"{source}: 'weight' has shape {weight.shape}, the vocabulary "
                          f"{len(tokens)} tokens")
  return weight


def _splade_activation(directory: pathlib.Path) -> str:
  config = read_json(directory / "config.json")
  strategy = config.get("pooling_strategy", "max")
  activation = config.get("activation_function", "relu")
  if strategy != "max":
    raise CheckpointError(f"{directory / 'config.json'}: pooling_strategy {strategy!r}; dualenc "
                          "pools SPLADE logits with max only")
  if activation not in ACTIVATIONS:
    raise CheckpointError(f"{directory / 'config.json'}: activation_function {activation!r}; "
                          f"expected one of {sorted(ACTIVATIONS)}")
  return ACTIVATIONS[activation]


# ---------------------------------------------------------------------------------------------
# Loading.


def _build(mlm_dir: pathlib.Path, *, query_encoder: str, activation: str,
           query_weights: Optional[np.ndarray], dtype: str) -> Tuple[Any, Dict[str, Any]]:
  if not convert.has_mlm_head(mlm_dir):
    raise CheckpointError(f"{mlm_dir}: no MLM head (cls.predictions.*); a SPLADE document "
                          "encoder is a BertForMaskedLM")
  module, variables = convert.from_huggingface(mlm_dir, dtype, mlm_head=True)
  model = model_lib.SparseEncoder(
      encoder_config=module.config, query_encoder=query_encoder, activation=activation,
      special_ids=(), zero_special_tokens=False)
  pretrained = variables["params"]
  params = {"token_embedder": pretrained["token_embedder"],
            "document_encoder": pretrained["encoder"], "mlm_head": pretrained["mlm_head"]}
  if query_weights is not None:
    if np.any(query_weights < 0):
      raise CheckpointError(f"{mlm_dir}: the query side has negative token weights; dualenc's "
                            "query weights are relu(idf)")
    params["idf"] = np.asarray(query_weights, np.float32)
  return model, params


def load(path, *, kind: str = "auto", missing_idf: float = idf_lib.MISSING_AS_ZERO,
         dtype: str = "float32") -> PretrainedSparse:
  """A SparseEncoder directory (kind 'auto') or a bare BertForMaskedLM (kind 'splade', or
  'auto' when it has idf.json: inference-free with that table) as a dualenc SparseEncoder."""
  if kind not in KINDS:
    raise ValueError(f"kind={kind!r}; expected one of {KINDS}")
  directory = convert._checkpoint_dir(path)  # pylint: disable=protected-access
  modules = _module_kinds(directory)
  if not modules:
    return _load_bert_mlm(directory, kind, missing_idf, dtype)
  names = [k for k, _ in modules]
  query_dir = None
  if len(names) == 3 and names[0] == "route:query:SparseStaticEmbedding" and \
      names[1].split(":")[-1] in _MLM_MODULES and names[2] == "route:document:SpladePooling":
    (_, query_dir), (_, mlm_dir), (_, pooling_dir) = modules
  elif len(names) == 2 and names[0] in _MLM_MODULES and names[1] == "SpladePooling":
    (_, mlm_dir), (_, pooling_dir) = modules
  else:
    raise CheckpointError(
        f"{directory / 'modules.json'}: unsupported SparseEncoder layout {names}; expected "
        "Router(query: SparseStaticEmbedding, document: MLMTransformer -> SpladePooling) or "
        "MLMTransformer -> SpladePooling")
  vocab_path, lower_case = _vocabulary(mlm_dir)
  weights, query_pieces = None, None
  if query_dir is not None:
    weights = _static_weights(query_dir, idf_lib.vocab_tokens(vocab_path), missing_idf)
    if (query_dir / "tokenizer_config.json").is_file():
      query_pieces = _max_length(query_dir, 1_000_000)
  model, params = _build(mlm_dir, query_encoder="mlm" if query_dir is None else "idf",
                         activation=_splade_activation(pooling_dir), query_weights=weights,
                         dtype=dtype)
  layout = "siamese" if query_dir is None else "inference-free"
  limit = model.encoder_config.max_position_embeddings
  document = _max_length(mlm_dir, limit)
  # Inference-free queries are tokenized without [CLS]/[SEP]: dualenc's length counts them.
  query = document if query_pieces is None or query_pieces >= limit else query_pieces + 2
  return PretrainedSparse(model, params, vocab_path, lower_case,
                          {"query": query, "document": document},
                          {"layout": layout, "activation": model.activation,
                           "query_max_length": query, "document_max_length": document})


def _load_bert_mlm(directory: pathlib.Path, kind: str, missing_idf: float,
                   dtype: str) -> PretrainedSparse:
  """A BertForMaskedLM directory: siamese SPLADE, or inference-free with its idf.json."""
  idf_path = directory / "idf.json"
  vocab_path, lower_case = _vocabulary(directory)
  if kind == "auto" and not idf_path.is_file():
    raise CheckpointError(f"{directory}: no modules.json (not a SparseEncoder directory) and no "
                          "idf.json; pass kind='splade' (--hf_sparse=splade) to read a "
                          "BertForMaskedLM as siamese SPLADE")
  weights = None
  if kind == "auto":
    weights = idf_lib.load_idf(idf_path, idf_lib.vocab_tokens(vocab_path), missing=missing_idf)
  model, params = _build(directory, query_encoder="mlm" if weights is None else "idf",
                         activation="log1p_relu", query_weights=weights, dtype=dtype)
  length = _max_length(directory, model.encoder_config.max_position_embeddings)
  return PretrainedSparse(model, params, vocab_path, lower_case,
                          {"query": length, "document": length},
                          {"layout": "bert-mlm" + ("+idf" if weights is not None else ""),
                           "activation": model.activation, "query_max_length": length,
                           "document_max_length": length})
