"""DualEncoderFeatureConverter: task features -> the model features of T5X retrieval.

task_feature_lengths = {"inputs": Lq, "targets": Ld [, "negative_targets": [N, Ln]]}

Model features per example (batched by the pipeline to a leading [B]):
  left_encoder_input_tokens            int32 [Lq]      queries
  right_encoder_input_tokens           int32 [Ld]      positives
  right_negative_encoder_input_tokens  int32 [N, Ln]   only when "negative_targets" is given
  left_ids, right_ids                  int32 []        stable hashes of query / positive ids
  teacher_scores                       float32 [T, 1 + N]  only when the task has them

Tokens are padded with 0, the padding id; models take attention_mask = tokens != 0. An
example with fewer than N hard negatives gets all-zero rows: a negative row whose tokens are
all 0 is absent and must be masked out of the loss (`any(tokens != 0, axis=-1)`); its
teacher score is 0. Extra negatives beyond N are dropped (the first N are kept). A task with
no negatives at all yields all-zero negative rows, so such tasks can be mixed with tasks that
have them. Packing is refused: every row is one (query, document) pair by construction.
"""

from __future__ import annotations

from typing import Mapping, Optional

import seqio

from dualenc.data.tf_cpu import no_autograph, tf

Spec = seqio.FeatureConverter.FeatureSpec
_AUTOTUNE = tf.data.AUTOTUNE


