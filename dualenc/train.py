r"""Trains a dual encoder: `python -m dualenc.train --gin_file=... --gin.NAME=VALUE ...`.

Example (tiny model on the embedded default dataset, about a minute on 2 CPU cores):

  python -m dualenc.train --gin_file=runs/tiny_cpu.gin --gin.MODEL_DIR="'runs/tiny'"

Re-running the same command resumes from the newest good checkpoint in MODEL_DIR.
"""

from __future__ import annotations

if __name__ == "__main__":  # run as dualenc.X, not __main__: see dualenc/cli.py
  from dualenc import cli
  cli.run_program(__spec__.name)

import argparse
import logging
import math
import signal
import sys
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import gin
import seqio
import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from dualenc import checkpoints as checkpoints_lib
from dualenc import evaluation
from dualenc import flops
from dualenc import fs
from dualenc import grad_cache
from dualenc import gin_utils
from dualenc import losses
from dualenc import metrics_log
from dualenc import optimizers
from dualenc import partitioning
from dualenc import towers
from dualenc import train_state as ts
from dualenc.data import pipeline

log = logging.getLogger("dualenc.train")


class NonFiniteLossError(RuntimeError):
  """The loss became NaN or infinite; the run stops before saving anything from that step."""


class _Preemption:
  """Turns SIGTERM (TPU maintenance, job schedulers) into a flag the loop polls."""

  def __init__(self):
    self.requested = False

  def __enter__(self):
    self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    signal.signal(signal.SIGTERM, self._previous)


