"""dualenc models -> sentence-transformers directories (the layout sentence-transformers 6.2 saves).

Dense (`towers.DualEncoder`), loaded with `SentenceTransformer(dir)`:
  sde            Transformer -> Pooling [-> Dense] [-> Normalize]
  ade, ade_ste,  Router(query: Transformer -> Pooling [-> Dense],
  ade_fte          document: Transformer -> Pooling [-> Dense]) [-> Normalize]
  ade_spl        Router(query: Transformer -> Pooling, document: ...) -> Dense [-> Normalize]
                 (the shared projection stays one module)
Sparse (`dualenc.sparse.SparseEncoder`), loaded with `SparseEncoder(dir)`:
  idf, ones      Router(query: SparseStaticEmbedding (relu(idf) or 1; 0 for special tokens),
                        document: Transformer(fill-mask) -> SpladePooling(max))
  mlm            Transformer(fill-mask) -> SpladePooling(max)   (siamese SPLADE)

`model.encode_query` / `encode_document` then give dualenc's embeddings: towers that share an
embedder each carry a copy of it; the frozen embedder of ade_fte is frozen only in dualenc.
"""

from __future__ import annotations

import pathlib
from typing import Any, Dict, List, Mapping, Tuple

import numpy as np

from dualenc.export import hf

ST_VERSION = "6.2.0"  # the layout written here is the one this version saves and loads
_TYPES = {
    "Transformer": "sentence_transformers.base.modules.transformer.Transformer",
    "Pooling": "sentence_transformers.sentence_transformer.modules.pooling.Pooling",
    "Dense": "sentence_transformers.base.modules.dense.Dense",
    "Normalize": "sentence_transformers.base.modules.normalize.Normalize",
    "Router": "sentence_transformers.base.modules.router.Router",
    "SparseStaticEmbedding":
        "sentence_transformers.sparse_encoder.modules.sparse_static_embedding."
        "SparseStaticEmbedding",
    "SpladePooling": "sentence_transformers.sparse_encoder.modules.splade_pooling.SpladePooling",
}
# dualenc's sparse activations -> SpladePooling's: its 'relu' is log1p(relu(x)), its 'log1p_relu'
# log1p(log1p(relu(x))).
SPLADE_ACTIVATIONS = {"log1p_relu": "relu", "log1p_log1p_relu": "log1p_relu"}
_POOLING = {"mean": "mean", "first": "cls"}
# A module to write: (kind, callable writing its files into a directory, or None: no files).
Module = Tuple[str, Any]


# ---------------------------------------------------------------------------------------------
# One module each.


def _transformer(config, tensors, vocabulary, max_length: int, *, mlm: bool) -> Module:
  def write(directory: pathlib.Path) -> None:
    hf.write_transformer(directory, config, tensors, vocabulary, max_length, mlm=mlm)
    output = "logits" if mlm else "last_hidden_state"
    hf.write_json(directory / "sentence_bert_config.json", {
        "max_seq_length": max_length, "do_lower_case": False,
        "transformer_task": "fill-mask" if mlm else "feature-extraction",
        "modality_config": {"text": {"method": "forward", "method_output_name": output}},
        "module_output_name": "token_embeddings"})
  return "Transformer", write


def _pooling(dimension: int, mode: str) -> Module:
  return "Pooling", lambda d: hf.write_json(d / "config.json", {
      "embedding_dimension": dimension, "pooling_mode": _POOLING[mode], "include_prompt": True})


def _dense(kernel: np.ndarray) -> Module:
  """DenseGeneral kernel [in, out] (no bias) -> Dense's linear.weight [out, in]."""
  kernel = np.asarray(kernel, np.float32)

  def write(directory: pathlib.Path) -> None:
    hf.write_json(directory / "config.json", {
        "in_features": int(kernel.shape[0]), "out_features": int(kernel.shape[1]), "bias": False,
        "activation_function": "torch.nn.modules.linear.Identity",
        "module_input_name": "sentence_embedding", "module_output_name": "sentence_embedding"})
    hf.write_weights(directory / "model.safetensors", {"linear.weight": kernel.T})
  return "Dense", write


def _normalize() -> Module:
  return "Normalize", lambda d: hf.write_json(d / "config.json", {
      "module_input_name": "sentence_embedding", "module_output_name": "sentence_embedding"})


