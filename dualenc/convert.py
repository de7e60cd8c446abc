"""Import Hugging Face checkpoints (T5 / mT5 encoders, BERT) into dualenc's Flax encoders.

  module, variables = from_huggingface(path, dtype="float32")
  hidden = module.apply(variables, input_ids, attention_mask)     # [batch, length, d_model]
  mlm, variables = from_huggingface(path, mlm_head=True)           # BertForMaskedLM -> logits
  sparse = load_sparse_encoder(path)   # SparseEncoder dir -> dualenc.sparse.SparseEncoder + params

`path` is a directory written by transformers' `save_pretrained`: config.json plus
model.safetensors, pytorch_model.bin, or a sharded `*.index.json` variant. Only encoder weights
are read (decoders, poolers and LM heads other than BERT's MLM head are ignored). Nothing in the
checkpoint is executed: safetensors are read as NumPy and .bin files with
`torch.load(weights_only=True)`. Nothing here touches the network.

Bad input raises `CheckpointError` naming the file and what was expected.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import struct
from typing import Any, Callable, Dict, List, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from dualenc import encoders

PathLike = Union[str, pathlib.Path]
SUPPORTED_MODEL_TYPES = ("bert", "mt5", "t5")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


class CheckpointError(ValueError):
  """A checkpoint directory or file is missing, malformed, or does not fit the model."""


# ---------------------------------------------------------------------------------------------
# Reading files.


def read_json(path: pathlib.Path) -> Any:
  """JSON contents of `path`; CheckpointError naming the file (and line) when absent or broken."""
  if not path.is_file():
    raise CheckpointError(f"{path}: file not found")
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: "
                          f"{e.msg}") from e


def _checkpoint_dir(path: PathLike) -> pathlib.Path:
  directory = pathlib.Path(path)
  if not directory.is_dir():
    raise CheckpointError(f"{directory}: checkpoint directory not found")
  return directory


_SAFETENSORS_DTYPES = {"BF16": "bfloat16", "F16": np.float16, "F32": np.float32,
                       "F64": np.float64, "I64": np.int64, "I32": np.int32}


def _read_safetensors(path: pathlib.Path, names: Sequence[str]) -> Dict[str, np.ndarray]:
  """Reads `names` from a .safetensors file as NumPy (bfloat16 through ml_dtypes)."""
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  out = {}
  try:
    with safe_open(str(path), framework="numpy") as f:
      for name in names:
        if f.get_slice(name).get_dtype() != "BF16":
          out[name] = f.get_tensor(name)
  except Exception as e:  # safetensors raises its own error types for corrupt files
    raise CheckpointError(f"{path}: unreadable safetensors file: {e}") from e
  missing = [n for n in names if n not in out]
  if missing:  # NumPy has no bfloat16; read those tensors' raw bytes from the header offsets.
    import ml_dtypes  # pylint: disable=g-import-not-at-top
    with open(path, "rb") as f:
      (header_size,) = struct.unpack("<Q", f.read(8))
      header = json.loads(f.read(header_size))
      for name in missing:
        start, end = header[name]["data_offsets"]
        f.seek(8 + header_size + start)
        raw = np.frombuffer(f.read(end - start), dtype=ml_dtypes.bfloat16)
        out[name] = raw.reshape(header[name]["shape"])
  return out


def _read_torch(path: pathlib.Path) -> Dict[str, np.ndarray]:
  """All tensors of a PyTorch .bin file, loaded with weights_only=True (no pickle code runs)."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise CheckpointError(f"{path}: reading .bin checkpoints needs PyTorch (pip install torch), "
                          "or convert the checkpoint to model.safetensors") from e
  try:
    state = torch.load(str(path), map_location="cpu", weights_only=True)
  except Exception as e:  # pickle and zip errors of every kind
    raise CheckpointError(f"{path}: unreadable PyTorch checkpoint: {e}") from e
  if not isinstance(state, dict):
    raise CheckpointError(f"{path}: expected a state dict, got {type(state).__name__}")
  return {name: t.detach().float().numpy() if t.dtype == torch.bfloat16 else t.detach().numpy()
          for name, t in state.items() if isinstance(t, torch.Tensor)}


