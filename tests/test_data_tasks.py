"""The seqio tasks on real data (SciFact, Cranfield, WikiQA): counts equal what the files hold
(counted here independently of dualenc's readers), and batches from the feature converter
have the documented shapes, dtypes and tokens."""

import json

import numpy as np
import pytest
import seqio
import sentencepiece

import tasks  # noqa: F401  (registers the built-in tasks)
from dualenc.data import pipeline, readers, registry, vocabularies
from dualenc.data.feature_converter import DualEncoderFeatureConverter
from dualenc.data.records import DataFormatError
from dualenc.data.sources import stable_ids


@pytest.fixture(scope="module", autouse=True)
def data_root(data_root_env):
  return data_root_env


@pytest.fixture(scope="module")
def vocab():
  return vocabularies.wordpiece_vocabulary()


def jsonl(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def qrels_rows(path):
  """(qid, docid, score) rows; bytes.splitlines copes with the CRLF endings."""
  lines = open(path, "rb").read().decode("utf-8").splitlines()
  assert lines[0].split("\t")[0] == "query-id"
  return [(q, d, int(s)) for q, d, s in (line.split("\t") for line in lines[1:] if line)]


def examples(task_name, split):
  ds = seqio.get_mixture_or_task(task_name).get_dataset(
      {"inputs": 512, "targets": 512}, split=split, shuffle=False)
  return list(ds.as_numpy_iterator())


def test_scifact_pairs_queries_documents_match_the_files(data_root):
  corpus = jsonl(data_root / "scifact" / "corpus.jsonl")
  for split, rows_in_file in (("train", 919), ("test", 339)):
    rows = qrels_rows(data_root / "scifact" / "qrels" / f"{split}.tsv")
    assert len(rows) == rows_in_file
    got = examples("beir_scifact", split)
    assert len(got) == sum(s > 0 for _, _, s in rows)
    expected_pairs = sorted(zip(stable_ids([q for q, _, _ in rows]).tolist(),
                                stable_ids([d for _, d, _ in rows]).tolist()))
    assert sorted((int(e["left_ids"]), int(e["right_ids"])) for e in got) == expected_pairs
    evaluation = registry.eval_data("beir_scifact", split)
    assert len(evaluation.corpus_ids) == len(corpus) == 5183
    assert set(evaluation.query_ids) == {q for q, _, _ in rows}
    expected_qrels = {}
    for q, d, s in rows:
      expected_qrels.setdefault(q, {})[d] = s
    assert evaluation.qrels == expected_qrels
  assert len(registry.eval_data("beir_scifact", "test").query_ids) == 300
  # seqio's own sharding (ShardInfo) splits the examples between hosts without overlap.
  task = seqio.get_mixture_or_task("beir_scifact")
  shards = [[int(e["right_ids"]) for e in task.get_dataset(
      {"inputs": 8, "targets": 8}, split="test", shuffle=True, seed=4,
      shard_info=seqio.ShardInfo(index=i, num_shards=2)).as_numpy_iterator()] for i in range(2)]
  assert sorted(shards[0] + shards[1]) == sorted(
      stable_ids([d for _, d, _ in qrels_rows(data_root / "scifact" / "qrels" / "test.tsv")]))


def test_cranfield_empty_documents_are_counted_and_skipped(data_root):
  corpus = jsonl(data_root / "cranfield" / "corpus.jsonl")
  empty = {d["_id"] for d in corpus if not (d["title"].strip() or d["text"].strip())}
  assert empty == {"471", "995"}
  with pytest.raises(DataFormatError, match=r"corpus.jsonl:471: document '471' has empty"):
    readers.open_dataset(data_root / "cranfield", "beir").eval_data("test")
  rows = qrels_rows(data_root / "cranfield" / "qrels" / "test.tsv")
  evaluation = registry.eval_data("beir_cranfield", "test")  # registered with 'warn'
  assert len(evaluation.corpus_ids) == len(corpus) - len(empty) == 1398
  kept_rows = [r for r in rows if r[1] not in empty]
  assert sum(len(v) for v in evaluation.qrels.values()) == len(kept_rows)
  assert len(evaluation.query_ids) == len({q for q, _, _ in kept_rows}) == 225
  assert sorted((b.line, b.reason.split(" ")[0]) for b in evaluation.skipped) == [
      (471, "document"), (866, "document"), (995, "document")]
  assert len(examples("beir_cranfield", "test")) == sum(s > 0 for _, _, s in kept_rows)


def test_wikiqa_hard_negatives_through_the_converter(data_root, vocab):
  records = jsonl(data_root / "wikiqa" / "train_pairs.jsonl")
  # A question with several answer sentences has one record per answer: key on both ids.
  keys = zip(stable_ids([r["qid"] for r in records]).tolist(),
             stable_ids([r["positive"] for r in records]).tolist())
  by_id = dict(zip(keys, records))
  assert len(by_id) == len(records) == 1040
  lengths = {"inputs": 24, "targets": 40, "negative_targets": [3, 32]}
  ds = seqio.get_dataset("wikiqa_train", lengths, dataset_split="train", shuffle=False,
                         feature_converter=DualEncoderFeatureConverter())
  rows = list(ds.as_numpy_iterator())
  assert len(rows) == 1040
  batch = {k: np.stack([r[k] for r in rows[:64]]) for k in rows[0]}
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
      "left_encoder_input_tokens": ((64, 24), np.int32),
      "right_encoder_input_tokens": ((64, 40), np.int32),
      "right_negative_encoder_input_tokens": ((64, 3, 32), np.int32),
      "left_ids": ((64,), np.int32), "right_ids": ((64,), np.int32)}
  absent = 0
  for i in range(64):
    record = by_id[int(batch["left_ids"][i]), int(batch["right_ids"][i])]
    negatives = record["hard_negatives"][:3]
    present = batch["right_negative_encoder_input_tokens"][i].any(axis=-1)
    assert present.tolist() == [True] * len(negatives) + [False] * (3 - len(negatives))
    absent += 3 - len(negatives)
    if negatives:
      np.testing.assert_array_equal(batch["right_negative_encoder_input_tokens"][i][present],
                                    vocabularies.encode_batch(vocab, negatives, 32))
    np.testing.assert_array_equal(batch["left_encoder_input_tokens"][i],
                                  vocabularies.encode_batch(vocab, [record["question"]], 24)[0])
    np.testing.assert_array_equal(batch["right_encoder_input_tokens"][i],
                                  vocabularies.encode_batch(vocab, [record["positive"]], 40)[0])
  assert absent > 0  # the first 64 include questions with fewer than 3 negatives


