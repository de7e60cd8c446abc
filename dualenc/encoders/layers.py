"""Flax linen building blocks shared by the T5 and BERT encoders.

Every parameter is created through `nn.with_logical_partitioning` with names from the
vocabulary `vocab`, `embed`, `mlp`, `heads`, `kv`, `relpos_buckets`, `abspos`, `token_types`,
so `dualenc.partitioning` can map them onto a device mesh. Activations are annotated with
`nn.with_logical_constraint` using `batch`, `length`, `embed`, `heads`, `kv`, `mlp`.

`dtype` is the compute dtype (e.g. bfloat16) and `param_dtype` the storage dtype; numerically
sensitive reductions (norm statistics, softmax) always run in float32.

Every matmul goes through `mixed_dot_general`: in float32 it is a plain `lax.dot_general`; in a
16-bit compute dtype (T5X-style mixed precision) both the forward product and the two backward
products take 16-bit operands and accumulate in float32, the cotangent being cast to the compute
dtype first (a plain `dot(...).astype(bf16)` would hand the backward float32 cotangents and so
float32 or mixed-dtype matmuls).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from dualenc.encoders.dropout import Dropout

Dtype = Any
Initializer = Callable[..., jax.Array]
LogicalAxes = Tuple[Optional[str], ...]


def as_dtype(dtype: Union[str, Dtype]) -> Dtype:
  """Accepts dtype names from gin ('bfloat16') as well as dtype objects."""
  return jnp.dtype(dtype)


# Rematerialisation of each encoder layer in the backward pass (`remat_policy` of the configs):
# 'none' keeps every activation; 'full' saves only the layer inputs and recomputes everything;
# 'dots' saves the outputs of matmuls without batch dimensions (the projections and MLP
# matmuls: jax.checkpoint_policies.dots_with_no_batch_dims_saveable, T5X's 'minimal') and
# recomputes the rest, attention's [B, H, L, L] products and softmax included. (With a
# bfloat16 compute dtype what it saves is the float32-accumulated product, before the cast.)
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def check_remat_policy(name: str) -> str:
  if name not in REMAT_POLICIES:
    raise ValueError(f"unknown remat_policy {name!r}; expected one of {tuple(REMAT_POLICIES)}")
  return name


def remat_layer(layer_cls, policy: str, static_argnums: Tuple[int, ...]):
  """`layer_cls` itself for policy 'none', else `nn.remat(layer_cls, ...)` with that policy."""
  check_remat_policy(policy)
  if policy == "none":
    return layer_cls
  return nn.remat(layer_cls, static_argnums=static_argnums, policy=REMAT_POLICIES[policy])


def constrain(x: jax.Array, axes: LogicalAxes) -> jax.Array:
  """Logical sharding constraint on an activation (a no-op without axis rules)."""
  return nn.with_logical_constraint(x, axes)


DimensionNumbers = Tuple[Tuple[Sequence[int], Sequence[int]], Tuple[Sequence[int], Sequence[int]]]


def _canonical_dims(dimension_numbers: DimensionNumbers) -> Tuple[Tuple[Tuple[int, ...], ...], ...]:
  (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
  as_ints = lambda dims: tuple(int(d) for d in dims)
  return ((as_ints(lhs_contract), as_ints(rhs_contract)),
          (as_ints(lhs_batch), as_ints(rhs_batch)))


def _dot_operand_cotangent(g: jax.Array, x_ndim: int, y: jax.Array, x_dims, y_dims,
                           x_is_lhs: bool) -> jax.Array:
  """Cotangent of operand x of `dot_general(lhs, rhs)` (x is lhs or rhs, y the other one) for
  the product's cotangent g, as one dot of g and y accumulated in float32 (the transpose rule
  of `lax.dot_general`).

  x_dims, y_dims: (contracting, batch) dims of x and y. g's axes are the product's: batch, then
  lhs's kept axes, then rhs's. Of dot(g, y) and dot(y, g), the one whose result already has x's
  axis order is used, so no transpose is needed for the encoders' products (kernel gradients of
  DenseGeneral and both attention products): XLA would fold such a transpose into the dot's
  operand layouts, and its CPU runtime has no bfloat16 x bfloat16 -> float32 kernel for some
  of those layouts.
  """
  (x_contract, x_batch), (y_contract, y_batch) = x_dims, y_dims
  x_kept = [d for d in range(x_ndim) if d not in x_contract and d not in x_batch]
  y_kept = [d for d in range(y.ndim) if d not in y_contract and d not in y_batch]
  num_batch = len(x_batch)
  first_kept = x_kept if x_is_lhs else y_kept
  g_first = tuple(range(num_batch, num_batch + len(first_kept)))
  g_second = tuple(range(num_batch + len(first_kept), g.ndim))
  g_y_kept = g_second if x_is_lhs else g_first
  g_batch = tuple(range(num_batch))
  # x's axes that y's free (contracted in the product) axes stand for, in y's axis order.
  x_from_y = [x_contract[list(y_contract).index(d)] for d in sorted(y_contract)]
  g_first_order = list(x_batch) + x_kept + x_from_y     # dot(g, y): batch, g free, y free
  y_first_order = list(x_batch) + x_from_y + x_kept     # dot(y, g): batch, y free, g free
  if y_first_order == list(range(x_ndim)) and g_first_order != list(range(x_ndim)):
    out = jax.lax.dot_general(y, g, ((tuple(y_kept), g_y_kept), (tuple(y_batch), g_batch)),
                              preferred_element_type=jnp.float32)
    order = y_first_order
  else:
    out = jax.lax.dot_general(g, y, ((g_y_kept, tuple(y_kept)), (g_batch, tuple(y_batch))),
                              preferred_element_type=jnp.float32)
    order = g_first_order
  permutation = tuple(int(i) for i in np.argsort(order))
  if permutation != tuple(range(x_ndim)):
    out = jax.lax.transpose(out, permutation)
  return out


def _forward_dot(lhs, rhs, dims, dtype, out_dtype):
  return jax.lax.dot_general(lhs.astype(dtype), rhs.astype(dtype), dims,
                             preferred_element_type=jnp.float32).astype(out_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _low_precision_dot(lhs, rhs, dims, dtype, out_dtype):
  return _forward_dot(lhs, rhs, dims, dtype, out_dtype)


def _low_precision_dot_fwd(lhs, rhs, dims, dtype, out_dtype):
  # The plain dot, not a call of `_low_precision_dot` (whose custom_vjp_call would hide the
  # dot_general from remat policies such as 'dots'). Residuals are the operands as given:
  # float32 parameters are alive anyway (no 16-bit copy is kept), activations already arrive in
  # the compute dtype.
  return _forward_dot(lhs, rhs, dims, dtype, out_dtype), (lhs, rhs)


def _low_precision_dot_bwd(dims, dtype, out_dtype, residuals, g):
  del out_dtype
  lhs, rhs = residuals
  g = g.astype(dtype)
  lhs_c, rhs_c = lhs.astype(dtype), rhs.astype(dtype)
  (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dims
  lhs_dims, rhs_dims = (lhs_contract, lhs_batch), (rhs_contract, rhs_batch)
  lhs_grad = _dot_operand_cotangent(g, lhs.ndim, rhs_c, lhs_dims, rhs_dims, x_is_lhs=True)
  rhs_grad = _dot_operand_cotangent(g, rhs.ndim, lhs_c, rhs_dims, lhs_dims, x_is_lhs=False)
  return lhs_grad.astype(lhs.dtype), rhs_grad.astype(rhs.dtype)


_low_precision_dot.defvjp(_low_precision_dot_fwd, _low_precision_dot_bwd)


def is_low_precision(dtype: Union[str, Dtype]) -> bool:
  """True for 16-bit floating compute dtypes (bfloat16, float16), which get mixed precision."""
  dtype = jnp.dtype(dtype)
  return jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize < 4


def mixed_dot_general(lhs: jax.Array, rhs: jax.Array, dimension_numbers: DimensionNumbers,
                      dtype: Union[str, Dtype] = jnp.float32,
                      out_dtype: Union[str, Dtype, None] = None) -> jax.Array:
  """`lax.dot_general(lhs, rhs, dimension_numbers)` in compute dtype `dtype`, accumulated in
  float32, returned in `out_dtype` (default `dtype`).

  float32 (or wider) `dtype`: exactly `lax.dot_general` of the operands cast to `dtype` with
  `preferred_element_type=float32`, then cast to `out_dtype`. 16-bit `dtype` (bfloat16):
  a `jax.custom_vjp` whose forward multiplies the operands cast to `dtype` with float32
  accumulation, and whose backward casts the cotangent to `dtype` and computes both operand
  gradients as `dtype` x `dtype` products accumulated in float32, each returned in its
  operand's own dtype (float32 for float32 parameters).
  """
  dtype = as_dtype(dtype)
  out_dtype = dtype if out_dtype is None else as_dtype(out_dtype)
  dims = _canonical_dims(dimension_numbers)
  lhs, rhs = jnp.asarray(lhs), jnp.asarray(rhs)
  if not is_low_precision(dtype):
    return _forward_dot(lhs, rhs, dims, dtype, out_dtype)
  return _low_precision_dot(lhs, rhs, dims, dtype, out_dtype)


def mixed_matmul(lhs: jax.Array, rhs: jax.Array, dtype: Union[str, Dtype] = jnp.float32,
                 out_dtype: Union[str, Dtype, None] = None) -> jax.Array:
  """lhs [..., K] @ rhs [K, N] -> [..., N] through `mixed_dot_general`."""
  lhs = jnp.asarray(lhs)
  return mixed_dot_general(lhs, rhs, (((lhs.ndim - 1,), (0,)), ((), ())), dtype, out_dtype)


def _normalize_axes(axes: Union[int, Sequence[int]], ndim: int) -> Tuple[int, ...]:
  axes = (axes,) if isinstance(axes, int) else tuple(axes)
  return tuple(a % ndim for a in axes)


class DenseGeneral(nn.Module):
  """Dense layer contracting `axis` of the input with a kernel of logical `kernel_axes`.

  Input [..., *in_features] -> output [..., *features]. The kernel has shape
  in_features + features (T5X layout, e.g. [embed, heads, kv] for attention queries).
  """

  features: Union[int, Tuple[int, ...]]
  kernel_axes: LogicalAxes
  axis: Union[int, Tuple[int, ...]] = -1
  use_bias: bool = False
  bias_axes: Optional[LogicalAxes] = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Initializer = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
  bias_init: Initializer = nn.initializers.zeros

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
    axis = _normalize_axes(self.axis, inputs.ndim)
    in_shape = tuple(inputs.shape[a] for a in axis)
    kernel_shape = in_shape + features
    if len(self.kernel_axes) != len(kernel_shape):
      raise ValueError(f"kernel_axes {self.kernel_axes} do not match kernel shape {kernel_shape}")
    kernel_init = self.kernel_init

    def init_kernel(key, shape, dtype):
      # Initialise as a 2-D [fan_in, fan_out] matrix so fan-in counts every contracted dim.
      flat = kernel_init(key, (int(np.prod(in_shape)), int(np.prod(features))), dtype)
      return flat.reshape(shape)

    kernel = self.param(
        "kernel", nn.with_logical_partitioning(init_kernel, self.kernel_axes), kernel_shape,
        self.param_dtype)
    # Accumulate in float32 whatever the compute dtype (measured on CPU: a bfloat16 dot with a
    # bfloat16 result takes a slow path, 3x slower than accumulating in float32 and casting).
    out = mixed_dot_general(inputs, kernel, ((axis, tuple(range(len(axis)))), ((), ())),
                            self.dtype)
    if self.use_bias:
      bias_axes = self.bias_axes or self.kernel_axes[len(axis):]
      bias = self.param("bias", nn.with_logical_partitioning(self.bias_init, bias_axes), features,
                        self.param_dtype)
      out = out + jnp.asarray(bias, self.dtype)
    return out


class Embed(nn.Module):
  """Token (or position) embedding table [num_embeddings, features] with logical axes."""

  num_embeddings: int
  features: int
  axes: LogicalAxes = ("vocab", "embed")
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  embedding_init: Initializer = nn.initializers.normal(stddev=1.0)

  def setup(self):
    self.embedding = self.param(
        "embedding", nn.with_logical_partitioning(self.embedding_init, self.axes),
        (self.num_embeddings, self.features), self.param_dtype)

  def __call__(self, ids: jax.Array) -> jax.Array:
    """ids [...] int -> [..., features] in `dtype`."""
    if not jnp.issubdtype(ids.dtype, jnp.integer):
      raise ValueError(f"embedding ids must be integers, got {ids.dtype}")
    return jnp.take(jnp.asarray(self.embedding, self.dtype), ids, axis=0)

  def attend(self, query: jax.Array) -> jax.Array:
    """Logits against every embedding (tied output layer): [..., features] -> [..., num]."""
    query = jnp.asarray(query)
    # "...d,vd->...v"
    return mixed_dot_general(query, self.embedding, (((query.ndim - 1,), (1,)), ((), ())),
                             self.dtype)


class RMSNorm(nn.Module):
  """T5 layer norm: scale only, no mean subtraction, no bias; statistics in float32."""

  epsilon: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = x.shape[-1]
    x32 = jnp.asarray(x, jnp.float32)
    variance = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    y = x32 * jax.lax.rsqrt(variance + self.epsilon)
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                       (features,), self.param_dtype)
    return jnp.asarray(y, self.dtype) * jnp.asarray(scale, self.dtype)


class LayerNorm(nn.Module):
  """BERT layer norm (mean and variance, scale and bias); statistics in float32."""

  epsilon: float = 1e-12
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  axis_name: str = "embed"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = x.shape[-1]
    x32 = jnp.asarray(x, jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    variance = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(variance + self.epsilon)
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones,
                                                             (self.axis_name,)),
                       (features,), self.param_dtype)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros,
                                                           (self.axis_name,)),
                      (features,), self.param_dtype)
    return jnp.asarray(y * jnp.asarray(scale, jnp.float32) + jnp.asarray(bias, jnp.float32),
                       self.dtype)


def padding_bias(attention_mask: jax.Array, dtype: Dtype) -> jax.Array:
  """[batch, length] 1/0 mask -> additive key bias [batch, 1, 1, length] (0 or a large negative)."""
  big_negative = jnp.finfo(jnp.float32).min / 2
  return jnp.where(attention_mask[:, None, None, :] > 0, 0.0, big_negative).astype(jnp.float32)


class MultiHeadAttention(nn.Module):
  """Bidirectional self-attention. x [batch, length, embed] -> [batch, length, embed].

  `scale_logits=False` reproduces T5, which folds 1/sqrt(head_dim) into its initialisation.
  """

  num_heads: int
  head_dim: int
  use_bias: bool = False
  scale_logits: bool = True
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Initializer = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
  # T5 initialises queries with variance / head_dim instead of scaling logits; None: kernel_init.
  query_kernel_init: Optional[Initializer] = None

  @nn.compact
  def __call__(self, x: jax.Array, bias: jax.Array, *, deterministic: bool = True) -> jax.Array:
    """bias: additive logits bias broadcastable to [batch, heads, q_length, k_length]."""
    dense = lambda name, init: DenseGeneral(
        (self.num_heads, self.head_dim), kernel_axes=("embed", "heads", "kv"),
        use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=init, name=name)
    query = dense("query", self.query_kernel_init or self.kernel_init)(x)
    key = dense("key", self.kernel_init)(x)
    value = dense("value", self.kernel_init)(x)
    query = constrain(query, ("batch", "length", "heads", "kv"))
    key = constrain(key, ("batch", "length", "heads", "kv"))
    value = constrain(value, ("batch", "length", "heads", "kv"))
    if self.scale_logits:
      query = query / jnp.sqrt(self.head_dim).astype(self.dtype)
    # Heads-major [B, H, L, D] operands make both products plain batched matmuls (measured:
    # 16% less CPU time per MiniLM batch than contracting the [B, L, H, D] layout directly).
    query, key, value = (jnp.swapaxes(t, 1, 2) for t in (query, key, value))
    # "bhqd,bhkd->bhqk" and "bhqk,bhkd->bhqd"; logits stay float32 for the softmax.
    logits = mixed_dot_general(query, key, (((3,), (3,)), ((0, 1), (0, 1))), self.dtype,
                               out_dtype=jnp.float32)
    weights = jax.nn.softmax(logits + bias, axis=-1).astype(self.dtype)
    if self.dropout_rate > 0.0 and not deterministic:
      weights = Dropout(self.dropout_rate)(weights, deterministic=False)
    context = mixed_dot_general(weights, value, (((3,), (2,)), ((0, 1), (0, 1))), self.dtype)
    context = jnp.swapaxes(context, 1, 2)
    context = constrain(context, ("batch", "length", "heads", "kv"))
    out = DenseGeneral(x.shape[-1], axis=(-2, -1), kernel_axes=("heads", "kv", "embed"),
                       use_bias=self.use_bias, bias_axes=("embed",), dtype=self.dtype,
                       param_dtype=self.param_dtype, kernel_init=self.kernel_init,
                       name="out")(context)
    return constrain(out, ("batch", "length", "embed"))
