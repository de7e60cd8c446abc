"""seqio data sources over in-memory records, with random access for the batch pipeline.

Raw features every dualenc source yields (the `preprocessors` turn them into task features):
  query, positive              tf.string []       query text, positive document text
  query_id, positive_id        tf.string []       ids (the text itself where a format has none)
  negatives                    tf.string [n]      hard negative texts (absent if none)
  teacher_scores               tf.float32 [T, 1 + n]  teacher scores (absent if none)

`RecordTable` holds a split's records as columns and hands out any subset of rows as one
batch of tensors (ragged where records differ in shape): that random access is what makes the
pipeline's order a pure function of (seed, position), hence exactly resumable.
"""

from __future__ import annotations

import functools
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import seqio

from dualenc.data import ordering
from dualenc.data.records import TrainingExamples
from dualenc.data.tf_cpu import tf

# ids are hashed into [0, 2**31 - 1): non-negative int32, FarmHash Fingerprint64 based, which
# TF documents as deterministic and never changing.
_ID_BUCKETS = 2**31 - 1


def stable_ids_tf(ids: tf.Tensor) -> tf.Tensor:
  """id strings -> int32 hashes, identical across processes, machines and runs."""
  return tf.cast(tf.strings.to_hash_bucket_fast(ids, _ID_BUCKETS), tf.int32)


def stable_ids(ids: Sequence[str]) -> np.ndarray:
  """The same hashes as `stable_ids_tf`, for Python lists: int32 [len(ids)]."""
  return stable_ids_tf(tf.constant(list(ids), dtype=tf.string)).numpy()


Column = Union[np.ndarray, List[np.ndarray]]


class RecordTable:
  """Columns of equal length. A column is an ndarray (one scalar per record) or a list of
  per-record ndarrays of one rank (shapes may differ: they come out ragged)."""

  def __init__(self, columns: Mapping[str, Column]):
    lengths = {name: len(col) for name, col in columns.items()}
    if len(set(lengths.values())) > 1:
      raise ValueError(f"columns differ in length: {lengths}")
    self.columns = dict(columns)
    self.size = next(iter(lengths.values()), 0)
    self.specs = {name: _column_spec(col) for name, col in self.columns.items()}

  def __len__(self) -> int:
    return self.size

  def take(self, indices: np.ndarray) -> Dict[str, Union[tf.Tensor, tf.RaggedTensor]]:
    """Rows `indices` as one batch: [rows] tensors, or ragged [rows, ...] tensors."""
    out = {}
    for name, col in self.columns.items():
      if isinstance(col, np.ndarray):
        out[name] = tf.constant(col[indices], dtype=self.specs[name].dtype)
      else:
        out[name] = _ragged([col[i] for i in indices], self.specs[name])
    return out

  def batch_signature(self) -> Dict[str, Union[tf.TensorSpec, tf.RaggedTensorSpec]]:
    return {name: (tf.TensorSpec([None], spec.dtype) if isinstance(self.columns[name], np.ndarray)
                   else tf.RaggedTensorSpec([None] + [None] * spec.shape.rank, spec.dtype,
                                            ragged_rank=spec.shape.rank))
            for name, spec in self.specs.items()}

  def element_signature(self) -> Dict[str, tf.TensorSpec]:
    return dict(self.specs)

  def element(self, index: int) -> Dict[str, np.ndarray]:
    return {name: col[index] for name, col in self.columns.items()}


def _column_spec(col: Column) -> tf.TensorSpec:
  if isinstance(col, np.ndarray):
    dtype = tf.string if col.dtype == object or col.dtype.kind in "SU" else tf.as_dtype(col.dtype)
    return tf.TensorSpec([], dtype)
  ranks = {np.ndim(v) for v in col}
  if len(ranks) > 1:
    raise ValueError(f"per-record arrays of one column differ in rank: {sorted(ranks)}")
  first = np.asarray(col[0]) if col else np.zeros([0], np.float32)
  dtype = tf.string if first.dtype == object or first.dtype.kind in "SU" else tf.as_dtype(
      first.dtype)
  return tf.TensorSpec([None] * first.ndim, dtype)


