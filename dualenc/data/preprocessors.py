"""seqio preprocessors: raw source features -> dual-encoder task features.

Task features (before `DualEncoderFeatureConverter`):
  inputs             int32 [<= Lq]       framed query tokens (see vocabularies.frame_tf)
  targets            int32 [<= Ld]       framed positive tokens
  negative_targets   int32 [n, <= Ln]    framed hard negatives (ragged; n = 0 if the data has none)
  left_ids           int32 []            stable hash of the query id
  right_ids          int32 []            stable hash of the positive's id
  teacher_scores     float32 [T, 1 + n]  when the data has them

Every task runs `to_task_features` then `tokenize_and_frame`. Both are deterministic maps
(tf.data keeps element order), so a record always yields the same example.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence, Union

import seqio

from dualenc.data import vocabularies
from dualenc.data.sources import stable_ids_tf
from dualenc.data.tf_cpu import no_autograph, tf

TOKEN_FEATURES = ("inputs", "targets", "negative_targets")
_AUTOTUNE = tf.data.AUTOTUNE


def output_features(vocabulary: seqio.Vocabulary) -> Mapping[str, seqio.Feature]:
  """The task output features; negatives and teacher scores are optional per split."""
  ids = seqio.PassThroughVocabulary(size=0)
  return {
      "inputs": seqio.Feature(vocabulary, add_eos=True, dtype=tf.int32, rank=1),
      "targets": seqio.Feature(vocabulary, add_eos=True, dtype=tf.int32, rank=1),
      "negative_targets": seqio.Feature(vocabulary, add_eos=True, dtype=tf.int32, rank=2,
                                        required=False),
      "left_ids": seqio.Feature(ids, add_eos=False, dtype=tf.int32, rank=0),
      "right_ids": seqio.Feature(ids, add_eos=False, dtype=tf.int32, rank=0),
      "teacher_scores": seqio.Feature(ids, add_eos=False, dtype=tf.float32, rank=2,
                                      required=False),
  }


def _dense(value):
  return value.to_tensor() if isinstance(value, tf.RaggedTensor) else value


def to_task_features(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """Renames raw features (sources.py) to task features and hashes the ids."""
  missing = {"query", "positive", "query_id", "positive_id"} - set(dataset.element_spec)
  if missing:
    raise ValueError(f"dataset lacks raw feature(s) {sorted(missing)}; it has "
                     f"{sorted(dataset.element_spec)}")

  @no_autograph
  def convert(raw):
    out = {"inputs": raw["query"], "targets": raw["positive"],
           "left_ids": stable_ids_tf(raw["query_id"]),
           "right_ids": stable_ids_tf(raw["positive_id"])}
    # Always present (possibly [0]) so tasks with and without negatives share one structure
    # and can be mixed by seqio.Mixture as well as by the pipeline.
    out["negative_targets"] = (_dense(raw["negatives"]) if "negatives" in raw
                               else tf.zeros([0], tf.string))
    if "teacher_scores" in raw:
      out["teacher_scores"] = tf.cast(_dense(raw["teacher_scores"]), tf.float32)
    return out

  return dataset.map(convert, num_parallel_calls=_AUTOTUNE)


def token_length(sequence_length: Optional[Mapping[str, Union[int, Sequence[int]]]],
                 feature: str) -> Optional[int]:
  """Token length of a feature from task feature lengths; negative_targets is [N, L]."""
  if not sequence_length or sequence_length.get(feature) is None:
    return None
  length = sequence_length[feature]
  return int(length[-1]) if isinstance(length, (list, tuple)) else int(length)


def tokenize_and_frame(dataset: tf.data.Dataset,
                       output_features: Mapping[str, seqio.Feature],
                       sequence_length: Optional[Mapping[str, int]] = None
                       ) -> tf.data.Dataset:
  """Tokenizes inputs/targets/negative_targets, truncates, adds [CLS]/[SEP] or EOS."""

  def length_of(name):
    length = token_length(sequence_length, name)
    if name == "negative_targets" and length is None:
      length = token_length(sequence_length, "targets")
    return length

  def encode(vocabulary, texts):
    pieces = vocabulary.encode_tf(texts)
    if not isinstance(pieces, tf.RaggedTensor):
      pieces = tf.RaggedTensor.from_tensor(pieces)
    return pieces.with_flat_values(tf.cast(pieces.flat_values, tf.int32))

  @no_autograph
  def tokenize(example):
    out = dict(example)
    names = [n for n in TOKEN_FEATURES if n in example]
    vocabs = {n: output_features[n].vocabulary for n in names}
    if len(names) == 3 and vocabs["inputs"] == vocabs["targets"] == vocabs["negative_targets"]:
      # One tokenizer call for query, positive and negatives: a third of the graph to trace.
      texts = tf.concat([example["inputs"][None], example["targets"][None],
                         example["negative_targets"]], axis=0)
      pieces = encode(vocabs["inputs"], texts)
      parts = {"inputs": pieces[0], "targets": pieces[1], "negative_targets": pieces[2:]}
    else:
      parts = {n: (encode(vocabs[n], example[n][None])[0] if n != "negative_targets"
                   else encode(vocabs[n], example[n])) for n in names}
    for name in names:
      out[name] = vocabularies.frame_tf(parts[name], length_of(name), vocabs[name])
    return out

  return dataset.map(tokenize, num_parallel_calls=_AUTOTUNE)


DEFAULT_PREPROCESSORS = (to_task_features, tokenize_and_frame)