@dataclasses.dataclass
class TensorStore:
  """Lazily read tensors of a checkpoint: `names` maps each tensor name to the file holding it."""

  names: Dict[str, pathlib.Path]
  _cache: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

  def __contains__(self, name: str) -> bool:
    return name in self.names

  def file_of(self, name: str) -> pathlib.Path:
    return self.names[name]

  def get(self, name: str) -> np.ndarray:
    if name not in self._cache:
      path = self.names[name]
      if path.suffix == ".safetensors":
        self._cache.update(_read_safetensors(path, [name]))
      else:
        self._cache.update(_read_torch(path))
      if name not in self._cache:
        raise CheckpointError(f"{path}: tensor {name!r} listed in the index but not in the file")
    return self._cache[name]


def open_weights(directory: pathlib.Path) -> Tuple[TensorStore, str]:
  """Index of the tensors in `directory` and a description of where they came from."""
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  for filename in WEIGHT_FILES:
    path = directory / filename
    if not path.is_file():
      continue
    if filename.endswith(".index.json"):
      index = read_json(path)
      weight_map = index.get("weight_map") if isinstance(index, dict) else None
      if not isinstance(weight_map, dict):
        raise CheckpointError(f"{path}: expected an object with a 'weight_map' of tensor -> file")
      for shard in sorted(set(weight_map.values())):
        if not (directory / shard).is_file():
          raise CheckpointError(f"{path}: lists shard {shard!r}, which is not in {directory}")
      return TensorStore({k: directory / v for k, v in weight_map.items()}), str(path)
    if filename.endswith(".safetensors"):
      try:
        with safe_open(str(path), framework="numpy") as f:
          keys = list(f.keys())
      except Exception as e:
        raise CheckpointError(f"{path}: unreadable safetensors file: {e}") from e
      return TensorStore({k: path for k in keys}), str(path)
    store = TensorStore({})
    store._cache = _read_torch(path)  # pylint: disable=protected-access
    store.names = {k: path for k in store._cache}  # pylint: disable=protected-access
    return store, str(path)
  raise CheckpointError(f"{directory}: no weights file; expected one of {', '.join(WEIGHT_FILES)}")


# ---------------------------------------------------------------------------------------------
# Hugging Face config.json -> dualenc configs.


def _require(hf: Dict[str, Any], key: str, config_path: pathlib.Path) -> Any:
  if key not in hf:
    raise CheckpointError(f"{config_path}: missing required field {key!r}")
  return hf[key]


def encoder_config(config_path: pathlib.Path, *, dtype: str = "float32",
                   param_dtype: str = "float32") -> encoders.EncoderConfig:
  """Reads a Hugging Face config.json into a T5Config or BertConfig."""
  hf = read_json(config_path)
  if not isinstance(hf, dict):
    raise CheckpointError(f"{config_path}: expected a JSON object")
  model_type = hf.get("model_type")
  req = lambda key: _require(hf, key, config_path)
  try:
    if model_type in ("t5", "mt5"):
      return encoders.T5Config(
          vocab_size=req("vocab_size"), d_model=req("d_model"), num_heads=req("num_heads"),
          head_dim=req("d_kv"), num_layers=req("num_layers"), d_ff=req("d_ff"),
          feed_forward_proj=hf.get("feed_forward_proj", "relu"),
          relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
          relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
          layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-6),
          dropout_rate=hf.get("dropout_rate", 0.1), dtype=dtype, param_dtype=param_dtype)
    if model_type == "bert":
      position_type = hf.get("position_embedding_type", "absolute")
      if position_type != "absolute":
        raise CheckpointError(f"{config_path}: position_embedding_type {position_type!r} is not "
                              "supported (only 'absolute')")
      return encoders.BertConfig(
          vocab_size=req("vocab_size"), d_model=req("hidden_size"),
          num_heads=req("num_attention_heads"), num_layers=req("num_hidden_layers"),
          d_ff=req("intermediate_size"), hidden_act=hf.get("hidden_act", "gelu"),
          max_position_embeddings=hf.get("max_position_embeddings", 512),
          type_vocab_size=hf.get("type_vocab_size", 2),
          layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
          dropout_rate=hf.get("hidden_dropout_prob", 0.1),
          attention_dropout_rate=hf.get("attention_probs_dropout_prob", 0.1),
          initializer_range=hf.get("initializer_range", 0.02), dtype=dtype,
          param_dtype=param_dtype)
  except (TypeError, ValueError) as e:
    if isinstance(e, CheckpointError):
      raise
    raise CheckpointError(f"{config_path}: unsupported setting: {e}") from e
  raise CheckpointError(f"{config_path}: unsupported model_type {model_type!r}; supported: "
                        f"{', '.join(SUPPORTED_MODEL_TYPES)}")


