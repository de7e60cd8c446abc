"""Learned sparse retrievers over a BERT-family MLM encoder, with the dense towers' interface.

`SparseEncoder` has `encode_queries(ids, mask)` and `encode_documents(ids, mask)` ([B, L] ->
[B, V] float32 term weights) and `__call__` for both, like `towers.DualEncoder`, so the one
trainer and evaluator serve it. Scores are dot products of the two [V] vectors.

| query_encoder | query side | model at query time | what it is |
|---|---|---|---|
| `idf` | 1 per distinct query token x relu(idf), idf a [V] parameter | none: tokenizer + table | inference-free (Geng et al. 2024; OpenSearch doc-v2/v3) |
| `ones` | 1 per distinct query token | none | SPLADE-doc (idf = 1) |
| `mlm` | the document encoder's SPLADE-max vector | the MLM encoder | siamese SPLADE |

Documents: BERT encoder -> MLM head transform -> logits against the tied word embeddings +
bias -> `splade_max_pool` (max over unmasked positions, chunked so [B, L, V] logits are never
held), activation log1p(relu(x)) or log1p(log1p(relu(x))). Special tokens ([PAD], [UNK],
[CLS], [SEP], [MASK], [unused*]) never get a weight on either side when `zero_special_tokens`.

Parameter tree: `token_embedder/embedding` [vocab, embed] (also the MLM decoder),
`document_encoder/...` (BertEncoder without its embedder), `mlm_head/{transform, transform_norm,
output_bias}`, and `idf` [vocab] for query_encoder='idf'.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Tuple

import flax
import gin
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from dualenc.encoders import bert
from dualenc.encoders import layers
from dualenc.sparse import functions

QUERY_ENCODERS = ("idf", "ones", "mlm")
# BERT uncased WordPiece (all-MiniLM-L6-v2's vocabulary): [PAD] [UNK] [CLS] [SEP] [MASK].
BERT_SPECIAL_IDS = (0, 100, 101, 102, 103)


@gin.configurable(module="dualenc.sparse")
class SparseEncoder(nn.Module):
  """A learned sparse retriever (see the module docstring).

  Attributes:
    encoder_config: a `encoders.BertConfig` (the MLM encoder of the document side).
    query_encoder: 'idf' (inference-free), 'ones' (SPLADE-doc) or 'mlm' (siamese).
    activation: 'log1p_relu' (SPLADE) or 'log1p_log1p_relu' (l0-style).
    chunk_size: positions per chunk of the max-pool (memory: [B, chunk_size, V] logits).
    special_ids: token ids that never carry weight (default: BERT's [PAD] [UNK] [CLS] [SEP]
      [MASK]; bind it for other vocabularies).
    zero_special_tokens: zero the special ids in document (and siamese query) vectors.
    idf_path: idf.json (`python -m dualenc.sparse.idf`) that initialises the IDF table of a fresh
      run (query_encoder='idf'); None starts from ones.
    idf_trainable: train the IDF table (its learning rate: make_optimizer.learning_rate_scales,
      e.g. {'^idf$': 100.0}); False keeps it fixed.
    vocab_path: the WordPiece vocab.txt idf.json's tokens are looked up in (default
      all-MiniLM-L6-v2's).
    missing_idf: the IDF of tokens an idf.json lacks (idf_path here, or one beside a pretrained
      start): 0.0 as sentence-transformers reads it, 1.0 as OpenSearch's training code does.
    prune_top_k, prune_ratio: at inference (deterministic calls), keep each document vector's
      k largest weights / those >= ratio x its largest (`functions.top_k_prune`); training
      never prunes.
    architecture: 'sparse' (tells the trainer and evaluator what kind of model this is).
  """

  encoder_config: Any
  query_encoder: str = "idf"
  activation: str = "log1p_relu"
  chunk_size: int = 32
  special_ids: Tuple[int, ...] = BERT_SPECIAL_IDS
  zero_special_tokens: bool = True
  idf_path: Optional[str] = None
  idf_trainable: bool = True
  vocab_path: Optional[str] = None
  missing_idf: float = 0.0
  prune_top_k: Optional[int] = None
  prune_ratio: Optional[float] = None
  architecture: str = "sparse"
  # A pretrained start (INITIAL_CHECKPOINT_PATH) includes the checkpoint's MLM head if it has one.
  has_mlm_head = True

  def setup(self):
    if self.query_encoder not in QUERY_ENCODERS:
      raise ValueError(f"SparseEncoder.query_encoder={self.query_encoder!r}; expected one of "
                       f"{QUERY_ENCODERS}")
    if self.activation not in functions.ACTIVATIONS:
      raise ValueError(f"SparseEncoder.activation={self.activation!r}; expected one of "
                       f"{functions.ACTIVATIONS}")
    if not isinstance(self.encoder_config, bert.BertConfig):
      raise ValueError("SparseEncoder needs a BERT-family encoder (its MLM head gives the "
                       f"vocabulary weights); got {type(self.encoder_config).__name__}")
    config = self.encoder_config
    self.token_embedder = bert.build_token_embedder(config)
    self.document_encoder = bert.BertEncoder(config, token_embedder=self.token_embedder)
    self.mlm_head = bert.BertMlmHead(config)
    if self.query_encoder == "idf":
      self.idf = self.param("idf", nn.with_logical_partitioning(nn.initializers.ones, ("vocab",)),
                            (config.vocab_size,), jnp.float32)

  def _keep_terms(self) -> jax.Array:
    keep = np.ones(self.encoder_config.vocab_size, np.float32)
    if self.zero_special_tokens:
      keep[list(self.special_ids)] = 0.0
    return jnp.asarray(keep)

  def _mlm_weights(self, input_ids, attention_mask, deterministic: bool) -> jax.Array:
    """[..., L] ids and mask -> [..., V] SPLADE-max weights through the MLM encoder."""
    lead = input_ids.shape[:-1]
    input_ids = input_ids.reshape(-1, input_ids.shape[-1])
    attention_mask = attention_mask.reshape(-1, attention_mask.shape[-1])
    hidden = self.document_encoder(input_ids, attention_mask, deterministic=deterministic)
    states = self.mlm_head.transformed(hidden)
    weights = functions.splade_max_pool(
        states, attention_mask, self.token_embedder.embedding, self.mlm_head.output_bias,
        chunk_size=self.chunk_size, activation=self.activation)
    weights = layers.constrain(weights * self._keep_terms(), ("batch", "vocab"))
    return weights.reshape(*lead, weights.shape[-1])

  def encode_documents(self, input_ids, attention_mask, *, deterministic: bool = True):
    """Documents: ids [..., L] int32, mask [..., L] -> [..., V] float32 term weights."""
    weights = self._mlm_weights(input_ids, attention_mask, deterministic)
    if deterministic and (self.prune_top_k or self.prune_ratio):
      weights = functions.top_k_prune(weights, self.prune_top_k, self.prune_ratio)
    return weights

  def encode_queries(self, input_ids, attention_mask, *, deterministic: bool = True):
    """Queries: ids [..., L] int32, mask [..., L] -> [..., V] float32 term weights."""
    if self.query_encoder == "mlm":
      return self._mlm_weights(input_ids, attention_mask, deterministic)
    lead = input_ids.shape[:-1]
    ids = input_ids.reshape(-1, input_ids.shape[-1])
    mask = attention_mask.reshape(-1, attention_mask.shape[-1])
    idf = self.idf if self.query_encoder == "idf" else jnp.ones(
        self.encoder_config.vocab_size, jnp.float32)
    weights = functions.query_weights(ids, mask, idf, self.special_ids)
    weights = layers.constrain(weights, ("batch", "vocab"))
    return weights.reshape(*lead, weights.shape[-1])

  def __call__(self, query_ids, query_mask, document_ids, document_mask, *,
               deterministic: bool = True):
    """Both sides: ([B, Lq], [B, Lq], [..., Ld], [..., Ld]) -> ([B, V], [..., V])."""
    return (self.encode_queries(query_ids, query_mask, deterministic=deterministic),
            self.encode_documents(document_ids, document_mask, deterministic=deterministic))

  # -- what the trainer asks of a model -------------------------------------------------------

  def frozen_parameter_patterns(self) -> Tuple[str, ...]:
    return () if self.idf_trainable or self.query_encoder != "idf" else (r"^idf$",)

  def initial_params(self, params: Mapping[str, Any]) -> dict:
    """A fresh run's params with the IDF table from `idf_path` (unchanged without one)."""
    if not self.idf_path or self.query_encoder != "idf":
      return dict(params)
    from dualenc.sparse import idf as idf_lib  # pylint: disable=g-import-not-at-top
    if self.vocab_path:
      vocab = self.vocab_path
    else:
      from dualenc import convert  # pylint: disable=g-import-not-at-top
      vocab = f"{convert.minilm_path()}/vocab.txt"
    tokens = idf_lib.vocab_tokens(vocab)
    if len(tokens) != self.encoder_config.vocab_size:
      raise ValueError(f"SparseEncoder.vocab_path {vocab} has {len(tokens)} tokens, the encoder "
                       f"{self.encoder_config.vocab_size}")
    return with_idf(params, idf_lib.load_idf(self.idf_path, tokens, missing=self.missing_idf))

  def load_pretrained(self, params: Mapping[str, Any], pretrained: Mapping[str, Any]) -> dict:
    """Fills `params` from a converted BERT (`convert.from_huggingface`, with or without its
    MLM head): token_embedder, encoder -> document_encoder, mlm_head when present; or from a
    whole sparse model's params (`sparse.pretrained.load`), its IDF table included when this
    model has one. The rest keeps its initialisation. Raises ValueError naming parameters of
    another shape."""
    from dualenc import towers  # pylint: disable=g-import-not-at-top
    pretrained = dict(flax.core.unfreeze(pretrained))
    new = dict(flax.core.unfreeze(params))
    new["token_embedder"] = pretrained.pop("token_embedder", new["token_embedder"])
    if "idf" in pretrained and "idf" in new:
      new["idf"] = pretrained.pop("idf")
    encoder = pretrained.pop("encoder", None) or pretrained.pop("document_encoder", None)
    if encoder is None:  # a bare BertModel conversion: the encoder tree at the top level
      encoder = {k: v for k, v in pretrained.items() if k != "mlm_head"}
    encoder = dict(encoder)
    if "token_embedder" in encoder:
      new["token_embedder"] = encoder.pop("token_embedder")
    new["document_encoder"] = encoder
    if "mlm_head" in pretrained:
      new["mlm_head"] = pretrained["mlm_head"]
    towers._check_same_shapes(params, new)  # pylint: disable=protected-access
    return jax.tree.map(lambda x: jnp.array(x, copy=True), new)


def with_idf(params: Mapping[str, Any], idf: Sequence[float]) -> dict:
  """params with the `idf` table replaced (e.g. by `idf.load_idf(...)`); shape checked."""
  params = dict(flax.core.unfreeze(params))
  idf = jnp.asarray(idf, jnp.float32)
  if "idf" not in params or params["idf"].shape != idf.shape:
    raise ValueError(f"the model has no idf table of shape {idf.shape} (query_encoder must be "
                     f"'idf' and the vocabularies equal)")
  params["idf"] = idf
  return params
