"""dualenc encoders -> Hugging Face `transformers` directories (config.json, safetensors, tokenizer).

The tensor names and layouts are those `dualenc.convert` imports, inverted rule by rule, so a
model exported here and imported again gives back the same parameters bit for bit:

  tensors = encoder_tensors(config, encoder_params)                  # BertModel / T5EncoderModel
  tensors = encoder_tensors(config, encoder_params, mlm_head=head)   # BertForMaskedLM ("bert.")
  write_transformer(directory, config, tensors, vocabulary, max_length, mlm=False)

`encoder_params` is one encoder's params tree with its own `token_embedder` (towers that share an
embedder hand it in: `with_token_embedder`). Nothing here imports torch or transformers: weights
are written with `safetensors.numpy`, tokenizers with Hugging Face `tokenizers`.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np

from dualenc import convert
from dualenc import encoders

# The MLM output bias given to special tokens on export: dualenc zeroes their document weights
# (SparseEncoder.zero_special_tokens); sentence-transformers has no such step, so their logits
# are pushed far below 0 instead and log1p(relu(.)) gives exactly 0 there too.
SILENCED_BIAS = -1.0e4


def with_token_embedder(encoder_params: Mapping[str, Any], embedding) -> Dict[str, Any]:
  """An encoder's params whose token embedder lives outside it (shared towers, sparse models)
  as one self-contained tree."""
  return {**dict(encoder_params), "token_embedder": {"embedding": embedding}}


def _leaf(tree: Mapping[str, Any], path: Sequence[str]) -> np.ndarray:
  node = tree
  for key in path:
    node = node[key]
  return np.asarray(node, np.float32)


def _invert(transform, hf_shape, value: np.ndarray) -> np.ndarray:
  """The Hugging Face tensor that `transform` (an import rule's reshape/transpose) maps to
  `value`: the rule is applied to element indices, whose positions say where each goes."""
  size = int(np.prod(hf_shape))
  where = np.asarray(transform(np.arange(size).reshape(hf_shape)))
  if where.shape != value.shape:
    raise ValueError(f"parameter of shape {value.shape} does not fit the Hugging Face tensor of "
                     f"shape {tuple(hf_shape)} (expected {where.shape})")
  out = np.empty(size, value.dtype)
  out[where.ravel()] = value.ravel()
  return out.reshape(hf_shape)


def _apply_rules(rules, params: Mapping[str, Any]) -> Dict[str, np.ndarray]:
  return {candidates[0]: _invert(transform, hf_shape, _leaf(params, path))
          for path, candidates, hf_shape, transform in rules}


def encoder_tensors(config: encoders.EncoderConfig, encoder_params: Mapping[str, Any], *,
                    mlm_head: Optional[Mapping[str, Any]] = None,
                    silenced_ids: Sequence[int] = ()) -> Dict[str, np.ndarray]:
  """Hugging Face tensors (name -> float32 array) of one encoder.

  BERT without `mlm_head`: a BertModel (bare names). With `mlm_head` (BertMlmHead params): a
  BertForMaskedLM ("bert." names plus cls.predictions.*, decoder tied to the word embeddings),
  with `silenced_ids`' output bias set to SILENCED_BIAS. T5: a T5EncoderModel.
  """
  if isinstance(config, encoders.T5Config):
    if mlm_head is not None:
      raise ValueError("T5 encoders have no MLM head")
    return _apply_rules(convert._t5_rules(config, ()), encoder_params)  # pylint: disable=protected-access
  prefix = "" if mlm_head is None else "bert."
  rules = [(("token_embedder", "embedding"), [prefix + "embeddings.word_embeddings.weight"],
            (config.vocab_size, config.d_model), convert._identity)]  # pylint: disable=protected-access
  rules += convert._bert_rules(config, (), False, prefix)  # pylint: disable=protected-access
  tensors = _apply_rules(rules, encoder_params)
  if mlm_head is None:
    # dualenc trains no pooler; a zero one (pooler_output = tanh(0) = 0) spares transformers'
    # "newly initialized" report and random values for a layer no pooling mode reads.
    d = config.d_model
    tensors.update({"pooler.dense.weight": np.zeros((d, d), np.float32),
                    "pooler.dense.bias": np.zeros((d,), np.float32)})
  else:
    head = _apply_rules(convert._mlm_rules(config), {"mlm_head": mlm_head})  # pylint: disable=protected-access
    bias = head["cls.predictions.bias"]
    bias[list(silenced_ids)] = SILENCED_BIAS
    tensors.update(head)
  return tensors


def hf_config(config: encoders.EncoderConfig, *, mlm: bool = False) -> Dict[str, Any]:
  """config.json of the exported model (what `convert.encoder_config` reads back)."""
  if isinstance(config, encoders.T5Config):
    return {"architectures": ["T5EncoderModel"], "model_type": "t5",
            "vocab_size": config.vocab_size, "d_model": config.d_model, "d_kv": config.head_dim,
            "d_ff": config.d_ff, "num_layers": config.num_layers, "num_heads": config.num_heads,
            "feed_forward_proj": config.feed_forward_proj,
            "relative_attention_num_buckets": config.relative_attention_num_buckets,
            "relative_attention_max_distance": config.relative_attention_max_distance,
            "layer_norm_epsilon": config.layer_norm_epsilon, "dropout_rate": config.dropout_rate,
            "is_encoder_decoder": False, "use_cache": False, "tie_word_embeddings": False,
            "pad_token_id": 0, "eos_token_id": 1, "torch_dtype": "float32"}
  return {"architectures": ["BertForMaskedLM" if mlm else "BertModel"], "model_type": "bert",
          "vocab_size": config.vocab_size, "hidden_size": config.d_model,
          "num_hidden_layers": config.num_layers, "num_attention_heads": config.num_heads,
          "intermediate_size": config.d_ff, "hidden_act": config.hidden_act,
          "max_position_embeddings": config.max_position_embeddings,
          "type_vocab_size": config.type_vocab_size, "layer_norm_eps": config.layer_norm_eps,
          "hidden_dropout_prob": config.dropout_rate,
          "attention_probs_dropout_prob": config.attention_dropout_rate,
          "initializer_range": config.initializer_range, "position_embedding_type": "absolute",
          "pad_token_id": 0, "tie_word_embeddings": True, "torch_dtype": "float32"}


def write_json(path: pathlib.Path, value: Any) -> None:
  path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_weights(path: pathlib.Path, tensors: Mapping[str, np.ndarray]) -> None:
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path),
            metadata={"format": "pt"})


# ---------------------------------------------------------------------------------------------
# Tokenizer files.


def _is_wordpiece(vocabulary) -> bool:
  return hasattr(vocabulary, "vocab_path") and hasattr(vocabulary, "tokens")


def write_tokenizer(directory: pathlib.Path, vocabulary, max_length: int) -> None:
  """Tokenizer files `transformers.AutoTokenizer` reads, giving the ids dualenc frames texts
  with: WordPiece -> [CLS] pieces [SEP] (vocab.txt, tokenizer.json); SentencePiece -> pieces
  </s> (spiece.model, T5Tokenizer). `max_length` becomes model_max_length (truncation)."""
  if _is_wordpiece(vocabulary):
    _write_wordpiece(directory, vocabulary, max_length)
  elif hasattr(vocabulary, "sp_model"):
    _write_sentencepiece(directory, vocabulary, max_length)
  else:
    raise ValueError(f"cannot export the tokenizer of {vocabulary!r} (expected dualenc's "
                     "WordPieceVocabulary or a seqio SentencePieceVocabulary)")


def wordpiece_tokenizer_json(vocab_path: str, lower_case: bool):
  """A `tokenizers.Tokenizer` equal to BERT's fast tokenizer over `vocab_path`."""
  from tokenizers import decoders, processors  # pylint: disable=g-import-not-at-top
  from dualenc.sparse import idf as idf_lib  # pylint: disable=g-import-not-at-top
  tokenizer = idf_lib.wordpiece_tokenizer(vocab_path, lower_case=lower_case)
  tokenizer.post_processor = processors.TemplateProcessing(
      single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
      special_tokens=[("[CLS]", tokenizer.token_to_id("[CLS]")),
                      ("[SEP]", tokenizer.token_to_id("[SEP]"))])
  tokenizer.decoder = decoders.WordPiece(prefix="##")
  return tokenizer


def _write_wordpiece(directory: pathlib.Path, vocabulary, max_length: int) -> None:
  specials = {"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]",
              "unk_token": "[UNK]", "mask_token": "[MASK]"}
  missing = [t for t in specials.values() if t not in vocabulary.tokens]
  if missing:
    raise ValueError(f"{vocabulary.vocab_path}: the vocabulary lacks {missing}; BERT tokenizers "
                     "need [CLS] [SEP] [PAD] [UNK] [MASK]")
  (directory / "vocab.txt").write_text("\n".join(vocabulary.tokens) + "\n", encoding="utf-8")
  wordpiece_tokenizer_json(vocabulary.vocab_path, vocabulary.lower_case).save(
      str(directory / "tokenizer.json"))
  write_json(directory / "tokenizer_config.json", {
      "tokenizer_class": "BertTokenizer", "do_lower_case": vocabulary.lower_case,
      "tokenize_chinese_chars": True, "strip_accents": None, "model_max_length": max_length,
      "padding_side": "right", "truncation_side": "right", **specials})
  write_json(directory / "special_tokens_map.json", specials)


def _write_sentencepiece(directory: pathlib.Path, vocabulary, max_length: int) -> None:
  import sentencepiece  # pylint: disable=g-import-not-at-top
  model = sentencepiece.SentencePieceProcessor(model_proto=vocabulary.sp_model)
  if model.pad_id() != 0 or model.eos_id() < 0:
    raise ValueError(f"{vocabulary!r}: a T5 tokenizer needs pad id 0 and an EOS piece "
                     f"(this model: pad {model.pad_id()}, eos {model.eos_id()})")
  (directory / "spiece.model").write_bytes(vocabulary.sp_model)
  specials = {"eos_token": model.id_to_piece(model.eos_id()),
              "pad_token": model.id_to_piece(model.pad_id()),
              "unk_token": model.id_to_piece(model.unk_id())}
  write_json(directory / "tokenizer_config.json", {
      "tokenizer_class": "T5Tokenizer", "extra_ids": 0, "model_max_length": max_length,
      "padding_side": "right", "truncation_side": "right", **specials})
  write_json(directory / "special_tokens_map.json", specials)


def write_transformer(directory: pathlib.Path, config: encoders.EncoderConfig,
                      tensors: Mapping[str, np.ndarray], vocabulary, max_length: int, *,
                      mlm: bool = False) -> None:
  """config.json + model.safetensors + tokenizer files: a `from_pretrained` directory."""
  directory.mkdir(parents=True, exist_ok=True)
  write_json(directory / "config.json", hf_config(config, mlm=mlm))
  write_weights(directory / "model.safetensors", tensors)
  write_tokenizer(directory, vocabulary, max_length)