def _static_embedding(weights: np.ndarray, vocabulary, max_pieces: int) -> Module:
  def write(directory: pathlib.Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    hf.write_json(directory / "config.json", {"frozen": True})
    hf.write_weights(directory / "model.safetensors", {"weight": weights})
    hf.write_tokenizer(directory, vocabulary, max_pieces)
  return "SparseStaticEmbedding", write


def _splade_pooling(activation: str) -> Module:
  return "SpladePooling", lambda d: hf.write_json(d / "config.json", {
      "pooling_strategy": "max", "activation_function": SPLADE_ACTIVATIONS[activation],
      "embedding_dimension": None})


# ---------------------------------------------------------------------------------------------
# Directory layout.


def _write_module(directory: pathlib.Path, name: str, module: Module) -> None:
  path = directory / name
  path.mkdir(parents=True, exist_ok=True)
  module[1](path)


def _write_pipeline(directory: pathlib.Path, modules: List[Module],
                    routes: Mapping[str, List[Module]], *, model_type: str,
                    similarity: str) -> None:
  """modules.json (+ router_config.json): `routes` (query/document) first when given, then
  `modules`. The first plain Transformer lives at the root, as sentence-transformers saves it."""
  directory.mkdir(parents=True, exist_ok=True)
  entries: List[Dict[str, Any]] = []
  if routes:
    types, structure = {}, {}
    for route, route_modules in routes.items():
      structure[route] = []
      for i, (kind, write) in enumerate(route_modules):
        name = f"{route}_{i}_{kind}"
        _write_module(directory, name, (kind, write))
        types[name], structure[route] = _TYPES[kind], structure[route] + [name]
    hf.write_json(directory / "router_config.json", {
        "types": types, "structure": structure,
        "parameters": {"default_route": "document", "allow_empty_key": True,
                       "route_mappings": {}}})
    entries.append({"idx": 0, "name": "0", "path": "", "type": _TYPES["Router"]})
  for kind, write in modules:
    idx = len(entries)
    path = "" if idx == 0 and kind == "Transformer" else f"{idx}_{kind}"
    if path:
      _write_module(directory, path, (kind, write))
    else:
      write(directory)
    entries.append({"idx": idx, "name": str(idx), "path": path, "type": _TYPES[kind]})
  hf.write_json(directory / "modules.json", entries)
  hf.write_json(directory / "config_sentence_transformers.json", {
      "__version__": {"sentence_transformers": ST_VERSION}, "model_type": model_type,
      "prompts": {"query": "", "document": ""}, "default_prompt_name": None,
      "similarity_fn_name": similarity})


# ---------------------------------------------------------------------------------------------
# Models.


def _note_one_length(lengths: Mapping[str, int]) -> None:
  if lengths["query"] != lengths["document"]:
    print(f"note: one tower for both sides is one sentence-transformers pipeline; it cuts queries "
          f"at {lengths['document']} tokens like documents (dualenc: {lengths['query']})")


def tower_encoder_params(model, params: Mapping[str, Any], side: str) -> Mapping[str, Any]:
  """The params of one tower's encoder with its token embedder (shared ones copied in)."""
  if model.architecture == "sde":
    return params["encoder"]
  encoder = params[f"{side}_encoder"]
  if "shared_token_embedder" in params:
    encoder = hf.with_token_embedder(encoder, params["shared_token_embedder"]["embedding"])
  return encoder


def write_dense(directory: pathlib.Path, model, params: Mapping[str, Any], vocabulary,
                lengths: Mapping[str, int]) -> None:
  """A `towers.DualEncoder` as a SentenceTransformer directory (module docstring).

  lengths: {'query': tokens, 'document': tokens} including the framing tokens.
  """
  config = model.encoder_config

  def tower(side: str, with_projection: bool) -> List[Module]:
    tensors = hf.encoder_tensors(config, tower_encoder_params(model, params, side))
    modules = [_transformer(config, tensors, vocabulary, lengths[side], mlm=False),
               _pooling(config.d_model, model.pooling)]
    if with_projection and model.embedding_dim:
      name = "projection" if model.architecture == "sde" else f"{side}_projection"
      modules.append(_dense(params[name]["kernel"]))
    return modules

  tail = [_normalize()] if model.normalize else []
  similarity = "cosine" if model.normalize else "dot"
  if model.architecture == "sde":
    _note_one_length(lengths)
    _write_pipeline(directory, tower("document", True) + tail, {},
                    model_type="SentenceTransformer", similarity=similarity)
    return
  shared_projection = model.architecture == "ade_spl" and model.embedding_dim
  routes = {side: tower(side, not shared_projection) for side in ("query", "document")}
  modules = ([_dense(params["projection"]["kernel"])] if shared_projection else []) + tail
  _write_pipeline(directory, modules, routes, model_type="SentenceTransformer",
                  similarity=similarity)


def query_weights(model, params: Mapping[str, Any]) -> np.ndarray:
  """[V] float32 weight of each token on the model-free query side: relu(idf) ('idf') or 1
  ('ones'), 0 for the model's special ids (as `functions.query_weights`)."""
  vocab = model.encoder_config.vocab_size
  weights = (np.maximum(np.asarray(params["idf"], np.float32), 0.0)
             if model.query_encoder == "idf" else np.ones(vocab, np.float32))
  weights[list(model.special_ids)] = 0.0
  return weights


def mlm_tensors(model, params: Mapping[str, Any]) -> Dict[str, np.ndarray]:
  """A SparseEncoder's document side as BertForMaskedLM tensors (special tokens silenced)."""
  encoder = hf.with_token_embedder(params["document_encoder"],
                                   params["token_embedder"]["embedding"])
  silenced = list(model.special_ids) if model.zero_special_tokens else []
  return hf.encoder_tensors(model.encoder_config, encoder, mlm_head=params["mlm_head"],
                            silenced_ids=silenced)


def write_sparse(directory: pathlib.Path, model, params: Mapping[str, Any], vocabulary,
                 lengths: Mapping[str, int]) -> None:
  """A `dualenc.sparse.SparseEncoder` as a SparseEncoder directory (module docstring)."""
  config = model.encoder_config
  document = [_transformer(config, mlm_tensors(model, params), vocabulary, lengths["document"],
                           mlm=True),
              _splade_pooling(model.activation)]
  if model.query_encoder == "mlm":
    _note_one_length(lengths)
    _write_pipeline(directory, document, {}, model_type="SparseEncoder", similarity="dot")
    return
  # Queries are tokenized without [CLS]/[SEP]; dualenc keeps max_length - 2 of their pieces.
  query = [_static_embedding(query_weights(model, params), vocabulary, lengths["query"] - 2)]
  _write_pipeline(directory, [], {"query": query, "document": document},
                  model_type="SparseEncoder", similarity="dot")
