"""Transformer encoders for dual encoders and sparse retrievers (Flax linen, T5X conventions).

Public interface:
  T5Config, BertConfig                        frozen, gin-configurable hyper-parameters
  T5Encoder, BertEncoder                      (input_ids [B, L], attention_mask [B, L],
                                               token_type_ids=None, deterministic=True)
                                              -> hidden [B, L, d_model] in config.dtype
  BertForMaskedLM                             same inputs -> MLM logits [B, L, vocab]
  BertMlmHead                                 (hidden, word_embedder) -> MLM logits
  build_encoder(config, token_embedder=None, freeze_token_embedder=False, name=None)
  build_token_embedder(config, name=None)     word embeddings [vocab, d_model] (layers.Embed)
"""

from __future__ import annotations

from typing import Optional, Union

from flax import linen as nn

from dualenc.encoders import bert
from dualenc.encoders import layers
from dualenc.encoders import t5
from dualenc.encoders.bert import BertConfig, BertEncoder, BertForMaskedLM, BertMlmHead
from dualenc.encoders.t5 import T5Config, T5Encoder

EncoderConfig = Union[T5Config, BertConfig]


def _family(config: EncoderConfig):
  if isinstance(config, T5Config):
    return t5, T5Encoder
  if isinstance(config, BertConfig):
    return bert, BertEncoder
  raise TypeError(f"unsupported encoder config {type(config).__name__}; expected T5Config or "
                  "BertConfig (bind ENCODER_CONFIG = @encoders.T5Config() in gin)")


def build_encoder(config: EncoderConfig, *, token_embedder: Optional[nn.Module] = None,
                  freeze_token_embedder: bool = False, name: Optional[str] = None) -> nn.Module:
  """The encoder of `config`'s family; `token_embedder` shares word embeddings across towers."""
  _, encoder_cls = _family(config)
  return encoder_cls(config, token_embedder=token_embedder,
                     freeze_token_embedder=freeze_token_embedder, name=name)


def build_token_embedder(config: EncoderConfig, *, name: Optional[str] = None) -> layers.Embed:
  """Word-embedding table [vocab_size, d_model] initialised as `config`'s family does."""
  module, _ = _family(config)
  return module.build_token_embedder(config, name=name)


__all__ = [
    "BertConfig", "BertEncoder", "BertForMaskedLM", "BertMlmHead", "T5Config", "T5Encoder",
    "EncoderConfig", "build_encoder", "build_token_embedder", "layers",
]
