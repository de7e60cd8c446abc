"""The batch pipeline: same seed same batches, shards that partition each global batch and
cover an epoch once, exact resume (mid-epoch, across an epoch, with another host count),
mixture rates."""

import collections
import json

import numpy as np
import pytest
import seqio

import tasks  # noqa: F401  (registers the built-in tasks)
from dualenc.data import pipeline, preprocessors, vocabularies
from dualenc.data.sources import stable_ids
from dualenc.data.tf_cpu import tf

LENGTHS = {"inputs": 16, "targets": 24}


@pytest.fixture(scope="module", autouse=True)
def data_root(data_root_env):
  return data_root_env


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def pairs(batch):
  return list(zip(batch["left_ids"].tolist(), batch["right_ids"].tolist()))


def test_same_seed_same_batches_other_seed_other_batches():
  make = lambda seed: pipeline.make_batch_iterator(
      "beir_scifact", split="train", batch_size=16, feature_lengths=LENGTHS, seed=seed)
  first, second = take(make(7), 4), take(make(7), 4)
  assert_same_batches(first, second)
  other = next(make(8))
  assert pairs(other) != pairs(first[0])


def test_two_shards_partition_batches_and_cover_an_epoch_once(data_root):
  records = [json.loads(line) for line in open(data_root / "wikiqa" / "train_pairs.jsonl")]
  everything = collections.Counter(zip(stable_ids([r["qid"] for r in records]).tolist(),
                                       stable_ids([r["positive"] for r in records]).tolist()))
  assert len(records) == 1040 and len(everything) == 1040
  lengths = dict(LENGTHS, negative_targets=[1, 24])
  shards = [pipeline.make_batch_iterator("wikiqa_train", split="train", batch_size=8,
                                         feature_lengths=lengths, seed=3, shard_index=h,
                                         num_shards=2) for h in range(2)]
  whole = pipeline.make_batch_iterator("wikiqa_train", split="train", batch_size=8,
                                       feature_lengths=lengths, seed=3)
  seen = collections.Counter()
  for step in range(1040 // 8):
    parts = [next(s) for s in shards]
    assert all(p["left_encoder_input_tokens"].shape == (4, 16) for p in parts)
    if step < 3:
      joined = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
      assert_same_batches([joined], [next(whole)])
    for p in parts:
      seen.update(pairs(p))
  assert seen == everything


def test_resume_mid_epoch_gives_exactly_the_next_batches():
  make = lambda **kw: pipeline.make_batch_iterator(
      "beir_scifact", split="test", batch_size=32, feature_lengths=LENGTHS, seed=11, **kw)
  run = make()
  before = take(run, 5)
  state = json.loads(json.dumps(run.get_state()))
  after = take(run, 8)  # 339 pairs / 32: steps 10 and 11 straddle the epoch boundary
  resumed = make()
  resumed.set_state(state)
  assert_same_batches(take(resumed, 8), after)
  # Each epoch is a permutation: the first 10 batches (320 rows) repeat no pair.
  first_epoch = [p for b in before + after[:5] for p in pairs(b)]
  assert len(first_epoch) == 320 and len(set(first_epoch)) == 320
  assert state["step"] == 5 and state["positions"] == {"beir_scifact": 160}
  # A state saved on one host restores on two: their halves make up the same batch.
  halves = [make(shard_index=h, num_shards=2) for h in range(2)]
  for half in halves:
    half.set_state(state)
  joined = [{k: np.concatenate([b[k] for b in step]) for k in after[0]}
            for step in zip(*(take(h, 2) for h in halves))]
  assert_same_batches(joined, after[:2])


def test_mixture_rates_and_exact_resume():
  make = lambda: pipeline.make_batch_iterator(
      "scifact_wikiqa_mix", split="train", batch_size=32,
      feature_lengths=dict(LENGTHS, negative_targets=[2, 24]), seed=0)
  mix = make()
  batches = take(mix, 30)
  positions = mix.get_state()["positions"]
  assert sum(positions.values()) == 960
  sigma = (960 * (1 / 3) * (2 / 3)) ** 0.5
  assert all(abs(n - 320) < 4 * sigma for n in positions.values()), positions
  # Rows of tasks without negatives carry all-zero negative rows.
  negatives_present = np.concatenate(
      [b["right_negative_encoder_input_tokens"].any(axis=-1).any(axis=-1) for b in batches])
  assert 0 < negatives_present.sum() <= positions["wikiqa_train"]
  state = mix.get_state()
  expected = take(mix, 2)
  again = make()
  again.set_state(state)
  assert_same_batches(take(again, 2), expected)


def test_file_order_single_epoch(data_root):
  rows = open(data_root / "scifact" / "qrels" / "train.tsv", "rb").read().decode().splitlines()
  query_ids = [line.split("\t")[0] for line in rows[1:]]
  it = pipeline.make_batch_iterator("beir_scifact", split="train", batch_size=100,
                                    feature_lengths=LENGTHS, shuffle=False, num_epochs=1)
  batches = list(it)
  assert len(batches) == 919 // 100
  np.testing.assert_array_equal(np.concatenate([b["left_ids"] for b in batches]),
                                stable_ids(query_ids[:900]))


def test_bad_arguments_and_states_are_refused():
  with pytest.raises(ValueError, match="multiple of num_shards=3"):
    pipeline.make_batch_iterator("beir_scifact", batch_size=10, feature_lengths=LENGTHS,
                                 num_shards=3)
  with pytest.raises(ValueError, match="no seqio task or mixture named 'no_such_task'"):
    pipeline.make_batch_iterator("no_such_task", batch_size=8, feature_lengths=LENGTHS)
  with pytest.raises(ValueError, match="num_epochs applies to a single task"):
    pipeline.make_batch_iterator("scifact_wikiqa_mix", batch_size=8, feature_lengths=LENGTHS,
                                 num_epochs=1)
  it = pipeline.make_batch_iterator("beir_scifact", batch_size=8, feature_lengths=LENGTHS,
                                    seed=1)
  state = it.get_state()
  other = pipeline.make_batch_iterator("beir_scifact", batch_size=8, feature_lengths=LENGTHS,
                                       seed=2)
  with pytest.raises(ValueError, match="'seed': \\(1, 2\\)"):
    other.set_state(state)
  with pytest.raises(ValueError, match="not a dualenc.pipeline.v1 iterator state"):
    other.set_state({"step": 3})
  with pytest.raises(ValueError, match="no split 'validation'"):
    pipeline.make_batch_iterator("beir_scifact", split="validation", batch_size=8,
                                 feature_lengths=LENGTHS)


def _user_source(split, shuffle_files):
  del split, shuffle_files
  return tf.data.Dataset.from_tensor_slices({
      "query": [f"question number {i}" for i in range(12)],
      "positive": [f"answer number {i}" for i in range(12)],
      "query_id": [f"q{i}" for i in range(12)], "positive_id": [f"a{i}" for i in range(12)]})


def test_any_seqio_task_with_dualenc_preprocessors_feeds_the_pipeline():
  vocabulary = vocabularies.wordpiece_vocabulary()
  seqio.TaskRegistry.add(
      "user_function_task", source=seqio.FunctionDataSource(_user_source, splits=["train"]),
      preprocessors=list(preprocessors.DEFAULT_PREPROCESSORS),
      output_features=preprocessors.output_features(vocabulary))
  it = pipeline.make_batch_iterator("user_function_task", batch_size=12, shuffle=False,
                                    num_epochs=1, feature_lengths=LENGTHS)
  (batch,) = list(it)
  np.testing.assert_array_equal(batch["left_ids"], stable_ids([f"q{i}" for i in range(12)]))
  np.testing.assert_array_equal(
      batch["right_encoder_input_tokens"],
      vocabularies.encode_batch(vocabulary, [f"answer number {i}" for i in range(12)], 24))
  # A preprocessor that drops records breaks the one-example-per-record contract: refused.
  seqio.TaskRegistry.add(
      "user_filtering_task", source=seqio.FunctionDataSource(_user_source, splits=["train"]),
      preprocessors=[lambda ds: ds.filter(lambda ex: tf.strings.regex_full_match(
          ex["query_id"], "q[0-5]"))] + list(preprocessors.DEFAULT_PREPROCESSORS),
      output_features=preprocessors.output_features(vocabulary))
  it = pipeline.make_batch_iterator("user_filtering_task", batch_size=12, seed=0,
                                    feature_lengths=LENGTHS)
  with pytest.raises(ValueError, match="turned 12 records into 6 examples"):
    next(it)
  assert it.feature_shapes()["left_encoder_input_tokens"] == ((12, 16), np.int32)