# ---------------------------------------------------------------------------------------------
# Tensor name mapping. Each rule: Flax path -> (candidate HF names, HF shape, HF -> Flax transform).

Rule = Tuple[Tuple[str, ...], Sequence[str], Tuple[int, ...], Callable[[np.ndarray], np.ndarray]]


def _identity(x):
  return x


def _linear_in(*out_shape):
  """torch Linear weight [out, in] -> kernel [in, *out_shape]."""
  return lambda w: w.T.reshape((w.shape[1],) + out_shape)


def _linear_out(*in_shape):
  """torch Linear weight [out, in] -> kernel [*in_shape, out]."""
  return lambda w: w.T.reshape(in_shape + (w.shape[0],))


def _t5_rules(cfg: encoders.T5Config, prefix: Tuple[str, ...]) -> List[Rule]:
  d, h, k, f = cfg.d_model, cfg.num_heads, cfg.head_dim, cfg.d_ff
  rules = [
      (prefix + ("token_embedder", "embedding"), ["shared.weight", "encoder.embed_tokens.weight"],
       (cfg.vocab_size, d), _identity),
      (prefix + ("relpos_bias", "rel_embedding"),
       ["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"],
       (cfg.relative_attention_num_buckets, h), lambda w: w.T),
      (prefix + ("encoder_norm", "scale"), ["encoder.final_layer_norm.weight"], (d,), _identity),
  ]
  mlp = [("wi_0", (f, d), _linear_in(f)), ("wi_1", (f, d), _linear_in(f))] if cfg.is_gated else [
      ("wi", (f, d), _linear_in(f))]
  mlp.append(("wo", (d, f), _linear_in(d)))
  for i in range(cfg.num_layers):
    hf, ours = f"encoder.block.{i}.layer.", prefix + (f"layers_{i}",)
    for q, name in (("q", "query"), ("k", "key"), ("v", "value")):
      rules.append((ours + ("attention", name, "kernel"), [hf + f"0.SelfAttention.{q}.weight"],
                    (h * k, d), _linear_in(h, k)))
    rules += [
        (ours + ("attention", "out", "kernel"), [hf + "0.SelfAttention.o.weight"], (d, h * k),
         _linear_out(h, k)),
        (ours + ("pre_attention_layer_norm", "scale"), [hf + "0.layer_norm.weight"], (d,),
         _identity),
        (ours + ("pre_mlp_layer_norm", "scale"), [hf + "1.layer_norm.weight"], (d,), _identity),
    ]
    rules += [(ours + ("mlp", name, "kernel"), [hf + f"1.DenseReluDense.{name}.weight"], shape, fn)
              for name, shape, fn in mlp]
  return rules


def _norm_names(base: str) -> Tuple[List[str], List[str]]:
  """Candidate names of a LayerNorm's weight and bias (old checkpoints say gamma / beta)."""
  return [base + ".weight", base + ".gamma"], [base + ".bias", base + ".beta"]