def test_scifact_rationales_as_multireqa(data_root):
  for split, name in (("train", "rationale_pairs_train.jsonl"),
                      ("dev", "rationale_pairs_dev.jsonl")):
    records = jsonl(data_root / "scifact" / name)
    assert len(examples("scifact_rationales", split)) == len(records)
    evaluation = registry.eval_data("scifact_rationales", split)
    assert set(evaluation.query_ids) == {r["query_id"] for r in records}
    assert set(evaluation.corpus_texts) == {r["sentence"] for r in records}
    assert sum(len(v) for v in evaluation.qrels.values()) == len(
        {(r["query_id"], r["sentence"]) for r in records})
  assert len(jsonl(data_root / "scifact" / "rationale_pairs_train.jsonl")) == 1025


def test_msmarco_tsv_format_on_scifact_converted(data_root, tmp_path):
  corpus = jsonl(data_root / "scifact" / "corpus.jsonl")
  queries = jsonl(data_root / "scifact" / "queries.jsonl")
  rows = qrels_rows(data_root / "scifact" / "qrels" / "train.tsv")
  text = {d["_id"]: (d["title"] + " " + d["text"]).strip() for d in corpus}
  (tmp_path / "collection.tsv").write_text(
      "".join(f"{i}\t{t}\n" for i, t in text.items()), encoding="utf-8")
  (tmp_path / "queries.train.tsv").write_text(
      "".join(f"{q['_id']}\t{q['text']}\n" for q in queries), encoding="utf-8")
  (tmp_path / "qrels.train.tsv").write_bytes(
      "".join(f"{q}\t0\t{d}\t{s}\r\n" for q, d, s in rows).encode())
  doc_ids = list(text)
  negatives = [doc_ids[(doc_ids.index(d) + 1) % len(doc_ids)] for _, d, _ in rows]
  (tmp_path / "qidpidtriples.train.full.tsv").write_text(
      "".join(f"{q}\t{d}\t{n}\n" for (q, d, _), n in zip(rows, negatives)))
  dataset = readers.open_dataset(tmp_path, "msmarco")
  assert dataset.splits() == ["train", "train.full"]
  pairs = dataset.training_examples("train")
  beir = readers.open_dataset(data_root / "scifact", "beir").training_examples("train")
  assert (pairs.queries, pairs.positives) == (beir.queries, beir.positives)
  registry.register_dataset("test_msmarco_scifact", str(tmp_path), "msmarco")
  ds = seqio.get_dataset("test_msmarco_scifact", {"inputs": 16, "targets": 32,
                                                  "negative_targets": [1, 32]},
                         dataset_split="train.full", shuffle=False,
                         feature_converter=DualEncoderFeatureConverter())
  got = list(ds.as_numpy_iterator())
  assert len(got) == len(rows) == 919
  assert all(r["right_negative_encoder_input_tokens"][0].any() for r in got)
  assert [int(r["right_ids"]) for r in got] == stable_ids([d for _, d, _ in rows]).tolist()


