r"""Compiled memory of a sparse document-tower train step, with and without a chunked max-pool.

  .venv/bin/python benchmarks/sparse_memory.py                 # MiniLM, B 32, L 256, V 30,522

The SPLADE max-pool over [B, L, V] MLM logits is what a sparse document tower's step holds
longest: differentiating through it keeps the logits (B x L x V floats) for the backward
pass. `dualenc.sparse.splade_max_pool` scans positions `chunk_size` at a time and
rematerialises each chunk, so the step holds [B, chunk_size, V] instead. This compiles the step
(value and gradient of the FLOPS regulariser over the document vectors: the whole tower
participates) for each chunk size and prints XLA's buffer assignment: temporaries and the
argument/output sizes; nothing is executed. The floor row is the same step without the
vocabulary projection (encoder and MLM transform only): what no chunking can remove.
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from dualenc import convert
from dualenc.sparse import functions, model


def step_memory(config, batch: int, length: int, chunk_size: int) -> dict:
  sparse = model.SparseEncoder(config, chunk_size=chunk_size)
  ones = np.ones((1, 8), np.int32)
  params = jax.eval_shape(lambda: nn.unbox(sparse.init(jax.random.PRNGKey(0), ones, ones, ones,
                                                       ones)["params"]))
  ids = jax.ShapeDtypeStruct((batch, length), jnp.int32)

  def loss(p, ids):
    if chunk_size == 0:  # the floor: encoder and MLM transform, no vocabulary projection
      states = sparse.apply({"params": p}, ids, jnp.ones_like(ids), method=lambda m, i, a: (
          m.mlm_head.transformed(m.document_encoder(i, a, deterministic=True))))
      return jnp.mean(jnp.square(states))
    d = sparse.apply({"params": p}, ids, jnp.ones_like(ids), method="encode_documents")
    return functions.flops(d)

  started = time.perf_counter()
  compiled = jax.jit(jax.value_and_grad(loss)).lower(params, ids).compile()
  stats = compiled.memory_analysis()
  return {"chunk_size": chunk_size, "temp_bytes": int(stats.temp_size_in_bytes),
          "argument_bytes": int(stats.argument_size_in_bytes),
          "output_bytes": int(stats.output_size_in_bytes),
          "compile_seconds": round(time.perf_counter() - started, 1)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--length", type=int, default=256)
  parser.add_argument("--chunks", default="256,64,32,16", help="comma-separated chunk sizes")
  parser.add_argument("--json", help="also write the figures here")
  args = parser.parse_args()
  config = convert.encoder_config(convert.minilm_path() / "config.json")
  logits = args.batch * args.length * config.vocab_size * 4
  print(f"all-MiniLM-L6-v2 document tower + MLM head, B={args.batch}, L={args.length}, "
        f"V={config.vocab_size}; float32 logits alone: {logits / 2**30:.2f} GiB")
  rows = [step_memory(config, args.batch, args.length, int(c)) for c in args.chunks.split(",")]
  floor = step_memory(config, args.batch, args.length, 0)
  baseline = rows[0]["temp_bytes"]
  print(f"{'chunk':>6} {'temporaries':>12} {'vs unchunked':>13} {'above floor':>12} {'compile':>8}")
  for row in rows:
    print(f"{row['chunk_size']:>6} {row['temp_bytes'] / 2**30:>10.2f} G "
          f"{row['temp_bytes'] / baseline:>12.2f}x "
          f"{(row['temp_bytes'] - floor['temp_bytes']) / 2**30:>10.2f} G "
          f"{row['compile_seconds']:>7.1f}s")
  print(f"floor (encoder + MLM transform, no [V] projection): {floor['temp_bytes'] / 2**30:.2f} G")
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump({"batch": args.batch, "length": args.length, "rows": rows, "floor": floor}, f,
                indent=2)


if __name__ == "__main__":
  main()