@gin.configurable(denylist=["pretrained_params"])
def train(*,
          model_dir: str = gin.REQUIRED,
          model: towers.DualEncoder = gin.REQUIRED,
          mixture_or_task_name: str = gin.REQUIRED,
          train_steps: int = gin.REQUIRED,
          batch_size: int = gin.REQUIRED,
          microbatch_size: Optional[int] = None,
          feature_lengths: Mapping[str, Any] = gin.REQUIRED,
          vocabulary: Optional[seqio.Vocabulary] = None,
          loss_fn: Callable[..., jax.Array] = losses.samtone,
          mask_false_negatives: bool = True,
          schedule: Optional[optax.Schedule] = None,
          seed: int = 0,
          log_every_steps: int = 1,
          checkpoint_every_steps: int = 100,
          keep_checkpoints: int = 3,
          async_checkpoints: bool = True,
          initial_checkpoint_path: Optional[str] = None,
          pretrained_params: Any = None,
          mesh_data: int = -1,
          mesh_model: int = 1,
          peak_flops_per_device: float = 187e9,
          progress_bar: bool = True,
          eval_every_steps: int = 0,
          eval_mixture_or_task_name: Optional[str] = None,
          eval_split: str = "test",
          eval_feature_lengths: Optional[Mapping[str, Any]] = None,
          on_step_end: Optional[Callable[[int, Any], None]] = None) -> ts.TrainState:
  """Runs (or resumes) training and returns the final state.

  Args:
    model_dir: where checkpoints, config.gin, metrics.jsonl and TensorBoard events go.
    model: the DualEncoder to train.
    mixture_or_task_name: a registered seqio task or mixture.
    train_steps: total number of optimizer steps (resumed runs count from their checkpoint).
    batch_size: global batch size (split evenly over processes).
    microbatch_size: gradient caching (dualenc.grad_cache): the towers run this many rows at a
      time and the loss still sees the whole global batch; None: the whole batch at once.
    feature_lengths: task feature lengths {'inputs': Lq, 'targets': Ld
      [, 'negative_targets': [N, Ln]]} (TASK_FEATURE_LENGTHS).
    vocabulary: the model's vocabulary (overrides the tasks' own); None keeps theirs.
    loss_fn: (q [B, D], d [B, D], *, hard_negatives [B, N, D], hard_negative_mask [B, N],
      query_ids [B], doc_ids [B]) -> scalar (the functions of dualenc.losses).
    mask_false_negatives: pass the data's query / document ids to the loss, so a negative
      carrying the anchor's own id (a duplicate query, a document shared by two queries) leaves
      its normaliser; False: every other row is a negative, duplicates included.
    schedule: step -> learning rate; None uses `optimizers.learning_rate_schedule()`.
    initial_checkpoint_path: Hugging Face directory (config.json + weights) whose encoder
      initialises every tower (ignored when resuming).
    pretrained_params: params of an encoder already converted (Python callers).
    mesh_data, mesh_model: mesh shape; -1 takes the remaining devices.
    peak_flops_per_device: for MFU against matmul FLOPs (dualenc.flops); per accelerator, or per
      host on CPU. 187e9 is the fp32 matmul peak of the 2-core dev machine.
    eval_every_steps: retrieval evaluation every this many steps and at the end (0: never);
      metrics go to TensorBoard and metrics.jsonl as 'eval/<task>/<metric>', files to
      MODEL_DIR/eval/<step>/.
    eval_mixture_or_task_name: what to evaluate (default: the training task or mixture).
    eval_split: the split whose qrels are evaluated.
    eval_feature_lengths: query / document lengths at evaluation (EVAL_FEATURE_LENGTHS,
      eval/base.gin); None: the training lengths.
    on_step_end: called with (step, metrics) after every logged step (tests, hooks).
  """
  # ----------------------------------------------------------------------------------------
  # Setup: directories, mesh, data.
  # ----------------------------------------------------------------------------------------
  model_dir = fs.path(model_dir)
  mesh = partitioning.make_mesh(mesh_data, mesh_model)
  if batch_size % mesh.shape["data"] or batch_size % jax.process_count():
    raise ValueError(f"BATCH_SIZE={batch_size} must divide evenly over the mesh's "
                     f"{mesh.shape['data']} data shards and {jax.process_count()} processes")
  if microbatch_size:
    grad_cache.check_microbatch_size(batch_size, microbatch_size, mesh.shape["data"])
  if jax.process_index() == 0:
    _write_config(model_dir / "config.gin", gin.config_str())
  data = pipeline.make_batch_iterator(
      mixture_or_task_name, split="train", batch_size=batch_size,
      feature_lengths=feature_lengths, seed=seed, shard_index=jax.process_index(),
      num_shards=jax.process_count(), vocabulary=vocabulary)
  # The pipeline knows its shapes without tokenizing a batch; make them global.
  feature_specs = {k: ((batch_size,) + shape[1:], dtype)
                   for k, (shape, dtype) in data.feature_shapes().items()}
  feature_shapes = {k: shape for k, (shape, _) in feature_specs.items()}

  # ----------------------------------------------------------------------------------------
  # State: fresh (optionally from pretrained weights) or resumed from the newest checkpoint.
  # ----------------------------------------------------------------------------------------
  rng = jax.random.PRNGKey(seed)
  init_rng, dropout_rng = jax.random.split(rng)
  rules = partitioning.LOGICAL_AXIS_RULES
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    abstract_params = jax.eval_shape(lambda r: ts.init_params(model, r, feature_shapes), init_rng)
    param_shardings = partitioning.logical_shardings(abstract_params, mesh, rules)
    params = jax.jit(lambda r: nn.meta.unbox(ts.init_params(model, r, feature_shapes)),
                     out_shardings=param_shardings)(init_rng)
  schedule = schedule or optimizers.learning_rate_schedule()
  optimizer = optimizers.make_optimizer(params, schedule=schedule,
                                        frozen_patterns=model.frozen_parameter_patterns())
  checkpointer = checkpoints_lib.Checkpointer(
      str(model_dir), keep=keep_checkpoints, save_interval_steps=checkpoint_every_steps,
      async_save=async_checkpoints)
  state = _on_mesh(ts.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                 opt_state=jax.jit(optimizer.init)(params)), mesh)
  abstract_state = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
  restored = checkpointer.restore_latest(abstract_state)
  if restored is not None:
    step, state, data_state = restored
    data.set_state(data_state)
    print(f"Resumed from {checkpointer.directory / str(step)} at step {step}", flush=True)
  else:
    pretrained = pretrained_params
    if initial_checkpoint_path:
      pretrained = _load_pretrained_encoder(initial_checkpoint_path, model)
    params = state.params
    if pretrained is not None:
      params = model.load_pretrained(params, pretrained)
    if hasattr(model, "initial_params"):  # e.g. a sparse model's IDF table from idf.json
      params = model.initial_params(params)
    if params is not state.params:
      params = jax.device_put(params, param_shardings)
      state = _on_mesh(ts.TrainState(step=state.step, params=params,
                                     opt_state=jax.jit(optimizer.init)(params)), mesh)
  state_shardings = jax.tree.map(lambda x: x.sharding, state)

  # ----------------------------------------------------------------------------------------
  # Train step: jitted with explicit shardings; the state is donated.
  # ----------------------------------------------------------------------------------------
  batch_shardings = {k: partitioning.batch_sharding(mesh, len(s))
                     for k, s in feature_shapes.items()}
  step_fn = ts.make_train_step(model, optimizer, loss_fn, dropout_rng,
                               use_ids_for_masking=mask_false_negatives,
                               microbatch_size=microbatch_size,
                               num_data_shards=mesh.shape["data"])
  # What the loss reads but nothing trains (teacher weights, corpus statistics): replicated.
  frozen_inputs = None
  if hasattr(loss_fn, "prepare"):
    frozen_inputs = jax.device_put(
        loss_fn.prepare(mixture_or_task_name=mixture_or_task_name,
                        feature_lengths=feature_lengths,
                        vocabulary=vocabulary or data.vocabulary),
        partitioning.replicated(mesh))
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    jitted_step = jax.jit(step_fn, in_shardings=(state_shardings, batch_shardings,
                                                 partitioning.replicated(mesh)),
                          out_shardings=(state_shardings, None), donate_argnums=(0,))
    abstract_batch = {k: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_shardings[k])
                      for k, (shape, dtype) in feature_specs.items()}
    traced_step = jitted_step.trace(abstract_state, abstract_batch, frozen_inputs)
    compiled_step = traced_step.lower().compile()
    # MFU counts the model's FLOPs: gradient caching's second forward pass is overhead.
    model_step = traced_step if not microbatch_size else jax.jit(
        ts.make_train_step(model, optimizer, loss_fn, dropout_rng)).trace(
            abstract_state, abstract_batch, frozen_inputs)
  flops_per_step = flops.jaxpr_matmul_flops(model_step.jaxpr)
  peak = peak_flops_per_device * flops.peak_units()

  # ----------------------------------------------------------------------------------------
  # Loop: step, log, checkpoint; SIGTERM saves and exits cleanly; NaN stops the run.
  # ----------------------------------------------------------------------------------------
  writer = metrics_log.MetricsLog(model_dir, total_steps=train_steps, progress_bar=progress_bar)
  first_step = int(state.step)
  timer_start, timer_step = time.perf_counter(), first_step
  with _Preemption() as preemption:
    try:
      for step in range(first_step, train_steps):
        batch = partitioning.global_batch(next(data), mesh)
        state, metrics = compiled_step(state, batch, frozen_inputs)
        done = step + 1
        # Fetched every step: a non-finite loss or gradient must stop the run before the
        # state it produced can be checkpointed.
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not all(math.isfinite(metrics[k]) for k in ("loss", "grad_norm", "update_norm")):
          raise NonFiniteLossError(
              f"loss {metrics['loss']}, gradient norm {metrics['grad_norm']}, update norm "
              f"{metrics['update_norm']} at step {done}; stopping. The newest good checkpoint in {checkpointer.directory} is kept "
              f"(step {checkpointer.latest_step()}).")
        if done % log_every_steps == 0 or done == train_steps:
          seconds_per_step = (time.perf_counter() - timer_start) / (done - timer_step)
          timer_start, timer_step = time.perf_counter(), done
          metrics.update(learning_rate=float(schedule(step)),
                         examples_per_second=batch_size / seconds_per_step,
                         seconds_per_step=seconds_per_step,
                         mfu=flops_per_step / seconds_per_step / peak)
          writer.write(done, metrics)
          if on_step_end is not None:
            on_step_end(done, metrics)
        if eval_every_steps and (done % eval_every_steps == 0 or done == train_steps):
          results = evaluation.evaluate_tasks(
              model, state.params, eval_mixture_or_task_name or mixture_or_task_name,
              feature_lengths=eval_feature_lengths or feature_lengths, split=eval_split,
              vocabulary=vocabulary,
              mesh=mesh, output_dir=model_dir / "eval" / str(done))
          writer.write(done, evaluation.flatten_for_logging(results))
        if checkpointer.due(done, force=done == train_steps):
          writer.sync()  # a checkpointed step's logs reach a gs:// MODEL_DIR before it commits
        checkpointer.save(done, state, data.get_state(), force=done == train_steps)
        if preemption.requested:
          checkpointer.save(done, state, data.get_state(), force=True)
          checkpointer.wait()
          print(f"SIGTERM: saved checkpoint at step {done}; exiting", flush=True)
          break
    finally:
      checkpointer.close()
      writer.close()
  return state


