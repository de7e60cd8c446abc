"""T5 encoder (T5.1.1 gated-GELU and T5 1.0 ReLU), T5X conventions, Hugging Face numerics.

Forward pass, x = token embeddings [batch, length, embed] (not scaled):
  bias = relative_position_bias(length)                       # [1, heads, length, length], shared
  for each layer:
    x = x + dropout(attention(rms_norm(x), bias + padding))   # logits not scaled by 1/sqrt(d)
    x = x + dropout(mlp(rms_norm(x)))
  out = dropout(rms_norm(x))                                  # final norm is part of the encoder
with mlp(x) = wo(act(wi_0 x) * wi_1 x) ("gated-ACT") or wo(act(wi x)) ("ACT"); no biases.

Parameter tree (num_layers = N, logical axes in brackets):
  token_embedder/embedding                         [vocab, embed]   (absent if one is passed in)
  relpos_bias/rel_embedding                        [heads, relpos_buckets]
  layers_{i}/pre_attention_layer_norm/scale        [embed]
  layers_{i}/attention/{query,key,value}/kernel    [embed, heads, kv]
  layers_{i}/attention/out/kernel                  [heads, kv, embed]
  layers_{i}/pre_mlp_layer_norm/scale              [embed]
  layers_{i}/mlp/{wi_0,wi_1}/kernel (gated) or mlp/wi/kernel   [embed, mlp]
  layers_{i}/mlp/wo/kernel                         [mlp, embed]
  encoder_norm/scale                               [embed]
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional

import gin
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from dualenc.encoders import layers
from dualenc.encoders.dropout import Dropout

ACTIVATIONS = {
    "relu": nn.relu,
    "gelu": functools.partial(nn.gelu, approximate=False),
    "gelu_new": functools.partial(nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(nn.gelu, approximate=True),
    "silu": nn.silu,
    "swish": nn.silu,
}


def activation(name: str):
  """Activation by its Hugging Face name ("gelu" is the exact erf form)."""
  if name not in ACTIVATIONS:
    raise ValueError(f"unsupported activation {name!r}; supported: {sorted(ACTIVATIONS)}")
  return ACTIVATIONS[name]


@gin.configurable(module="dualenc.encoders")
@dataclasses.dataclass(frozen=True)
class T5Config:
  """T5 encoder hyper-parameters (defaults: T5.1.1 base).

  feed_forward_proj: "gated-gelu" (T5.1.1, tanh GELU as in Hugging Face), "relu" (T5 1.0),
  or any "gated-ACT" / "ACT" with ACT in `ACTIVATIONS`.
  dtype: compute dtype; param_dtype: storage dtype of the parameters (names or dtypes).
  remat_policy: rematerialisation of each layer in the backward pass (saves activation memory),
    one of layers.REMAT_POLICIES: 'none', 'full' (recompute everything) or 'dots' (keep the
    outputs of matmuls without batch dimensions, recompute attention).
  """

  vocab_size: int = 32128
  d_model: int = 768
  num_heads: int = 12
  head_dim: int = 64
  num_layers: int = 12
  d_ff: int = 2048
  feed_forward_proj: str = "gated-gelu"
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  dropout_rate: float = 0.1
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat_policy: str = "none"

  def __post_init__(self):
    _ = self.activation_name  # validates feed_forward_proj early, at config time
    layers.check_remat_policy(self.remat_policy)

  @property
  def is_gated(self) -> bool:
    return self.feed_forward_proj.startswith("gated-")

  @property
  def activation_name(self) -> str:
    name = self.feed_forward_proj.split("-", 1)[1] if self.is_gated else self.feed_forward_proj
    if self.is_gated and name == "gelu":
      name = "gelu_new"  # Hugging Face maps "gated-gelu" to the tanh approximation
    activation(name)
    return name


def relative_position_buckets(query_length: int, key_length: int, *, num_buckets: int,
                              max_distance: int) -> np.ndarray:
  """Bidirectional T5 bucket of (key position - query position): int32 [query, key].

  Half the buckets for each direction (key after query: upper half); within each, distances below
  num_buckets/4 get their own bucket and larger ones share logarithmically wider buckets, capped
  at max_distance. Computed in float32 with the operation order of Hugging Face's
  `T5Attention._relative_position_bucket` so bucket boundaries agree exactly.
  """
  relative = (np.arange(key_length, dtype=np.int64)[None, :]
              - np.arange(query_length, dtype=np.int64)[:, None])
  half = num_buckets // 2
  buckets = (relative > 0).astype(np.int64) * half
  distance = np.abs(relative)
  max_exact = half // 2
  with np.errstate(divide="ignore"):  # log(0) on the exact branch, discarded by np.where
    scaled = (np.log(distance.astype(np.float32) / np.float32(max_exact))
              / np.float32(math.log(max_distance / max_exact))
              * np.float32(half - max_exact))
  large = max_exact + np.where(distance < max_exact, 0, scaled).astype(np.int64)
  large = np.minimum(large, half - 1)
  buckets += np.where(distance < max_exact, distance, large)
  return buckets.astype(np.int32)


class RelativePositionBias(nn.Module):
  """Learned per-head bias of each relative-position bucket -> [1, heads, q_len, k_len] float32."""

  num_heads: int
  num_buckets: int
  max_distance: int
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, query_length: int, key_length: int) -> jax.Array:
    rel_embedding = self.param(
        "rel_embedding",
        nn.with_logical_partitioning(nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
                                     ("heads", "relpos_buckets")),
        (self.num_heads, self.num_buckets), self.param_dtype)
    buckets = relative_position_buckets(query_length, key_length, num_buckets=self.num_buckets,
                                        max_distance=self.max_distance)
    # A gather along buckets keeps memory at [heads, q, k] (a one-hot would add a bucket axis).
    bias = jnp.take(jnp.asarray(rel_embedding, jnp.float32), jnp.asarray(buckets), axis=1)
    return bias[None]


class T5Mlp(nn.Module):
  """x [batch, length, embed] -> wo(act(wi_0 x) * wi_1 x) or wo(act(wi x))."""

  config: T5Config

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
    cfg = self.config
    dense = lambda features, axes, name: layers.DenseGeneral(
        features, kernel_axes=axes, dtype=layers.as_dtype(cfg.dtype),
        param_dtype=layers.as_dtype(cfg.param_dtype), name=name)
    act = activation(cfg.activation_name)
    if cfg.is_gated:
      hidden = act(dense(cfg.d_ff, ("embed", "mlp"), "wi_0")(x)) * dense(
          cfg.d_ff, ("embed", "mlp"), "wi_1")(x)
    else:
      hidden = act(dense(cfg.d_ff, ("embed", "mlp"), "wi")(x))
    hidden = layers.constrain(hidden, ("batch", "length", "mlp"))
    hidden = Dropout(cfg.dropout_rate)(hidden, deterministic=deterministic)
    out = dense(cfg.d_model, ("mlp", "embed"), "wo")(hidden)
    return layers.constrain(out, ("batch", "length", "embed"))


class T5EncoderLayer(nn.Module):
  """One pre-norm block: self-attention then MLP, each with a residual connection."""

  config: T5Config

  @nn.compact
  def __call__(self, x: jax.Array, bias: jax.Array, deterministic: bool) -> jax.Array:
    cfg = self.config
    dtype, param_dtype = layers.as_dtype(cfg.dtype), layers.as_dtype(cfg.param_dtype)
    norm = lambda name: layers.RMSNorm(cfg.layer_norm_epsilon, dtype=dtype,
                                       param_dtype=param_dtype, name=name)
    dropout = Dropout(cfg.dropout_rate)
    head_dim = cfg.head_dim
    attention = layers.MultiHeadAttention(
        cfg.num_heads, head_dim, use_bias=False, scale_logits=False,
        dropout_rate=cfg.dropout_rate, dtype=dtype, param_dtype=param_dtype,
        # T5 folds 1/sqrt(head_dim) into the query initialisation instead of the logits.
        query_kernel_init=nn.initializers.variance_scaling(1.0 / head_dim, "fan_in", "normal"),
        name="attention")
    y = attention(norm("pre_attention_layer_norm")(x), bias, deterministic=deterministic)
    x = x + dropout(y, deterministic=deterministic)
    y = T5Mlp(cfg, name="mlp")(norm("pre_mlp_layer_norm")(x), deterministic=deterministic)
    x = x + dropout(y, deterministic=deterministic)
    return layers.constrain(x, ("batch", "length", "embed"))


class T5Encoder(nn.Module):
  """T5 encoder stack: (input_ids [B, L], attention_mask [B, L]) -> hidden [B, L, d_model].

  token_embedder: a shared `layers.Embed` owned by a parent module; None creates one named
    `token_embedder` here. freeze_token_embedder: stop gradients through the embeddings.
  token_type_ids is accepted for interface parity with BERT and must be None.
  """

  config: T5Config
  token_embedder: Optional[nn.Module] = None
  freeze_token_embedder: bool = False

  @nn.compact
  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array,
               token_type_ids: Optional[jax.Array] = None,
               deterministic: bool = True) -> jax.Array:
    cfg = self.config
    if token_type_ids is not None:
      raise ValueError("T5 encoders have no token types; pass token_type_ids=None")
    if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
      raise ValueError(f"expected input_ids and attention_mask [batch, length], got "
                       f"{input_ids.shape} and {attention_mask.shape}")
    dtype, param_dtype = layers.as_dtype(cfg.dtype), layers.as_dtype(cfg.param_dtype)
    embedder = self.token_embedder
    if embedder is None:
      embedder = build_token_embedder(cfg, name="token_embedder")
    x = jnp.asarray(embedder(input_ids.astype(jnp.int32)), dtype)
    if self.freeze_token_embedder:
      x = jax.lax.stop_gradient(x)
    x = layers.constrain(x, ("batch", "length", "embed"))
    x = Dropout(cfg.dropout_rate)(x, deterministic=deterministic)

    length = input_ids.shape[1]
    bias = RelativePositionBias(cfg.num_heads, cfg.relative_attention_num_buckets,
                                cfg.relative_attention_max_distance, param_dtype=param_dtype,
                                name="relpos_bias")(length, length)
    bias = bias + layers.padding_bias(attention_mask, jnp.float32)  # [B, heads, L, L]

    layer_cls = layers.remat_layer(T5EncoderLayer, cfg.remat_policy, static_argnums=(3,))
    for i in range(cfg.num_layers):
      x = layer_cls(cfg, name=f"layers_{i}")(x, bias, deterministic)
    x = layers.RMSNorm(cfg.layer_norm_epsilon, dtype=dtype, param_dtype=param_dtype,
                       name="encoder_norm")(x)
    x = Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    return layers.constrain(x, ("batch", "length", "embed"))


def build_token_embedder(config: T5Config, *, name: Optional[str] = None) -> layers.Embed:
  """Word embeddings [vocab, d_model], initialised N(0, 1) as in T5X."""
  return layers.Embed(config.vocab_size, config.d_model, axes=("vocab", "embed"),
                      dtype=layers.as_dtype(config.dtype),
                      param_dtype=layers.as_dtype(config.param_dtype),
                      embedding_init=nn.initializers.normal(stddev=1.0), name=name)