def _bert_rules(cfg: encoders.BertConfig, prefix: Tuple[str, ...], with_word_embeddings: bool,
                hf_prefix: str) -> List[Rule]:
  d, h, k, f = cfg.d_model, cfg.num_heads, cfg.head_dim, cfg.d_ff
  p = hf_prefix
  rules: List[Rule] = []

  def norm(ours, base):
    weight, bias = _norm_names(base)
    rules.extend([(ours + ("scale",), weight, (d,), _identity),
                  (ours + ("bias",), bias, (d,), _identity)])

  if with_word_embeddings:
    rules.append((prefix + ("token_embedder", "embedding"),
                  [p + "embeddings.word_embeddings.weight"], (cfg.vocab_size, d), _identity))
  rules += [
      (prefix + ("position_embedder", "embedding"), [p + "embeddings.position_embeddings.weight"],
       (cfg.max_position_embeddings, d), _identity),
      (prefix + ("token_type_embedder", "embedding"),
       [p + "embeddings.token_type_embeddings.weight"], (cfg.type_vocab_size, d), _identity),
  ]
  norm(prefix + ("embedding_norm",), p + "embeddings.LayerNorm")
  for i in range(cfg.num_layers):
    hf, ours = f"{p}encoder.layer.{i}.", prefix + (f"layers_{i}",)
    for name in ("query", "key", "value"):
      rules += [(ours + ("attention", name, "kernel"), [hf + f"attention.self.{name}.weight"],
                 (h * k, d), _linear_in(h, k)),
                (ours + ("attention", name, "bias"), [hf + f"attention.self.{name}.bias"],
                 (h * k,), lambda b: b.reshape(h, k))]
    rules += [
        (ours + ("attention", "out", "kernel"), [hf + "attention.output.dense.weight"], (d, h * k),
         _linear_out(h, k)),
        (ours + ("attention", "out", "bias"), [hf + "attention.output.dense.bias"], (d,),
         _identity),
        (ours + ("wi", "kernel"), [hf + "intermediate.dense.weight"], (f, d), _linear_in(f)),
        (ours + ("wi", "bias"), [hf + "intermediate.dense.bias"], (f,), _identity),
        (ours + ("wo", "kernel"), [hf + "output.dense.weight"], (d, f), _linear_in(d)),
        (ours + ("wo", "bias"), [hf + "output.dense.bias"], (d,), _identity),
    ]
    norm(ours + ("attention_norm",), hf + "attention.output.LayerNorm")
    norm(ours + ("mlp_norm",), hf + "output.LayerNorm")
  return rules


def _mlm_rules(cfg: encoders.BertConfig) -> List[Rule]:
  d = cfg.d_model
  weight, bias = _norm_names("cls.predictions.transform.LayerNorm")
  return [
      (("mlm_head", "transform", "kernel"), ["cls.predictions.transform.dense.weight"], (d, d),
       _linear_in(d)),
      (("mlm_head", "transform", "bias"), ["cls.predictions.transform.dense.bias"], (d,),
       _identity),
      (("mlm_head", "transform_norm", "scale"), weight, (d,), _identity),
      (("mlm_head", "transform_norm", "bias"), bias, (d,), _identity),
      (("mlm_head", "output_bias"), ["cls.predictions.bias", "cls.predictions.decoder.bias"],
       (cfg.vocab_size,), _identity),
  ]


def _fetch(store: TensorStore, source: str, candidates: Sequence[str],
           hf_shape: Tuple[int, ...]) -> np.ndarray:
  for name in candidates:
    if name in store:
      tensor = store.get(name)
      if tuple(tensor.shape) != tuple(hf_shape):
        raise CheckpointError(f"{store.file_of(name)}: tensor {name!r} has shape "
                              f"{tuple(tensor.shape)}, expected {tuple(hf_shape)} from config.json")
      return tensor
  alternatives = f" (or {', '.join(map(repr, candidates[1:]))})" if candidates[1:] else ""
  raise CheckpointError(f"{source}: missing tensor {candidates[0]!r}{alternatives}")