class DualEncoderFeatureConverter(seqio.FeatureConverter):
  """seqio FeatureConverter for (query, positive [, negatives]) dual-encoder batches.

  use_teacher_scores: None keeps them when the task has them; True requires them; False drops
  them.
  """

  TASK_FEATURES = {}
  MODEL_FEATURES = {}
  PACKING_FEATURE_DTYPES = None

  def __init__(self, pack: bool = False, use_teacher_scores: Optional[bool] = None, **kwargs):
    if pack:
      raise ValueError("DualEncoderFeatureConverter: packing is not supported (pack=True): a "
                       "dual-encoder row is one query and one document; pass pack=False")
    super().__init__(pack=False, **kwargs)
    self._use_teacher_scores = use_teacher_scores

  def _layout(self, element_spec, task_feature_lengths):
    """(num_negatives, teacher_scores?) for this dataset, validating the requested lengths."""
    unknown = set(task_feature_lengths) - {"inputs", "targets", "negative_targets"}
    missing = {"inputs", "targets"} - set(task_feature_lengths)
    if unknown or missing:
      raise ValueError(f"task_feature_lengths {dict(task_feature_lengths)}: needs 'inputs' and "
                       f"'targets', optionally 'negative_targets': [N, length]; unknown "
                       f"{sorted(unknown)}, missing {sorted(missing)}")
    negatives = task_feature_lengths.get("negative_targets")
    if negatives is not None and (not isinstance(negatives, (list, tuple)) or len(negatives) != 2
                                  or negatives[0] < 1 or negatives[1] < 2):
      raise ValueError(f"task_feature_lengths['negative_targets'] = {negatives!r}: must be "
                       "[N negatives per example >= 1, token length >= 2]")
    num_negatives = int(negatives[0]) if negatives is not None else 0
    has_scores = "teacher_scores" in element_spec
    if self._use_teacher_scores and not has_scores:
      raise ValueError("use_teacher_scores=True but the task has no 'teacher_scores'")
    return num_negatives, has_scores and self._use_teacher_scores is not False

  def __call__(self, ds: tf.data.Dataset,
               task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    num_negatives, scores = self._layout(ds.element_spec, task_feature_lengths)
    self.TASK_FEATURES = {"inputs": Spec(tf.int32), "targets": Spec(tf.int32),
                          "left_ids": Spec(tf.int32, rank=0),
                          "right_ids": Spec(tf.int32, rank=0)}
    self.MODEL_FEATURES = {"left_encoder_input_tokens": Spec(tf.int32),
                           "right_encoder_input_tokens": Spec(tf.int32),
                           "left_ids": Spec(tf.int32, rank=0),
                           "right_ids": Spec(tf.int32, rank=0)}
    lengths = {"inputs": task_feature_lengths["inputs"],
               "targets": task_feature_lengths["targets"], "left_ids": 1, "right_ids": 1}
    if num_negatives:
      self.TASK_FEATURES["negative_targets"] = Spec(tf.int32, rank=2, sequence_dim=1)
      self.MODEL_FEATURES["right_negative_encoder_input_tokens"] = Spec(tf.int32, rank=2,
                                                                        sequence_dim=1)
      lengths["negative_targets"] = int(task_feature_lengths["negative_targets"][1])
    if scores:
      self.TASK_FEATURES["teacher_scores"] = Spec(tf.float32, rank=2, sequence_dim=1)
      self.MODEL_FEATURES["teacher_scores"] = Spec(tf.float32, rank=2, sequence_dim=1)
      lengths["teacher_scores"] = 1 + num_negatives
    self._num_negatives = num_negatives
    ds = ds.map(no_autograph(lambda ex: self._select(ex, num_negatives, scores)),
                num_parallel_calls=_AUTOTUNE)
    return super().__call__(ds, lengths)

  @staticmethod
  def _select(example, num_negatives: int, scores: bool):
    """Keeps the converter's features: first N negatives (added empty if the task has none)
    and the matching 1 + N teacher-score columns."""
    keep = ("inputs", "targets", "left_ids", "right_ids")
    out = {k: example[k] for k in keep}
    if num_negatives:
      negatives = example.get("negative_targets")
      if negatives is None:
        negatives = tf.RaggedTensor.from_row_lengths(tf.zeros([0], tf.int32),
                                                     tf.zeros([0], tf.int64))
      elif not isinstance(negatives, tf.RaggedTensor):
        negatives = tf.RaggedTensor.from_tensor(negatives)
      out["negative_targets"] = negatives[:num_negatives]
    if scores:
      out["teacher_scores"] = example["teacher_scores"][:, :1 + num_negatives]
    return out

  def _convert_features(self, ds: tf.data.Dataset,
                        task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    num_negatives = self._num_negatives

    @no_autograph
    def convert(ex):
      out = {"left_encoder_input_tokens": _pad(ex["inputs"], task_feature_lengths["inputs"]),
             "right_encoder_input_tokens": _pad(ex["targets"], task_feature_lengths["targets"]),
             "left_ids": ex["left_ids"], "right_ids": ex["right_ids"]}
      if num_negatives:
        length = task_feature_lengths["negative_targets"]
        out["right_negative_encoder_input_tokens"] = ex["negative_targets"].to_tensor(
            0, shape=[num_negatives, length])
      if "teacher_scores" in ex:
        scores = ex["teacher_scores"]
        out["teacher_scores"] = tf.pad(scores, [[0, 0], [0, 1 + num_negatives
                                                         - tf.shape(scores)[1]]])
      return out

    return ds.map(convert, num_parallel_calls=_AUTOTUNE)

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]
                                ) -> Mapping[str, int]:
    lengths = {"left_encoder_input_tokens": task_feature_lengths["inputs"],
               "right_encoder_input_tokens": task_feature_lengths["targets"],
               "left_ids": 1, "right_ids": 1}
    if "negative_targets" in task_feature_lengths:
      lengths["right_negative_encoder_input_tokens"] = task_feature_lengths["negative_targets"]
    if "teacher_scores" in task_feature_lengths:
      lengths["teacher_scores"] = task_feature_lengths["teacher_scores"]
    return lengths


def _pad(tokens: tf.Tensor, length: int) -> tf.Tensor:
  tokens = tokens[:length]
  padded = tf.pad(tokens, [[0, length - tf.shape(tokens)[0]]])
  padded.set_shape([length])
  return padded
