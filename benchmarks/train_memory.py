r"""Peak memory of an all-MiniLM-L6-v2 train step, with and without gradient caching.

The step is the README's fine-tune (ADE-SPL towers from all-MiniLM-L6-v2, SamToNe, AdamW,
32-token queries, 128-token documents) compiled for global batches of 64, 256 and 512, whole
and with `train.microbatch_size` (dualenc.grad_cache). Prints XLA's compiled memory analysis
per device (temporaries: activations, gradients, logits; arguments: parameters, optimizer state,
batch) on a data-parallel mesh of `--devices` CPU devices, and the total the host would need.
With `--run`, also trains a few real steps of the largest batch with microbatches through
`python -m dualenc.train` and reports the process's peak resident memory and seconds per step.

  .venv/bin/python benchmarks/train_memory.py [--batches 64 256 512] [--microbatch 32]
      [--devices 2] [--remat_batch 64] [--run] [--run_steps 2] [--layers 6]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import time

_DEVICES = "2"
for i, arg in enumerate(sys.argv):  # the device count must be fixed before JAX is imported
  if arg.startswith("--devices"):
    _DEVICES = arg.split("=", 1)[1] if "=" in arg else sys.argv[i + 1]
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           f" --xla_force_host_platform_device_count={_DEVICES}")

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from dualenc import convert, losses, partitioning, towers
from dualenc import train_state as ts

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 2.0**30


def compiled_memory(batch_size, microbatch_size, mesh, query_length=32, document_length=128,
                    remat_policy="none", layers=None):
  """XLA's memory analysis of one jitted train step: (temporaries, arguments) bytes per device."""
  # all-MiniLM-L6-v2's own config.json (the encoder runs/finetune.gin trains).
  config = convert.encoder_config(convert.minilm_path() / "config.json")
  config = dataclasses.replace(config, remat_policy=remat_policy,
                               num_layers=layers or config.num_layers)
  model = towers.DualEncoder(encoder_config=config, architecture="ade_spl")
  shapes = {"left_encoder_input_tokens": (batch_size, query_length),
            "right_encoder_input_tokens": (batch_size, document_length)}
  rules = partitioning.LOGICAL_AXIS_RULES
  optimizer = optax.adamw(2e-5)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(lambda r: ts.init_params(model, r, shapes), jax.random.PRNGKey(0))
    param_shardings = partitioning.logical_shardings(boxed, mesh, rules)
    params = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          jax.tree.map(lambda b: b.value, boxed,
                                       is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata)),
                          param_shardings)
    opt_state = jax.eval_shape(optimizer.init, params)
    replicated = partitioning.replicated(mesh)
    state = ts.TrainState(step=jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated),
                          params=params, opt_state=opt_state)
    batch = {k: jax.ShapeDtypeStruct(s, jnp.int32, sharding=partitioning.batch_sharding(mesh))
             for k, s in shapes.items()}
    step = ts.make_train_step(model, optimizer, losses.samtone, jax.random.PRNGKey(1),
                              microbatch_size=microbatch_size,
                              num_data_shards=mesh.shape["data"])
    analysis = jax.jit(step, donate_argnums=(0,)).lower(state, batch).compile().memory_analysis()
  return analysis.temp_size_in_bytes, analysis.argument_size_in_bytes


def real_run(batch_size, microbatch_size, steps, devices):
  """Trains `steps` steps through the CLI; returns (peak RSS bytes, seconds per step)."""
  model_dir = f"/tmp/dualenc_train_memory_{batch_size}_{microbatch_size}_{time.time_ns()}"
  command = [sys.executable, "-m", "dualenc.train", "--gin_file=runs/finetune.gin",
             f"--gin.MODEL_DIR='{model_dir}'", f"--gin.BATCH_SIZE={batch_size}",
             f"--gin.MICROBATCH_SIZE={microbatch_size}", f"--gin.TRAIN_STEPS={steps}",
             "--gin.train.progress_bar=False", "--gin.train.checkpoint_every_steps=1000000"]
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  subprocess.run(command, check=True, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL)
  peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
  with open(os.path.join(model_dir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  seconds = [r["seconds_per_step"] for r in records if "seconds_per_step" in r]
  return peak, seconds[-1]  # the last step's: the first runs right after compilation


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batches", type=int, nargs="+", default=[64, 256, 512])
  parser.add_argument("--microbatch", type=int, default=32)
  parser.add_argument("--devices", type=int, default=2, help="CPU devices (one per core)")
  parser.add_argument("--host_gib", type=float, default=24.0, help="this machine's memory")
  parser.add_argument("--run", action="store_true",
                      help="also train --run_steps real steps of the largest batch, microbatched")
  parser.add_argument("--run_steps", type=int, default=2)
  parser.add_argument("--layers", type=int, default=None,
                      help="compile only the first N encoder layers (smoke runs: the figures "
                           "are for all 6)")
  parser.add_argument("--remat_batch", type=int, default=64,
                      help="also compile this batch (no microbatches) under each remat policy")
  args = parser.parse_args()
  mesh = partitioning.make_mesh(args.devices, 1)
  print(f"all-MiniLM-L6-v2 ADE-SPL, SamToNe, AdamW, 32/128 tokens, {args.devices} devices")
  print(f"{'global batch':>12} {'microbatch':>10} {'temp/device':>12} {'args/device':>12} "
        f"{'host total':>11}  fits in {args.host_gib:.0f} GiB")
  for batch_size in args.batches:
    for microbatch in (None, args.microbatch):
      if microbatch and microbatch >= batch_size:
        continue
      temp, arguments = compiled_memory(batch_size, microbatch, mesh, layers=args.layers)
      total = (temp + arguments) * args.devices
      print(f"{batch_size:>12} {str(microbatch or '-'):>10} {temp / GIB:>10.2f}Gi "
            f"{arguments / GIB:>10.2f}Gi {total / GIB:>9.2f}Gi  "
            f"{'yes' if total < args.host_gib * GIB else 'NO'}", flush=True)
  if args.remat_batch:
    print(f"remat policies at global batch {args.remat_batch} (encoders.BertConfig.remat_policy):")
    for policy in ("none", "full", "dots"):
      temp, _ = compiled_memory(args.remat_batch, None, mesh, remat_policy=policy,
                                layers=args.layers)
      print(f"  {policy:5s} temporaries/device {temp / GIB:.2f} GiB", flush=True)
  if args.run:
    batch_size = max(args.batches)
    peak, seconds = real_run(batch_size, args.microbatch, args.run_steps, args.devices)
    print(f"real run: global batch {batch_size}, microbatch {args.microbatch}, "
          f"{args.run_steps} steps through python -m dualenc.train: peak RSS {peak / GIB:.2f} GiB, "
          f"{seconds:.1f} s/step")


if __name__ == "__main__":
  main()
