"""Deterministic, sharded, exactly resumable batches of numpy arrays for the trainer.

    it = make_batch_iterator("beir_scifact", split="train", batch_size=512,
                             feature_lengths={"inputs": 64, "targets": 256},
                             seed=0, shard_index=jax.process_index(),
                             num_shards=jax.process_count())
    batch = next(it)          # {"left_encoder_input_tokens": int32 [512 // num_shards, 64], ...}
    state = it.get_state()    # JSON-serialisable; save it with the checkpoint
    it.set_state(state)       # the next batch is exactly the one that followed `state`

Order. The global batch at step s holds rows r = s*B .. s*B + B - 1 of an endless stream.
For a mixture, row r comes from task t = the first task whose cumulative normalised rate
exceeds uniform(seed, r); each task keeps its own position k, and its k-th example is record
permutation(seed, task, split, epoch = k // n)[k % n]: every epoch of a task is a fresh
permutation, so within an epoch each record appears exactly once. All of it is a pure
function of (seed, step), computed with `ordering` (BLAKE2b/SplitMix64; no RNG streams), so
runs, processes and machines agree, and the state is just (step, per-task positions).

Sharding. Host h of H gets rows [h*B/H, (h+1)*B/H) of every global batch (seqio.ShardInfo
index/num_shards semantics); all hosts compute the same plan, so the hosts together see each
global batch exactly once, and a state saved with H hosts restores with any other H.

Only the selected records are tokenized: each task's records go through the task's own
preprocessors (`Task.preprocess_precache` / `preprocess_postcache`) and the
DualEncoderFeatureConverter in tf.data on the CPU. Preprocessors must map one record to one
example. seqio's offline cache (T5X's USE_CACHED_TASKS) is never used.
"""

from __future__ import annotations

import atexit
import functools
import gc
import weakref
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import gin
import numpy as np
import seqio

from dualenc.data import ordering, preprocessors, sources
# Imported for gin: with the pipeline loaded, `@dualenc.data.registry.register_dataset()` and
# `register_mixture()` can be used from command-line bindings without any other import.
from dualenc.data import registry  # noqa: F401  pylint: disable=unused-import
from dualenc.data.feature_converter import DualEncoderFeatureConverter
from dualenc.data.tf_cpu import no_autograph, tf

STATE_FORMAT = "dualenc.pipeline.v1"
_LIVE_ITERATORS = weakref.WeakSet()


@atexit.register
def _close_live_iterators():
  # tf.data generator iterators destroyed after the interpreter starts shutting down log a
  # scary (harmless) FAILED_PRECONDITION; closing them first keeps exits quiet.
  for iterator in list(_LIVE_ITERATORS):
    iterator.close()
  gc.collect()


def _leaf_tasks(name: str) -> Tuple[List[seqio.Task], np.ndarray]:
  try:
    provider = seqio.get_mixture_or_task(name)
  except ValueError as e:
    raise ValueError(f"no seqio task or mixture named {name!r} (import `tasks` to register "
                     f"dualenc's, or register_dataset(...) your own): {e}") from None
  if isinstance(provider, seqio.Mixture):
    tasks = list(provider.tasks)
    rates = np.array([provider.get_rate(t) for t in tasks], np.float64)
    if not np.all(np.isfinite(rates)) or np.any(rates < 0) or rates.sum() <= 0:
      raise ValueError(f"mixture {name!r}: rates must be finite, >= 0, not all 0; got "
                       f"{dict(zip([t.name for t in tasks], rates.tolist()))}")
    return tasks, rates / rates.sum()
  return [provider], np.ones([1])


def _dense(value):
  return value.to_tensor() if isinstance(value, tf.RaggedTensor) else value


def _with_vocabulary(task: seqio.Task, vocabulary: seqio.Vocabulary) -> seqio.Task:
  features = {name: (seqio.Feature(vocabulary, add_eos=f.add_eos, required=f.required,
                                   dtype=f.dtype, rank=f.rank)
                     if name in preprocessors.TOKEN_FEATURES else f)
              for name, f in task.output_features.items()}
  return task.replace(output_features=features)


class _Planner:
  """Which task and which record fill each row of each global batch (pure functions)."""

  def __init__(self, names: Sequence[str], sizes: Sequence[int], rates: np.ndarray, seed: int,
               split: str, batch_size: int, shuffle: bool):
    self.names, self.sizes, self.split = list(names), list(sizes), split
    self.cumulative = np.cumsum(rates)
    self.seed, self.batch_size, self.shuffle = seed, batch_size, shuffle
    self._mix_key = ordering.key(seed, "mixture", *names)

  def rows(self, step: int, positions: Sequence[int]) -> Tuple[np.ndarray, np.ndarray, List[int]]:
    """(task of each row [B], task position of each row [B], positions after this step)."""
    rows = np.arange(step * self.batch_size, (step + 1) * self.batch_size, dtype=np.uint64)
    if len(self.names) == 1:
      task = np.zeros(self.batch_size, np.int64)
    else:
      u = ordering.uniform(self._mix_key, rows)
      task = np.minimum(np.searchsorted(self.cumulative, u, side="right"), len(self.names) - 1)
    position = np.zeros(self.batch_size, np.int64)
    after = list(positions)
    for t in range(len(self.names)):
      mine = task == t
      position[mine] = after[t] + np.arange(int(mine.sum()))
      after[t] += int(mine.sum())
    return task, position, after

  @functools.lru_cache(maxsize=8)
  def _epoch_order(self, t: int, epoch: int) -> np.ndarray:
    if not self.shuffle:
      return np.arange(self.sizes[t])
    return ordering.permutation(self.sizes[t],
                                ordering.key(self.seed, self.names[t], self.split, epoch))

  def records(self, t: int, positions: np.ndarray) -> np.ndarray:
    """Record indices of task t's stream positions."""
    epochs, offsets = np.divmod(positions, self.sizes[t])
    out = np.empty_like(positions)
    for epoch in np.unique(epochs):
      mask = epochs == epoch
      out[mask] = self._epoch_order(t, int(epoch))[offsets[mask]]
    return out