def test_pipeline_batch_shapes_dtypes_and_tokens(data_root, vocab):
  queries = {q["_id"]: q["text"] for q in jsonl(data_root / "scifact" / "queries.jsonl")}
  query_of = dict(zip(stable_ids(list(queries)).tolist(), queries.values()))
  it = pipeline.make_batch_iterator("beir_scifact", split="train", batch_size=16,
                                    feature_lengths={"inputs": 32, "targets": 64}, seed=5)
  batch = next(it)
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
      "left_encoder_input_tokens": ((16, 32), np.int32),
      "right_encoder_input_tokens": ((16, 64), np.int32),
      "left_ids": ((16,), np.int32), "right_ids": ((16,), np.int32)}
  tokens = batch["right_encoder_input_tokens"]
  assert (tokens[:, 0] == vocab.cls_id).all()
  lengths = (tokens != 0).sum(axis=1)
  assert (tokens[np.arange(16), lengths - 1] == vocab.eos_id).all()
  assert all((row[n:] == 0).all() for row, n in zip(tokens, lengths))
  expected = vocabularies.encode_batch(vocab, [query_of[i] for i in batch["left_ids"]], 32)
  np.testing.assert_array_equal(batch["left_encoder_input_tokens"], expected)


def test_pipeline_with_t5_sentencepiece_vocabulary(data_root):
  path = str(data_root / "vocab" / "seqio_test_sentencepiece.model")
  queries = {q["_id"]: q["text"] for q in jsonl(data_root / "scifact" / "queries.jsonl")}
  query_of = dict(zip(stable_ids(list(queries)).tolist(), queries.values()))
  it = pipeline.make_batch_iterator(
      "beir_scifact", split="test", batch_size=8, feature_lengths={"inputs": 20, "targets": 20},
      seed=0, vocabulary=vocabularies.sentencepiece_vocabulary(path))
  batch = next(it)
  processor = sentencepiece.SentencePieceProcessor(model_file=path)
  for row, query_id in zip(batch["left_encoder_input_tokens"], batch["left_ids"]):
    pieces = processor.encode(query_of[int(query_id)])[:19] + [1]
    assert row.tolist() == pieces + [0] * (20 - len(pieces))


def test_teacher_scores_follow_negatives(data_root, tmp_path):
  records = jsonl(data_root / "wikiqa" / "train_pairs.jsonl")[:40]
  lines = []
  for r in records:
    candidates = [r["positive"]] + r["hard_negatives"]
    lines.append(json.dumps({
        "query": r["question"], "query_id": r["qid"], "positive": r["positive"],
        "negatives": r["hard_negatives"],
        "teacher_scores": {"len": [float(len(c)) for c in candidates],
                           "words": [float(len(c.split())) for c in candidates]}}))
  (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
  registry.register_dataset("test_teacher_wikiqa", str(tmp_path), "jsonl")
  it = pipeline.make_batch_iterator(
      "test_teacher_wikiqa", split="train", batch_size=40, seed=1,
      feature_lengths={"inputs": 16, "targets": 16, "negative_targets": [2, 16]})
  batch = next(it)
  assert batch["teacher_scores"].shape == (40, 2, 3) and batch["teacher_scores"].dtype == np.float32
  assert it.feature_shapes() == {k: (v.shape, v.dtype) for k, v in batch.items()}
  keys = zip(stable_ids([r["qid"] for r in records]).tolist(),
             stable_ids([r["positive"] for r in records]).tolist())
  by_id = dict(zip(keys, records))
  for scores, left, right in zip(batch["teacher_scores"], batch["left_ids"], batch["right_ids"]):
    record = by_id[int(left), int(right)]
    candidates = ([record["positive"]] + record["hard_negatives"])[:3]
    expected = np.zeros((2, 3), np.float32)  # teachers sorted by name: "len", "words"
    expected[0, :len(candidates)] = [len(c) for c in candidates]
    expected[1, :len(candidates)] = [len(c.split()) for c in candidates]
    np.testing.assert_array_equal(scores, expected)


def test_converter_refuses_packing_and_bad_lengths(data_root):
  with pytest.raises(ValueError, match="packing is not supported"):
    DualEncoderFeatureConverter(pack=True)
  ds = seqio.get_mixture_or_task("beir_scifact").get_dataset(
      {"inputs": 8, "targets": 8}, split="test", shuffle=False)
  with pytest.raises(ValueError, match=r"negative_targets'\] = 8: must be \[N"):
    DualEncoderFeatureConverter()(ds, {"inputs": 8, "targets": 8, "negative_targets": 8})
  with pytest.raises(ValueError, match="missing \\['targets'\\]"):
    DualEncoderFeatureConverter()(ds, {"inputs": 8})
  with pytest.raises(ValueError, match="use_teacher_scores=True"):
    DualEncoderFeatureConverter(use_teacher_scores=True)(ds, {"inputs": 8, "targets": 8})


def test_tfds_beir_task_through_seqio_tfds_source():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
    rows = list(seqio.TfdsDataSource(tfds_name="beir/scifact:1.0.0").get_dataset(
        split="test", shuffle=False).as_numpy_iterator())
    got = examples("tfds_beir_scifact", "test")
  positive = [r for r in rows if r["score"] > 0]
  assert len(rows) == 12 and len(got) == len(positive)
  assert [int(e["left_ids"]) for e in got] == stable_ids(
      [r["query_id"].decode() for r in positive]).tolist()