def _write_config(path, config: str) -> None:
  """Writes config.gin; a different one already there (an earlier run's) is kept as
  config.gin.<n>, never overwritten."""
  path = fs.path(path)
  if path.exists():
    if path.read_text() == config:
      return
    n = 1
    while path.with_name(f"{path.name}.{n}").exists():
      n += 1
    path.rename(path.with_name(f"{path.name}.{n}"))
  fs.write_text(path, config)


def _on_mesh(tree, mesh):
  """Replicates over the mesh every leaf not already placed on it (scalars, optimizer counts)."""
  devices = set(mesh.devices.flat)
  return jax.tree.map(
      lambda x: x if x.sharding.device_set == devices
      else jax.device_put(x, partitioning.replicated(mesh)), tree)


def _load_pretrained_encoder(path: str, model):
  """Encoder params from a Hugging Face directory (config.json inside); with its MLM head when
  the model has one (a sparse model) and the checkpoint holds it. A sentence-transformers
  SparseEncoder directory gives a sparse model everything, its IDF table included."""
  from dualenc import convert
  if getattr(model, "architecture", None) == "sparse" and (
      fs.path(path) / "modules.json").exists():
    from dualenc.sparse import pretrained  # pylint: disable=g-import-not-at-top
    with fs.local_copy(path) as local:
      return pretrained.load(local, missing_idf=model.missing_idf,
                             dtype=model.encoder_config.dtype).params
  if not (fs.path(path) / "config.json").exists():
    raise ValueError(f"INITIAL_CHECKPOINT_PATH={path!r}: expected a Hugging Face checkpoint "
                     "directory with config.json")
  with fs.local_copy(path) as local:
    mlm_head = getattr(model, "has_mlm_head", False) and convert.has_mlm_head(local)
    _, variables = convert.from_huggingface(local, dtype=model.encoder_config.dtype,
                                            mlm_head=mlm_head)
  return variables["params"]


def main(argv: Optional[Sequence[str]] = None) -> int:
  logging.basicConfig(level=logging.WARNING)
  parser = argparse.ArgumentParser(description=__doc__)
  distributed = parser.add_argument_group("multi-host (TPU pods, multi-node GPU)")
  distributed.add_argument("--distributed", action="store_true",
                           help="call jax.distributed.initialize() (auto-detects on TPU pods "
                                "and SLURM); the flags below set it up by hand")
  distributed.add_argument("--coordinator_address", default=None, help="host:port of process 0")
  distributed.add_argument("--num_processes", type=int, default=None)
  distributed.add_argument("--process_id", type=int, default=None)
  args = gin_utils.parse_command_line(
      sys.argv[1:] if argv is None else argv, description=__doc__, parser=parser)
  if args.distributed or args.coordinator_address:
    # Only the CPU backend reads this (multi-process CPU runs need gloo); asking which backend
    # is in use would initialise it too early.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=args.coordinator_address,
                               num_processes=args.num_processes, process_id=args.process_id)
  if args.print_config:
    print(gin.config_str())
    return 0
  train()
  return 0