def _ragged(values: List[np.ndarray], spec: tf.TensorSpec) -> tf.RaggedTensor:
  """Per-record arrays of one rank -> fully ragged [rows, None, ...] (row-major values)."""
  rank = spec.shape.rank
  arrays = [np.asarray(v) for v in values]
  flat = np.concatenate([a.reshape(-1) for a in arrays]) if arrays else np.zeros([0])
  nested = [np.array([a.shape[0] for a in arrays], np.int64)]
  for level in range(1, rank):
    nested.append(np.array([d for a in arrays
                            for d in np.full(int(np.prod(a.shape[:level])), a.shape[level])],
                           np.int64))
  flat = flat.astype(object) if spec.dtype == tf.string else flat
  return tf.RaggedTensor.from_nested_row_lengths(tf.constant(flat, dtype=spec.dtype), nested)


def examples_table(examples: TrainingExamples) -> RecordTable:
  """TrainingExamples -> RecordTable with the raw feature names above."""
  text = lambda values: np.array(values, dtype=object)
  columns: Dict[str, Column] = {
      "query": text(examples.queries), "positive": text(examples.positives),
      "query_id": text(examples.query_ids), "positive_id": text(examples.positive_ids)}
  if examples.negatives is not None:
    columns["negatives"] = [np.array(n, dtype=object) for n in examples.negatives]
  if examples.teacher_scores is not None:
    columns["teacher_scores"] = [np.asarray(s, np.float32) for s in examples.teacher_scores]
  return RecordTable(columns)


class ExamplesSource(seqio.DataSource):
  """A seqio DataSource over `load(split) -> TrainingExamples`, loaded once on first use.

  `list_splits()` is called lazily too, so tasks can be registered before their files exist.
  get_dataset(shuffle=True, seed) orders records by `ordering.permutation` of the seed and
  shards by taking every num_shards-th record of that order.
  """

  def __init__(self, load: Callable[[str], TrainingExamples],
               list_splits: Callable[[], Sequence[str]], description: str = ""):
    self._load = load
    self._list_splits = list_splits
    self.description = description
    super().__init__(splits=(), caching_permitted=False)

  @property
  def splits(self) -> Sequence[str]:
    return tuple(self._list_splits())

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True

  def list_shards(self, split: str) -> Sequence[str]:
    return [split]

  @functools.lru_cache(maxsize=None)
  def examples(self, split: str) -> TrainingExamples:
    if split not in self.splits:
      raise ValueError(f"{self.description}: no split {split!r}; splits: {list(self.splits)}")
    return self._load(split)

  @functools.lru_cache(maxsize=None)
  def table(self, split: str) -> RecordTable:
    examples = self.examples(split)
    if not len(examples):
      raise ValueError(f"{self.description}: split {split!r} has no usable records"
                       + (f" ({len(examples.skipped)} skipped)" if examples.skipped else ""))
    return examples_table(examples)

  def num_input_examples(self, split: str) -> int:
    return len(self.examples(split))

  def get_dataset(self, split: str = "train", shuffle: bool = True, seed: Optional[int] = None,
                  shard_info: Optional[seqio.ShardInfo] = None, *, sequence_length=None,
                  use_cached: bool = False, num_epochs: Optional[int] = 1) -> tf.data.Dataset:
    del sequence_length, use_cached, num_epochs  # seqio passes them; they act later
    table = self.table(split)
    order = (ordering.permutation(len(table), ordering.key(seed, split)) if shuffle
             else np.arange(len(table)))
    if shard_info is not None:
      order = order[shard_info.index::shard_info.num_shards]

    def records():
      for index in order:
        yield table.element(int(index))

    return tf.data.Dataset.from_generator(records, output_signature=table.element_signature())

  def __repr__(self) -> str:
    return f"ExamplesSource({self.description})"


def materialize(source: seqio.DataSource, split: str) -> RecordTable:
  """Reads any seqio source's split into memory (file order), for random access."""
  if isinstance(source, ExamplesSource):
    return source.table(split)
  columns: Dict[str, list] = {}
  for record in source.get_dataset(split=split, shuffle=False).as_numpy_iterator():
    for name, value in record.items():
      columns.setdefault(name, []).append(value)
  if not columns:
    raise ValueError(f"{source}: split {split!r} is empty")
  return RecordTable({name: (np.array(values, dtype=object if isinstance(values[0], bytes)
                                      else None) if np.ndim(values[0]) == 0 else values)
                      for name, values in columns.items()})