class BatchIterator(Iterator[Dict[str, np.ndarray]]):
  """Iterator of per-host numpy batches; see the module docstring. Build it with
  `make_batch_iterator`."""

  def __init__(self, name: str, *, split: str, batch_size: int,
               feature_lengths: Mapping[str, object], seed: int = 0, shard_index: int = 0,
               num_shards: int = 1, vocabulary: Optional[seqio.Vocabulary] = None,
               shuffle: bool = True, num_epochs: Optional[int] = None,
               use_teacher_scores: Optional[bool] = None):
    if batch_size < 1 or num_shards < 1 or batch_size % num_shards:
      raise ValueError(f"batch_size={batch_size} (global) must be a positive multiple of "
                       f"num_shards={num_shards}")
    if not 0 <= shard_index < num_shards:
      raise ValueError(f"shard_index={shard_index} not in [0, num_shards={num_shards})")
    tasks, rates = _leaf_tasks(name)
    if num_epochs is not None and (len(tasks) > 1 or num_epochs < 1):
      raise ValueError("num_epochs applies to a single task and must be >= 1 (None: endless)")
    if vocabulary is not None:
      tasks = [_with_vocabulary(t, vocabulary) for t in tasks]
    self.name, self.split, self.batch_size = name, split, batch_size
    self.shard_index, self.num_shards = shard_index, num_shards
    self.feature_lengths = dict(feature_lengths)
    self._tasks = tasks
    self._tables = [sources.materialize(t.source, split) for t in tasks]
    self._planner = _Planner([t.name for t in tasks], [len(tb) for tb in self._tables], rates,
                             seed, split, batch_size, shuffle)
    self._num_epochs = num_epochs
    self._converter = DualEncoderFeatureConverter(use_teacher_scores=use_teacher_scores)
    self._converter_keeps_scores = use_teacher_scores is not False
    self._fingerprint = {"tasks": [t.name for t in tasks], "rates": rates.round(12).tolist(),
                         "sizes": self._planner.sizes, "seed": seed, "split": split,
                         "batch_size": batch_size, "shuffle": shuffle}
    self._step, self._positions = 0, [0] * len(tasks)
    self._datasets = self._streams = None
    self._stream_start = (0, self._positions)
    _LIVE_ITERATORS.add(self)

  def close(self) -> None:
    """Releases the tf.data streams; iterating again restarts them from the current state."""
    self._streams = None

  @property
  def vocabulary(self) -> seqio.Vocabulary:
    """The vocabulary the batches are tokenized with (the first task's 'inputs' feature)."""
    return self._tasks[0].output_features["inputs"].vocabulary

  @property
  def per_host_batch_size(self) -> int:
    return self.batch_size // self.num_shards

  def feature_shapes(self) -> Dict[str, Tuple[Tuple[int, ...], np.dtype]]:
    """{feature: (per-host batch shape, dtype)} of every batch, without reading one."""
    b, lengths = self.per_host_batch_size, self.feature_lengths
    shapes = {"left_encoder_input_tokens": ((b, lengths["inputs"]), np.dtype(np.int32)),
              "right_encoder_input_tokens": ((b, lengths["targets"]), np.dtype(np.int32)),
              "left_ids": ((b,), np.dtype(np.int32)), "right_ids": ((b,), np.dtype(np.int32))}
    num_negatives = 0
    if lengths.get("negative_targets") is not None:
      num_negatives, length = lengths["negative_targets"]
      shapes["right_negative_encoder_input_tokens"] = ((b, num_negatives, length),
                                                       np.dtype(np.int32))
    scored = [tb for tb in self._tables if "teacher_scores" in tb.columns]
    if scored and self._converter_keeps_scores:
      teachers = len(scored[0].columns["teacher_scores"][0])
      shapes["teacher_scores"] = ((b, teachers, 1 + num_negatives), np.dtype(np.float32))
    return shapes

  def _finished(self, step: int) -> bool:
    if self._num_epochs is None:
      return False
    return (step + 1) * self.batch_size > self._num_epochs * self._planner.sizes[0]

  def _host_rows(self, step: int, positions: Sequence[int]):
    task, position, after = self._planner.rows(step, positions)
    host = slice(self.shard_index * self.per_host_batch_size,
                 (self.shard_index + 1) * self.per_host_batch_size)
    return task[host], position[host], after

  def _dataset(self, t: int) -> tf.data.Dataset:
    """tf.data pipeline of numpy batches of task t's rows for this host. Built (traced) once;
    each new iterator over it starts from the state current when the iterator was made."""
    table, task = self._tables[t], self._tasks[t]

    def plan():
      step, positions = self._stream_start
      while not self._finished(step):
        task_of_row, position, positions = self._host_rows(step, positions)
        mine = task_of_row == t
        if mine.any():
          yield table.take(self._planner.records(t, position[mine]))
        step += 1

    lengths = self.feature_lengths
    converter = self._converter
    per_host = self.per_host_batch_size

    @no_autograph
    def examples(batch):
      # Rows by index rather than from_tensor_slices: slicing ragged columns that way trips
      # TF's dataset type inference (a harmless but loud warning).
      count = tf.shape(batch["query"] if "query" in batch else next(iter(batch.values())),
                       out_type=tf.int64)[0]
      rows = tf.data.Dataset.range(count).map(no_autograph(
          lambda i: {k: _dense(v[i]) for k, v in batch.items()}))
      rows = task.preprocess_precache(rows)
      rows = task.preprocess_postcache(rows, sequence_length=lengths)
      return converter(rows, lengths).batch(per_host)

    ds = tf.data.Dataset.from_generator(plan, output_signature=table.batch_signature())
    return ds.flat_map(examples).prefetch(2)

  def __iter__(self):
    return self

  def __next__(self) -> Dict[str, np.ndarray]:
    if self._finished(self._step):
      raise StopIteration
    if self._streams is None:
      if self._datasets is None:
        self._datasets = [self._dataset(t) for t in range(len(self._tasks))]
      self._stream_start = (self._step, list(self._positions))
      self._streams = [ds.as_numpy_iterator() for ds in self._datasets]
    task_of_row, _, after = self._host_rows(self._step, self._positions)
    batch: Dict[str, np.ndarray] = {}
    for t in np.unique(task_of_row):
      rows = np.flatnonzero(task_of_row == t)
      part = next(self._streams[t])
      name = self._tasks[t].name
      if batch and set(part) != set(batch):
        raise ValueError(f"mixture {self.name!r}: task {name!r} yields features "
                         f"{sorted(part)}, other tasks {sorted(batch)}")
      for key, value in part.items():
        if len(value) != len(rows):
          raise ValueError(f"task {name!r}: its preprocessors turned {len(rows)} records into "
                           f"{len(value)} examples; the pipeline needs one example per record")
        if key not in batch:
          batch[key] = np.zeros((self.per_host_batch_size,) + value.shape[1:], value.dtype)
        batch[key][rows] = value
    self._step, self._positions = self._step + 1, after
    return batch

  def get_state(self) -> dict:
    """JSON-serialisable position: the next batch is the one after the last one returned."""
    return {"format": STATE_FORMAT, "step": self._step,
            "positions": dict(zip(self._fingerprint["tasks"], self._positions)),
            "fingerprint": self._fingerprint}

  def set_state(self, state: Mapping) -> None:
    if state.get("format") != STATE_FORMAT:
      raise ValueError(f"not a {STATE_FORMAT} iterator state: {state!r:.200}")
    saved = state["fingerprint"]
    different = {k: (saved.get(k), v) for k, v in self._fingerprint.items() if saved.get(k) != v}
    if different:
      raise ValueError(f"iterator state was saved for a different input order; (saved, now) "
                       f"differ in {different}")
    self._step = int(state["step"])
    self._positions = [int(state["positions"][n]) for n in self._fingerprint["tasks"]]
    self._streams = None


