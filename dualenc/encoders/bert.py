"""BERT encoder and masked-language-model head, T5X conventions, Hugging Face numerics.

Forward pass:
  x = layer_norm(word[ids] + position[0..L-1] + token_type[types])          then dropout
  for each layer (post-norm):
    x = layer_norm(x + dropout(attention(x, padding)))      # logits scaled by 1/sqrt(head_dim)
    x = layer_norm(x + dropout(wo(act(wi x))))               # act: erf GELU for "gelu"
MLM head: logits = layer_norm(act(transform x)) @ word_embeddings^T + output_bias  [B, L, vocab]

Parameter tree of `BertEncoder` (logical axes in brackets):
  token_embedder/embedding                        [vocab, embed]  (absent if one is passed in)
  position_embedder/embedding                     [abspos, embed]
  token_type_embedder/embedding                   [token_types, embed]
  embedding_norm/{scale,bias}                     [embed]
  layers_{i}/attention/{query,key,value}/kernel   [embed, heads, kv]   .../bias [heads, kv]
  layers_{i}/attention/out/kernel                 [heads, kv, embed]   .../bias [embed]
  layers_{i}/attention_norm/{scale,bias}          [embed]
  layers_{i}/wi/kernel [embed, mlp], bias [mlp];  layers_{i}/wo/kernel [mlp, embed], bias [embed]
  layers_{i}/mlp_norm/{scale,bias}                [embed]
`BertForMaskedLM`: token_embedder/embedding, encoder/... (the tree above without token_embedder),
  mlm_head/transform/{kernel [embed, mlp], bias [mlp]}, mlm_head/transform_norm/{scale,bias}
  [embed], mlm_head/output_bias [vocab].
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import gin
import jax
import jax.numpy as jnp
from flax import linen as nn

from dualenc.encoders import layers
from dualenc.encoders.dropout import Dropout
from dualenc.encoders.t5 import activation


@gin.configurable(module="dualenc.encoders")
@dataclasses.dataclass(frozen=True)
class BertConfig:
  """BERT encoder hyper-parameters (defaults: bert-base-uncased).

  d_model is Hugging Face's hidden_size, d_ff its intermediate_size; head_dim = d_model / heads.
  hidden_act: Hugging Face activation name ("gelu" is the exact erf GELU).
  dtype: compute dtype ('bfloat16': mixed precision, see layers.mixed_dot_general);
  param_dtype: storage dtype of the parameters.
  remat_policy: rematerialisation of each layer in the backward pass, one of
    layers.REMAT_POLICIES: 'none', 'full' (recompute everything) or 'dots' (keep matmul outputs).
  """

  vocab_size: int = 30522
  d_model: int = 768
  num_heads: int = 12
  num_layers: int = 12
  d_ff: int = 3072
  hidden_act: str = "gelu"
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  initializer_range: float = 0.02
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat_policy: str = "none"

  def __post_init__(self):
    activation(self.hidden_act)
    layers.check_remat_policy(self.remat_policy)
    if self.d_model % self.num_heads:
      raise ValueError(f"d_model {self.d_model} is not a multiple of num_heads {self.num_heads}")

  @property
  def head_dim(self) -> int:
    return self.d_model // self.num_heads


def _init(config: BertConfig):
  return nn.initializers.normal(stddev=config.initializer_range)


def _dense(config: BertConfig, features, axes, name):
  return layers.DenseGeneral(features, kernel_axes=axes, use_bias=True,
                             dtype=layers.as_dtype(config.dtype),
                             param_dtype=layers.as_dtype(config.param_dtype),
                             kernel_init=_init(config), name=name)


def _layer_norm(config: BertConfig, name: str) -> layers.LayerNorm:
  return layers.LayerNorm(config.layer_norm_eps, dtype=layers.as_dtype(config.dtype),
                          param_dtype=layers.as_dtype(config.param_dtype), name=name)


class BertLayer(nn.Module):
  """One post-norm transformer block: x [B, L, embed], bias [B, 1, 1, L] -> [B, L, embed]."""

  config: BertConfig

  @nn.compact
  def __call__(self, x: jax.Array, bias: jax.Array, deterministic: bool) -> jax.Array:
    cfg = self.config
    dropout = Dropout(cfg.dropout_rate)
    y = layers.MultiHeadAttention(
        cfg.num_heads, cfg.head_dim, use_bias=True, scale_logits=True,
        dropout_rate=cfg.attention_dropout_rate, dtype=layers.as_dtype(cfg.dtype),
        param_dtype=layers.as_dtype(cfg.param_dtype), kernel_init=_init(cfg),
        name="attention")(x, bias, deterministic=deterministic)
    x = _layer_norm(cfg, "attention_norm")(x + dropout(y, deterministic=deterministic))
    hidden = activation(cfg.hidden_act)(_dense(cfg, cfg.d_ff, ("embed", "mlp"), "wi")(x))
    hidden = layers.constrain(hidden, ("batch", "length", "mlp"))
    y = _dense(cfg, cfg.d_model, ("mlp", "embed"), "wo")(hidden)
    x = _layer_norm(cfg, "mlp_norm")(x + dropout(y, deterministic=deterministic))
    return layers.constrain(x, ("batch", "length", "embed"))


class BertEncoder(nn.Module):
  """BERT stack: (input_ids [B, L], attention_mask [B, L], token_type_ids [B, L] or None)
  -> hidden [B, L, d_model] in config.dtype (last layer output, no pooler).

  token_embedder: a shared `layers.Embed` (word embeddings only) owned by a parent module; None
    creates one named `token_embedder` here. freeze_token_embedder: stop gradients through it.
  """

  config: BertConfig
  token_embedder: Optional[nn.Module] = None
  freeze_token_embedder: bool = False

  @nn.compact
  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array,
               token_type_ids: Optional[jax.Array] = None,
               deterministic: bool = True) -> jax.Array:
    cfg = self.config
    if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
      raise ValueError(f"expected input_ids and attention_mask [batch, length], got "
                       f"{input_ids.shape} and {attention_mask.shape}")
    length = input_ids.shape[1]
    if length > cfg.max_position_embeddings:
      raise ValueError(f"sequence length {length} exceeds max_position_embeddings "
                       f"{cfg.max_position_embeddings}")
    dtype, param_dtype = layers.as_dtype(cfg.dtype), layers.as_dtype(cfg.param_dtype)
    embedder = self.token_embedder
    if embedder is None:
      embedder = build_token_embedder(cfg, name="token_embedder")
    words = jnp.asarray(embedder(input_ids.astype(jnp.int32)), dtype)
    if self.freeze_token_embedder:
      words = jax.lax.stop_gradient(words)
    embed = lambda num, axes, name: layers.Embed(
        num, cfg.d_model, axes=axes, dtype=dtype, param_dtype=param_dtype,
        embedding_init=_init(cfg), name=name)
    positions = embed(cfg.max_position_embeddings, ("abspos", "embed"), "position_embedder")(
        jnp.arange(length, dtype=jnp.int32))
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids, dtype=jnp.int32)
    types = embed(cfg.type_vocab_size, ("token_types", "embed"), "token_type_embedder")(
        token_type_ids.astype(jnp.int32))
    x = _layer_norm(cfg, "embedding_norm")(words + positions[None] + types)
    x = layers.constrain(x, ("batch", "length", "embed"))
    x = Dropout(cfg.dropout_rate)(x, deterministic=deterministic)

    bias = layers.padding_bias(attention_mask, jnp.float32)
    layer_cls = layers.remat_layer(BertLayer, cfg.remat_policy, static_argnums=(3,))
    for i in range(cfg.num_layers):
      x = layer_cls(cfg, name=f"layers_{i}")(x, bias, deterministic)
    return x


class BertMlmHead(nn.Module):
  """MLM head: hidden [B, L, embed] and the (tied) word embedder -> logits [B, L, vocab].

  `transformed(hidden)` gives the states the decoder multiplies ([B, L, embed]), and
  `output_bias` the decoder bias [vocab]: the sparse models pool logits chunk by chunk from them
  without materialising [B, L, vocab]. The transform kernel is named [embed, mlp] (not
  [embed, embed]) so one mesh axis is never asked to shard both of its dimensions.
  """

  config: BertConfig

  def setup(self):
    cfg = self.config
    self.transform = _dense(cfg, cfg.d_model, ("embed", "mlp"), None)
    self.transform_norm = _layer_norm(cfg, None)
    self.output_bias = self.param(
        "output_bias", nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
        (cfg.vocab_size,), layers.as_dtype(cfg.param_dtype))

  def transformed(self, hidden: jax.Array) -> jax.Array:
    return self.transform_norm(activation(self.config.hidden_act)(self.transform(hidden)))

  def __call__(self, hidden: jax.Array, word_embedder: layers.Embed) -> jax.Array:
    logits = word_embedder.attend(self.transformed(hidden))
    logits = logits + jnp.asarray(self.output_bias, logits.dtype)
    return layers.constrain(logits, ("batch", "length", "vocab"))


class BertForMaskedLM(nn.Module):
  """BERT encoder + MLM head with decoder weights tied to the word embeddings.

  apply(variables, input_ids, attention_mask, token_type_ids=None, deterministic=True)
    -> logits [B, L, vocab] in config.dtype.
  """

  config: BertConfig
  token_embedder: Optional[nn.Module] = None
  freeze_token_embedder: bool = False

  @nn.compact
  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array,
               token_type_ids: Optional[jax.Array] = None,
               deterministic: bool = True) -> jax.Array:
    embedder = self.token_embedder
    if embedder is None:
      embedder = build_token_embedder(self.config, name="token_embedder")
    hidden = BertEncoder(self.config, token_embedder=embedder,
                         freeze_token_embedder=self.freeze_token_embedder, name="encoder")(
                             input_ids, attention_mask, token_type_ids, deterministic)
    return BertMlmHead(self.config, name="mlm_head")(hidden, embedder)


def build_token_embedder(config: BertConfig, *, name: Optional[str] = None) -> layers.Embed:
  """Word embeddings [vocab, d_model], initialised N(0, initializer_range^2) as in BERT."""
  return layers.Embed(config.vocab_size, config.d_model, axes=("vocab", "embed"),
                      dtype=layers.as_dtype(config.dtype),
                      param_dtype=layers.as_dtype(config.param_dtype),
                      embedding_init=_init(config), name=name)
