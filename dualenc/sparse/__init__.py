"""Learned sparse retrieval: inference-free (IDF query side) and SPLADE models.

  dualenc.sparse.functions   the pure functions (document_weights, query_weights, flops, ...)
  dualenc.sparse.idf         IDF tables: compute_idf, idf.json, `python -m dualenc.sparse.idf`
  dualenc.sparse.model       SparseEncoder (inference-free, SPLADE-doc, siamese SPLADE)
  dualenc.sparse.query       QueryEncoder: the model-free query side (tokenizer + IDF, NumPy)
  dualenc.sparse.index       InvertedIndex (exact) and SeismicIndex (approximate) search
  dualenc.sparse.pretrained  public SparseEncoder / SPLADE directories as SparseEncoders

The contract's functions are importable from here (`dualenc.sparse.flops`, ...). They load
on first use, so importing this package pulls in neither JAX nor TensorFlow (a query needs
only a tokenizer and an IDF table).
"""

import importlib

_FUNCTIONS = ("document_weights", "splade_max_pool", "query_weights", "flops", "flops_weight",
              "ensemble_teacher_scores", "kl_distillation", "margin_mse", "top_k_prune",
              "activate")
_IDF = ("compute_idf", "save_idf", "load_idf")


def __getattr__(name):
  if name in _FUNCTIONS:
    return getattr(importlib.import_module("dualenc.sparse.functions"), name)
  if name in _IDF:
    return getattr(importlib.import_module("dualenc.sparse.idf"), name)
  raise AttributeError(f"module 'dualenc.sparse' has no attribute {name!r}")


__all__ = list(_FUNCTIONS + _IDF)