def _assemble(rules: List[Rule], store: TensorStore, source: str,
              param_dtype: str) -> Dict[str, Any]:
  params: Dict[str, Any] = {}
  for path, candidates, hf_shape, transform in rules:
    value = transform(np.asarray(_fetch(store, source, candidates, hf_shape)))
    node = params
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = jnp.asarray(value, dtype=param_dtype)
  return params


def _bert_prefix(store: TensorStore) -> str:
  return "bert." if "bert.embeddings.word_embeddings.weight" in store else ""


def _check_tied_decoder(store: TensorStore, words_name: str) -> None:
  """Every BERT MLM we support ties its decoder to the word embeddings; refuse any that differs."""
  decoder = "cls.predictions.decoder.weight"
  if decoder in store:
    words, weights = store.get(words_name), store.get(decoder)
    if weights.shape != words.shape or not np.array_equal(weights, words):
      raise CheckpointError(f"{store.file_of(decoder)}: {decoder!r} differs from the word "
                            "embeddings; untied MLM decoders are not supported")


def abstract_params(module: nn.Module, length: int = 8) -> Any:
  """Unboxed shapes/dtypes of `module`'s params from `jax.eval_shape(init)` (no FLOPs)."""
  ids = jnp.zeros((1, length), jnp.int32)
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), ids, jnp.ones_like(ids))
  return nn.unbox(shapes)["params"]


def has_mlm_head(path: PathLike) -> bool:
  """Whether a Hugging Face BERT directory holds MLM head weights (a BertForMaskedLM)."""
  store, _ = open_weights(_checkpoint_dir(path))
  return "cls.predictions.transform.dense.weight" in store


def from_huggingface(path: PathLike, dtype: str = "float32", *, param_dtype: str = "float32",
                     mlm_head: bool = False) -> Tuple[nn.Module, Dict[str, Any]]:
  """(module, {"params": ...}) for a `save_pretrained` directory of a T5 or BERT model.

  mlm_head=True (BERT only) returns `encoders.BertForMaskedLM`, whose output is MLM logits
  [batch, length, vocab]; it needs the checkpoint of a BertForMaskedLM.
  """
  directory = _checkpoint_dir(path)
  cfg = encoder_config(directory / "config.json", dtype=dtype, param_dtype=param_dtype)
  store, source = open_weights(directory)
  if isinstance(cfg, encoders.T5Config):
    if mlm_head:
      raise CheckpointError(f"{directory / 'config.json'}: mlm_head=True needs a BERT checkpoint")
    module, rules = encoders.T5Encoder(cfg), _t5_rules(cfg, ())
  elif mlm_head:
    module = encoders.BertForMaskedLM(cfg)
    words_name = _bert_prefix(store) + "embeddings.word_embeddings.weight"
    rules = [(("token_embedder", "embedding"), [words_name], (cfg.vocab_size, cfg.d_model),
              _identity)]
    rules += _bert_rules(cfg, ("encoder",), False, _bert_prefix(store)) + _mlm_rules(cfg)
  else:
    module, rules = encoders.BertEncoder(cfg), _bert_rules(cfg, (), True, _bert_prefix(store))
  params = _assemble(rules, store, source, param_dtype)
  if mlm_head:
    _check_tied_decoder(store, words_name)
  expected = abstract_params(module)
  got = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  if jax.tree.structure(got) != jax.tree.structure(expected) or jax.tree.leaves(
      got) != jax.tree.leaves(expected):
    raise AssertionError(f"converter bug: tree of {source} does not match the module's init")
  return module, {"params": params}


# sentence-transformers directories live in their own modules; re-exported for convenience.
from dualenc.sentence_transformer import (  # noqa: E402  pylint: disable=g-import-not-at-top
    POOLING_MODES, SentenceTransformerModel, load_sentence_transformer, minilm_path)


def load_sparse_encoder(path: PathLike, **kwargs):
  """A sentence-transformers SparseEncoder (or SPLADE BertForMaskedLM) directory as a
  `dualenc.sparse.SparseEncoder` and its params: `dualenc.sparse.pretrained.load`."""
  from dualenc.sparse import pretrained  # pylint: disable=g-import-not-at-top
  return pretrained.load(path, **kwargs)
