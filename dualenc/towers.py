"""Dual-encoder towers: SDE, ADE, ADE-SPL, ADE-STE and ADE-FTE (Dong et al. 2022).

A tower is token embedder + encoder + pooling + optional projection + optional L2 norm.
What the query and document towers share:

| architecture | token embedder | encoder | projection |
|---|---|---|---|
| `sde`     | shared          | shared   | shared |
| `ade`     | separate        | separate | separate |
| `ade_spl` | separate        | separate | shared |
| `ade_ste` | shared          | separate | separate |
| `ade_fte` | shared, frozen  | separate | separate |

Parameter tree (what `init_from_pretrained_encoder` fills): `encoder` (sde) or `query_encoder` and
`document_encoder`; `shared_token_embedder` for ade_ste/ade_fte; `projection` (sde, ade_spl) or
`query_projection` and `document_projection`.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Optional

import flax
import gin
import jax
import jax.numpy as jnp
from flax import linen as nn

from dualenc import encoders
from dualenc.encoders import layers

ARCHITECTURES = ("sde", "ade", "ade_spl", "ade_ste", "ade_fte")
POOLINGS = ("mean", "first")
SHARED_EMBEDDER_ARCHITECTURES = ("ade_ste", "ade_fte")
SHARED_PROJECTION_ARCHITECTURES = ("sde", "ade_spl")
# Parameters an optimizer must leave untouched, per architecture (regexes over '/'-joined paths).
FROZEN_PARAMETERS = {"ade_fte": (r"^shared_token_embedder/",)}


def pool(hidden: jax.Array, attention_mask: jax.Array, mode: str) -> jax.Array:
  """[B, L, H] hidden states, [B, L] mask -> [B, H] float32.

  `mean` averages non-padding positions only (so padding never changes the embedding);
  `first` takes position 0 ([CLS] for BERT).
  """
  hidden = hidden.astype(jnp.float32)
  if mode == "mean":
    mask = attention_mask.astype(jnp.float32)[..., None]
    return jnp.sum(hidden * mask, axis=-2) / jnp.maximum(jnp.sum(mask, axis=-2), 1.0)
  if mode == "first":
    return hidden[..., 0, :]
  raise ValueError(f"unknown pooling {mode!r}; expected one of {POOLINGS}")


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """Rows scaled to unit L2 norm; [..., D] -> [..., D]."""
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=-1, keepdims=True), eps))


@gin.configurable
class DualEncoder(nn.Module):
  """Query and document towers over one encoder configuration.

  Attributes:
    encoder_config: an `encoders.T5Config` or `encoders.BertConfig`.
    architecture: one of ARCHITECTURES.
    pooling: `mean` (padding-aware) or `first`.
    embedding_dim: projection output size, or None for no projection.
    projection_init: 'default' (truncated normal, fan-in) or 'identity' (embedding_dim equal
      to the encoder's width: a pretrained encoder's embedding space is kept at step 0 and the
      projection, shared or not, is learned from there).
    normalize: L2-normalise the final embeddings.
  """

  encoder_config: Any
  architecture: str = "ade_spl"
  pooling: str = "mean"
  embedding_dim: Optional[int] = None
  projection_init: str = "default"
  normalize: bool = True

  def setup(self):
    if self.architecture not in ARCHITECTURES:
      raise ValueError(f"DualEncoder.architecture={self.architecture!r}; expected one of "
                       f"{ARCHITECTURES}")
    if self.pooling not in POOLINGS:
      raise ValueError(f"DualEncoder.pooling={self.pooling!r}; expected one of {POOLINGS}")
    config = self.encoder_config
    if self.architecture == "sde":
      encoder = encoders.build_encoder(config, name="encoder")
      self.query_encoder, self.document_encoder = encoder, encoder
    else:
      shared_embedder = None
      if self.architecture in SHARED_EMBEDDER_ARCHITECTURES:
        shared_embedder = encoders.build_token_embedder(config, name="shared_token_embedder")
      frozen = self.architecture == "ade_fte"
      self.query_encoder = encoders.build_encoder(
          config, token_embedder=shared_embedder, freeze_token_embedder=frozen,
          name="query_encoder")
      self.document_encoder = encoders.build_encoder(
          config, token_embedder=shared_embedder, freeze_token_embedder=frozen,
          name="document_encoder")
    if self.projection_init not in ("default", "identity"):
      raise ValueError(f"DualEncoder.projection_init={self.projection_init!r}; expected "
                       "'default' or 'identity'")
    if self.embedding_dim:
      init = {}
      if self.projection_init == "identity":
        width = getattr(config, "d_model", None)
        if width != self.embedding_dim:
          raise ValueError(f"DualEncoder.projection_init='identity' needs embedding_dim equal to "
                           f"the encoder's width {width}; got embedding_dim={self.embedding_dim}")
        init["kernel_init"] = lambda key, shape, dtype=jnp.float32: jnp.eye(*shape, dtype=dtype)
      make = lambda name: layers.DenseGeneral(
          self.embedding_dim, kernel_axes=("embed", "projection"), **init,
          dtype=layers.as_dtype(config.dtype), param_dtype=layers.as_dtype(config.param_dtype),
          name=name)
      if self.architecture in SHARED_PROJECTION_ARCHITECTURES:
        projection = make("projection")
        self.query_projection, self.document_projection = projection, projection
      else:
        self.query_projection = make("query_projection")
        self.document_projection = make("document_projection")

  def _embed(self, encoder, projection, input_ids, attention_mask, deterministic):
    """[..., L] ids and mask -> [..., D] float32 embeddings (leading dims flattened and restored)."""
    lead = input_ids.shape[:-1]
    input_ids = input_ids.reshape(-1, input_ids.shape[-1])
    attention_mask = attention_mask.reshape(-1, attention_mask.shape[-1])
    hidden = encoder(input_ids, attention_mask, deterministic=deterministic)
    pooled = pool(hidden, attention_mask, self.pooling)
    pooled = layers.constrain(pooled, ("batch", "embed"))
    if projection is not None:
      pooled = projection(pooled).astype(jnp.float32)
    if self.normalize:
      pooled = l2_normalize(pooled)
    return pooled.reshape(*lead, pooled.shape[-1])

  def encode_queries(self, input_ids, attention_mask, *, deterministic: bool = True):
    """Query tower: ids [..., L] int32, mask [..., L] -> [..., D] float32."""
    return self._embed(self.query_encoder, self._projection("query"), input_ids,
                       attention_mask, deterministic)

  def encode_documents(self, input_ids, attention_mask, *, deterministic: bool = True):
    """Document tower: ids [..., L] int32, mask [..., L] -> [..., D] float32."""
    return self._embed(self.document_encoder, self._projection("document"), input_ids,
                       attention_mask, deterministic)

  def _projection(self, side: str):
    return getattr(self, f"{side}_projection") if self.embedding_dim else None

  def __call__(self, query_ids, query_mask, document_ids, document_mask, *,
               deterministic: bool = True):
    """Both towers: ([B, Lq], [B, Lq], [..., Ld], [..., Ld]) -> ([B, D], [..., D])."""
    return (self.encode_queries(query_ids, query_mask, deterministic=deterministic),
            self.encode_documents(document_ids, document_mask, deterministic=deterministic))

  # -- what the trainer asks of a model (dualenc.sparse.SparseEncoder answers the same) -------

  def frozen_parameter_patterns(self) -> tuple:
    """Regexes of parameters the optimizer must leave untouched."""
    return FROZEN_PARAMETERS.get(self.architecture, ())

  def load_pretrained(self, params: Mapping[str, Any], pretrained: Mapping[str, Any]) -> dict:
    """`params` with every tower's encoder taken from a converted encoder's params."""
    return init_from_pretrained_encoder(params, pretrained, self.architecture)


def init_from_pretrained_encoder(tower_params: Mapping[str, Any],
                                 encoder_params: Mapping[str, Any],
                                 architecture: str) -> dict:
  """Copies one pretrained encoder's params (e.g. from `convert.from_huggingface`) into every
  encoder of a tower; projections keep their fresh initialisation.

  Args:
    tower_params: the tower's `params` collection (unboxed).
    encoder_params: an encoder's `params` collection, with its own `token_embedder`.
    architecture: the tower's architecture.
  Returns:
    A new params dict with the same structure and shapes as `tower_params`.
  """
  tower_params = flax.core.unfreeze(tower_params)
  encoder_params = dict(flax.core.unfreeze(encoder_params))
  new_params = dict(tower_params)
  if architecture in SHARED_EMBEDDER_ARCHITECTURES:
    embedder = encoder_params.pop("token_embedder")
    new_params["shared_token_embedder"] = embedder
    targets = ("query_encoder", "document_encoder")
  elif architecture == "sde":
    targets = ("encoder",)
  else:
    targets = ("query_encoder", "document_encoder")
  for target in targets:
    # Separate towers get their own copies: they train apart (and a jitted step that donates
    # its state cannot take one buffer twice).
    new_params[target] = jax.tree.map(lambda x: jnp.array(x, copy=True), encoder_params)
  _check_same_shapes(tower_params, new_params)
  return new_params


def _check_same_shapes(expected, got) -> None:
  """Raises ValueError naming every parameter whose presence or shape differs."""
  flat_expected = flax.traverse_util.flatten_dict(expected, sep="/")
  flat_got = flax.traverse_util.flatten_dict(got, sep="/")
  problems = [f"missing {k}" for k in flat_expected.keys() - flat_got.keys()]
  problems += [f"unexpected {k}" for k in flat_got.keys() - flat_expected.keys()]
  problems += [f"{k}: expected shape {flat_expected[k].shape}, got {flat_got[k].shape}"
               for k in flat_expected.keys() & flat_got.keys()
               if flat_expected[k].shape != flat_got[k].shape]
  if problems:
    raise ValueError("pretrained encoder does not fit the tower (different encoder config?): "
                     + "; ".join(sorted(problems)[:20]))


def frozen_parameter_mask(params: Mapping[str, Any], patterns) -> Any:
  """Pytree of bools, True where the '/'-joined parameter path matches any regex in `patterns`."""
  return parameter_labels(params, {p: True for p in patterns}, default=False)


def parameter_labels(params: Mapping[str, Any], patterns: Mapping[str, Any],
                     default: Any) -> Any:
  """Pytree of labels: for each '/'-joined parameter path, the label of the first regex in
  `patterns` (in order) that matches it, else `default`."""
  compiled = [(re.compile(p), label) for p, label in patterns.items()]
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/")
  labels = {k: next((label for c, label in compiled if c.search(k)), default) for k in flat}
  return flax.traverse_util.unflatten_dict(labels, sep="/")
