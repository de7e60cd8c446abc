"""Trained dualenc models as files other tools load (`python -m dualenc.export`).

  hf                    encoders -> transformers directories (config.json, safetensors, tokenizer)
  sentence_transformers dense towers -> SentenceTransformer, sparse models -> SparseEncoder
  opensearch            inference-free corpus vectors, IDF table, mapping and query for OpenSearch
  main                  the command line (see its docstring)

The other direction (public SparseEncoder / SPLADE directories into dualenc) is
`dualenc.sparse.pretrained`.
"""
