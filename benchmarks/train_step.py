r"""Train-step throughput: dualenc vs sentence-transformers on all-MiniLM-L6-v2 towers.

Both sides train the same model (BERT 6x384, shared towers like sentence-transformers) on the
same batch (64 pairs, 128 tokens each side, no padding) with AdamW and an in-batch softmax
(sentence-transformers' MultipleNegativesRankingLoss: q->d only, scale 20 = temperature 0.05).
Also times dualenc's SamToNe step against its in-batch softmax step. Prints examples/s, MFU
(model FLOPs from XLA's cost analysis of the dualenc step, against `--peak_gflops`) and ratios.

  .venv/bin/python benchmarks/train_step.py [--steps 10] [--batch 64] [--length 128]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

# One JAX CPU device per core, data-parallel over a mesh, as `python -m dualenc.train` runs on a
# CPU host (XLA's single default CPU device leaves part of the second core idle).
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={os.cpu_count()}")

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dualenc import convert, losses, partitioning, towers
from dualenc.train_state import TrainState, make_train_step


def _dualenc_step(loss_fn, model, params, batch, mesh):
  optimizer = optax.adamw(2e-5)
  params = jax.device_put(jax.tree.map(jnp.copy, params), partitioning.replicated(mesh))
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     opt_state=optimizer.init(params))
  state = jax.device_put(state, partitioning.replicated(mesh))  # donated by the step
  step = jax.jit(make_train_step(model, optimizer, loss_fn, jax.random.PRNGKey(0)),
                 donate_argnums=(0,))
  compiled = step.lower(state, batch).compile()
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, list) else analysis
  return compiled, state, float(analysis["flops"])


def _time(fn, steps, warmup=2):
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--length", type=int, default=128)
  parser.add_argument("--only_dualenc", action="store_true", help="skip sentence-transformers")
  parser.add_argument("--peak_gflops", type=float, default=187.0,
                      help="fp32 matmul peak of this machine (2-core dev box: 187)")
  args = parser.parse_args()

  loaded = convert.load_sentence_transformer(convert.minilm_path())
  config = loaded.module.config
  model = towers.DualEncoder(config, architecture="sde", pooling="mean", normalize=True)
  rng = np.random.default_rng(0)
  tokens = lambda: rng.integers(1000, config.vocab_size, (args.batch, args.length), np.int32)
  mesh = partitioning.make_mesh()
  batch = partitioning.global_batch({"left_encoder_input_tokens": tokens(),
                                     "right_encoder_input_tokens": tokens()}, mesh)
  params = {"encoder": jax.tree.map(jnp.asarray, loaded.variables["params"])}

  # ---- dualenc: in-batch softmax (MNRL-equivalent) and SamToNe ------------------------------
  mnrl = lambda q, d, **kw: losses.in_batch_softmax(q, d, temperature=0.05, bidirectional=False)
  samtone = lambda q, d, **kw: losses.samtone(q, d, temperature=0.05)
  ibs = lambda q, d, **kw: losses.in_batch_softmax(q, d, temperature=0.05)
  results = {}
  for name, loss_fn in (("mnrl", mnrl), ("in_batch_softmax", ibs), ("samtone", samtone)):
    compiled, state, flops = _dualenc_step(loss_fn, model, params, batch, mesh)
    holder = {"state": state}

    def run():
      holder["state"], metrics = compiled(holder["state"], batch)
      jax.block_until_ready(metrics["loss"])

    results[name] = (_time(run, args.steps), flops)

  if args.only_dualenc:
    for name, (seconds, flops) in results.items():
      print(f"dualenc {name}: {seconds:.3f} s/step, XLA FLOPs {flops / 1e9:.1f} G")
    return

  # ---- sentence-transformers: the same model, loss and batch in PyTorch ----------------------
  import torch
  from sentence_transformers import SentenceTransformer
  from sentence_transformers.losses import MultipleNegativesRankingLoss
  torch.set_num_threads(os.cpu_count())
  st_model = SentenceTransformer(str(convert.minilm_path()), device="cpu")
  st_model.train()
  st_loss = MultipleNegativesRankingLoss(st_model, scale=20.0)
  st_opt = torch.optim.AdamW(st_model.parameters(), lr=2e-5)
  features = [{"input_ids": torch.as_tensor(np.asarray(batch[k]), dtype=torch.long),
               "attention_mask": torch.ones(args.batch, args.length, dtype=torch.long),
               "token_type_ids": torch.zeros(args.batch, args.length, dtype=torch.long)}
              for k in ("left_encoder_input_tokens", "right_encoder_input_tokens")]

  def st_step():
    st_opt.zero_grad()
    loss = st_loss(features, None)
    loss.backward()
    st_opt.step()

  st_seconds = _time(st_step, args.steps)

  # ---- report ----------------------------------------------------------------------------
  peak = args.peak_gflops * 1e9
  mnrl_seconds, flops = results["mnrl"]
  print(f"batch {args.batch}, length {args.length}, model FLOPs/step {flops / 1e9:.1f} G, "
        f"peak {args.peak_gflops:.0f} GFLOP/s, {jax.device_count()} JAX device(s)")
  print(f"{'':28s}{'s/step':>9s}{'examples/s':>12s}{'MFU':>8s}")
  rows = [("sentence-transformers MNRL", st_seconds, flops)]
  rows += [(f"dualenc {name}", seconds, f) for name, (seconds, f) in results.items()]
  for label, seconds, f in rows:
    print(f"{label:28s}{seconds:9.3f}{args.batch / seconds:12.1f}{f / seconds / peak:8.1%}")
  print(f"speed-up dualenc / sentence-transformers (same loss): {st_seconds / mnrl_seconds:.2f}x")
  print(f"step time SamToNe / in-batch softmax (bidirectional): "
        f"{results['samtone'][0] / results['in_batch_softmax'][0]:.3f}x")


if __name__ == "__main__":
  main()