@gin.configurable
def make_batch_iterator(task_or_mixture_name: str = gin.REQUIRED, *, split: str = "train",
                        batch_size: int = gin.REQUIRED,
                        feature_lengths: Mapping[str, object] = gin.REQUIRED, seed: int = 0,
                        shard_index: int = 0, num_shards: int = 1,
                        vocabulary: Optional[seqio.Vocabulary] = None, shuffle: bool = True,
                        num_epochs: Optional[int] = None,
                        use_teacher_scores: Optional[bool] = None) -> BatchIterator:
  """Batches of `task_or_mixture_name` for this host; see the module docstring.

  batch_size is the global batch; each host gets batch_size // num_shards rows.
  feature_lengths: {"inputs": Lq, "targets": Ld [, "negative_targets": [N, Ln]]}.
  vocabulary replaces the tasks' registered vocabulary (the model's, chosen by gin).
  shuffle=False keeps file order; num_epochs (single task) stops after that many epochs,
  dropping the last partial batch; None repeats forever.
  """
  return BatchIterator(task_or_mixture_name, split=split, batch_size=batch_size,
                       feature_lengths=feature_lengths, seed=seed, shard_index=shard_index,
                       num_shards=num_shards, vocabulary=vocabulary, shuffle=shuffle,
                       num_epochs=num_epochs, use_teacher_scores=use_teacher_scores)
