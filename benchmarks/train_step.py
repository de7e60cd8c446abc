r"""Train-step throughput: dualenc vs sentence-transformers on all-MiniLM-L6-v2 towers.

Both sides train the same model (BERT 6x384, shared towers like sentence-transformers) on the
same batch (64 pairs, 128 tokens each side, no padding) with AdamW and an in-batch softmax
(sentence-transformers' MultipleNegativesRankingLoss: q->d only, scale 20 = temperature 0.05).
Also times dualenc's SamToNe step against its in-batch softmax step, in blocks and in
alternating pairs, and the two losses' value+gradient alone (all that the two steps differ in).
Mixed precision side by side: dualenc with `COMPUTE_DTYPE='bfloat16'` (bf16 matmuls forward
and backward, float32 parameters, optimizer state and loss) against sentence-transformers under
`torch.autocast("cpu", dtype=torch.bfloat16)`.
Prints examples/s, MFU (matmul FLOPs of the dualenc step, dualenc.flops, against the host's
matmul peak of each dtype, measured in the same run unless given) and ratios. Run it on an
otherwise idle machine: step times swing by 10% or more under load.

  .venv/bin/python benchmarks/train_step.py [--rounds 3] [--block 3] [--pairs 8] [--batch 64]
      [--length 128] [--peak_gflops F32] [--peak_gflops_bf16 BF16] [--only_dualenc]
      [--layers 6]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

# One JAX CPU device per core, data-parallel over a mesh (XLA's single default CPU device leaves
# part of the second core idle; measured 10-15% slower). `python -m dualenc.train` does the same
# when given this XLA_FLAGS setting.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={os.cpu_count()}")

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dualenc import convert, flops, losses, partitioning, towers
from dualenc.train_state import TrainState, make_train_step


def _dualenc_step(loss_fn, model, params, batch, mesh):
  optimizer = optax.adamw(2e-5)
  params = jax.device_put(jax.tree.map(jnp.copy, params), partitioning.replicated(mesh))
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     opt_state=optimizer.init(params))
  state = jax.device_put(state, partitioning.replicated(mesh))  # donated by the step
  step = jax.jit(make_train_step(model, optimizer, loss_fn, jax.random.PRNGKey(0)),
                 donate_argnums=(0,))
  traced = step.trace(state, batch)
  return traced.lower().compile(), state, flops.jaxpr_matmul_flops(traced.jaxpr)


def matmul_peak_gflops(dtype, size=2048, repeats=20):
  """Measured matmul peak of all JAX devices together: each device multiplies its own
  [size, size] pair (float32 accumulation), median of `repeats` timed calls."""
  mesh = partitioning.make_mesh()
  rng = np.random.default_rng(0)
  devices = jax.device_count()
  a, b = (jax.device_put(jnp.asarray(rng.normal(size=(devices, size, size)), dtype),
                         partitioning.batch_sharding(mesh, 3)) for _ in range(2))
  product = jax.jit(lambda a, b: jnp.einsum("nij,njk->nik", a, b,
                                            preferred_element_type=jnp.float32))
  return 2 * devices * size**3 / _median_seconds(lambda: product(a, b), repeats) / 1e9


def _median_seconds(call, repeats):
  """Median wall time of `call()` (a jitted call, waited for) after one warm-up call."""
  jax.block_until_ready(call())
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(call())
    seconds.append(time.perf_counter() - start)
  return statistics.median(seconds)


def _interleaved(steps_by_name, rounds, block=3):
  """Times every contender in blocks of `block` consecutive steps, round after round, so drift
  in the machine's speed (2-core shared boxes drift by 10% over minutes) hits all alike. The
  first step of each block is not kept: measured, a JAX step right after a PyTorch one (or the
  reverse) runs up to 30% slower while the other framework's threads and memory settle.
  Returns name -> kept step times, in round order (block - 1 per round)."""
  for fn in steps_by_name.values():  # compile / warm up
    fn()
  times = {name: [] for name in steps_by_name}
  for _ in range(rounds):
    for name, fn in steps_by_name.items():
      for i in range(block):
        start = time.perf_counter()
        fn()
        if i:
          times[name].append(time.perf_counter() - start)
  return times


def _alternating(step_a, step_b, pairs):
  """Runs `pairs` adjacent pairs of steps, alternately a-then-b and b-then-a (a step's place in
  a pair was measured to matter by up to 8%, so the orders must balance); returns the per-pair
  ratios b/a. Adjacent steps see the same machine speed, so these ratios are less noisy than
  ratios of separately timed blocks (both steps are JAX: no framework switch between them)."""
  step_a(), step_b()
  ratios = []
  for i in range(pairs):
    order = [("a", step_a), ("b", step_b)]
    if i % 2:
      order.reverse()
    seconds = {}
    for name, step in order:
      start = time.perf_counter()
      step()
      seconds[name] = time.perf_counter() - start
    ratios.append(seconds["b"] / seconds["a"])
  return ratios


def _loss_seconds(loss_fn, batch_size, dim, repeats=200):
  """Median seconds of one jitted loss value+gradient on [batch, dim] unit embeddings: the only
  computation in which two losses' train steps differ."""
  rows = np.random.default_rng(1).normal(size=(2, batch_size, dim)).astype(np.float32)
  q, d = jnp.asarray(rows / np.linalg.norm(rows, axis=-1, keepdims=True))
  value_and_grad = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1)))
  return _median_seconds(lambda: value_and_grad(q, d), repeats)


def _median_ratio(numerator, denominator):
  """Median over rounds of the per-round ratio (robust to drift between rounds)."""
  return statistics.median(a / b for a, b in zip(numerator, denominator))


def _sentence_transformers_step(batch, args, autocast=False):
  import torch  # pylint: disable=g-import-not-at-top
  from sentence_transformers import SentenceTransformer  # pylint: disable=g-import-not-at-top
  from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(os.cpu_count())
  st_model = SentenceTransformer(str(convert.minilm_path()), device="cpu")
  if args.layers:
    encoder = st_model[0].auto_model.encoder
    encoder.layer = encoder.layer[:args.layers]
  st_model.train()
  st_loss = MultipleNegativesRankingLoss(st_model, scale=20.0)
  st_opt = torch.optim.AdamW(st_model.parameters(), lr=2e-5)
  features = [{"input_ids": torch.as_tensor(np.asarray(batch[k]), dtype=torch.long),
               "attention_mask": torch.ones(args.batch, args.length, dtype=torch.long),
               "token_type_ids": torch.zeros(args.batch, args.length, dtype=torch.long)}
              for k in ("left_encoder_input_tokens", "right_encoder_input_tokens")]

  def st_step():
    st_opt.zero_grad()
    # autocast: bf16 matmuls (oneDNN), float32 weights, optimizer and loss, as in its docs.
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
      loss = st_loss(features, None)
    loss.backward()
    st_opt.step()

  return st_step


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rounds", type=int, default=3,
                      help="rounds; each runs every contender for --block steps")
  parser.add_argument("--block", type=int, default=3)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--length", type=int, default=128)
  parser.add_argument("--pairs", type=int, default=8,
                      help="alternating in-batch softmax / SamToNe step pairs")
  parser.add_argument("--only_dualenc", action="store_true", help="skip sentence-transformers")
  parser.add_argument("--peak_gflops", type=float, default=None,
                      help="fp32 matmul peak of this machine in GFLOP/s (default: measured)")
  parser.add_argument("--peak_gflops_bf16", type=float, default=None,
                      help="bf16 matmul peak (float32 accumulation; default: measured)")
  parser.add_argument("--layers", type=int, default=None,
                      help="keep only the first N encoder layers, both sides (smoke runs: the "
                           "figures are for all 6)")
  args = parser.parse_args()

  loaded = convert.load_sentence_transformer(convert.minilm_path())
  config = loaded.module.config
  encoder_params = loaded.variables["params"]
  if args.layers:
    config = dataclasses.replace(config, num_layers=args.layers)
    encoder_params = {k: v for k, v in encoder_params.items()
                      if not k.startswith("layers_") or int(k.split("_")[1]) < args.layers}
  model = towers.DualEncoder(config, architecture="sde", pooling="mean", normalize=True)
  rng = np.random.default_rng(0)
  tokens = lambda: rng.integers(1000, config.vocab_size, (args.batch, args.length), np.int32)
  mesh = partitioning.make_mesh()
  batch = partitioning.global_batch({"left_encoder_input_tokens": tokens(),
                                     "right_encoder_input_tokens": tokens()}, mesh)
  params = {"encoder": jax.tree.map(jnp.asarray, encoder_params)}

  # ---- dualenc: in-batch softmax (MNRL-equivalent), bidirectional, SamToNe ------------------
  mnrl = lambda q, d, **kw: losses.in_batch_softmax(q, d, temperature=0.05, bidirectional=False)
  samtone = lambda q, d, **kw: losses.samtone(q, d, temperature=0.05)
  ibs = lambda q, d, **kw: losses.in_batch_softmax(q, d, temperature=0.05)
  steps, model_flops = {}, {}
  bf16_model = towers.DualEncoder(dataclasses.replace(config, dtype="bfloat16"),
                                  architecture="sde", pooling="mean", normalize=True)
  for name, loss_fn, model_ in (("mnrl", mnrl, model), ("in_batch_softmax", ibs, model),
                                ("samtone", samtone, model), ("mnrl_bf16", mnrl, bf16_model)):
    compiled, state, model_flops[name] = _dualenc_step(loss_fn, model_, params, batch, mesh)
    holder = {"state": state}

    def run(compiled=compiled, holder=holder):
      holder["state"], metrics = compiled(holder["state"], batch)
      jax.block_until_ready(metrics["loss"])

    steps[f"dualenc {name}"] = run

  # ---- sentence-transformers: the same model, loss and batch in PyTorch ----------------------
  if not args.only_dualenc:
    steps["sentence-transformers MNRL"] = _sentence_transformers_step(batch, args)
    steps["sentence-transformers MNRL_autocast"] = _sentence_transformers_step(
        batch, args, autocast=True)
  times = _interleaved(steps, args.rounds, args.block)
  pair_ratios = _alternating(steps["dualenc in_batch_softmax"], steps["dualenc samtone"],
                             args.pairs)
  loss_seconds = {name: _loss_seconds(fn, args.batch, config.d_model)
                  for name, fn in (("in_batch_softmax", ibs), ("samtone", samtone))}

  # ---- report ----------------------------------------------------------------------------
  peaks = {"float32": args.peak_gflops or matmul_peak_gflops(jnp.float32),
           "bfloat16": args.peak_gflops_bf16 or matmul_peak_gflops(jnp.bfloat16)}
  print(f"batch {args.batch}, length {args.length}, model FLOPs/step "
        f"{model_flops['mnrl'] / 1e9:.1f} G, matmul peak float32 {peaks['float32']:.0f} / "
        f"bfloat16 {peaks['bfloat16']:.0f} GFLOP/s ({'given' if args.peak_gflops else 'measured'}), "
        f"{jax.device_count()} JAX device(s), {args.rounds} rounds of {args.block} steps")
  print(f"{'':38s}{'s/step':>9s}{'examples/s':>12s}{'MFU':>8s}")
  for label, per_round in times.items():
    seconds = statistics.median(per_round)
    step_flops = model_flops[label.split()[-1]] if label.startswith("dualenc") else model_flops["mnrl"]
    bf16 = label.endswith(("bf16", "autocast"))
    peak = peaks["bfloat16" if bf16 else "float32"] * 1e9
    print(f"{label:38s}{seconds:9.3f}{args.batch / seconds:12.1f}{step_flops / seconds / peak:8.1%}")
  print(f"dualenc bf16 / float32 (same loss): "
        f"{_median_ratio(times['dualenc mnrl'], times['dualenc mnrl_bf16']):.3f}x")
  if not args.only_dualenc:
    print(f"speed-up dualenc / sentence-transformers, float32 (same loss): "
          f"{_median_ratio(times['sentence-transformers MNRL'], times['dualenc mnrl']):.3f}x")
    print(f"speed-up dualenc bf16 / sentence-transformers autocast bf16 (same loss): "
          f"{_median_ratio(times['sentence-transformers MNRL_autocast'], times['dualenc mnrl_bf16']):.3f}x")
    print(f"sentence-transformers autocast / float32: "
          f"{_median_ratio(times['sentence-transformers MNRL'], times['sentence-transformers MNRL_autocast']):.3f}x")
  print(f"step time SamToNe / in-batch softmax (bidirectional), blocks: "
        f"{_median_ratio(times['dualenc samtone'], times['dualenc in_batch_softmax']):.3f}x; "
        f"alternating steps: median {statistics.median(pair_ratios):.3f}x over {args.pairs} pairs "
        f"({', '.join(f'{r:.3f}' for r in pair_ratios)})")
  extra = loss_seconds["samtone"] - loss_seconds["in_batch_softmax"]
  step_seconds = statistics.median(times["dualenc in_batch_softmax"])
  print(f"loss value+gradient alone on [{args.batch}, {config.d_model}]: SamToNe "
        f"{loss_seconds['samtone'] * 1e3:.3f} ms, in-batch softmax "
        f"{loss_seconds['in_batch_softmax'] * 1e3:.3f} ms: SamToNe adds {extra * 1e3:+.3f} ms, "
        f"{extra / step_seconds:+.4%} of a step")


if __name__ == "__main__":
  main()
