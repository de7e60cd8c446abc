"""Bad input: each case raises an error naming the file and line, or, where the user chose
on_bad_record='warn', is skipped and counted."""

import json
import logging

import gin
import pytest

from dualenc.data import pipeline, readers, registry
from dualenc.data.records import DataFormatError

GOOD_CORPUS = [{"_id": "d1", "title": "Alpha", "text": "first document"},
               {"_id": "d2", "title": "", "text": "second document"},
               {"_id": "d3", "title": "Gamma only", "text": ""}]
GOOD_QUERIES = [{"_id": "q1", "text": "which is first"}, {"_id": "q2", "text": "second?"}]
GOOD_QRELS = ["q1\td1\t1", "q2\td2\t1", "q2\td3\t1"]


def write_beir(directory, corpus=None, queries=None, qrels=None):
  (directory / "qrels").mkdir(parents=True, exist_ok=True)
  lines = lambda items: "".join((i if isinstance(i, str) else json.dumps(i)) + "\n"
                                for i in items)
  (directory / "corpus.jsonl").write_text(lines(corpus or GOOD_CORPUS))
  (directory / "queries.jsonl").write_text(lines(queries or GOOD_QUERIES))
  (directory / "qrels" / "train.tsv").write_text(
      "query-id\tcorpus-id\tscore\n" + "".join(r + "\n" for r in (qrels or GOOD_QRELS)))
  return directory


def train_pairs(directory, **options):
  return readers.open_dataset(directory, "beir", **options).training_examples("train")


def test_good_files_read_cleanly(tmp_path):
  pairs = train_pairs(write_beir(tmp_path, qrels=GOOD_QRELS + ["q1\td2\t0"]))
  assert pairs.positives == ["Alpha first document", "second document", "Gamma only"]
  assert pairs.skipped == []
  # A grade-0 judgement is no training pair but stays in the evaluation qrels.
  qrels = readers.open_dataset(tmp_path, "beir").eval_data("train").qrels
  assert qrels == {"q1": {"d1": 1, "d2": 0}, "q2": {"d2": 1, "d3": 1}}


def test_malformed_json_line(tmp_path):
  corpus = GOOD_CORPUS[:1] + ['{"_id": "d2", "text": "cut short'] + GOOD_CORPUS[2:]
  write_beir(tmp_path, corpus=corpus)
  with pytest.raises(DataFormatError, match=r"corpus.jsonl:2: malformed JSON: .*\(column \d+\)"):
    train_pairs(tmp_path)
  # Skipping is the user's explicit choice: the record and the qrels row naming it are
  # skipped and counted.
  pairs = train_pairs(tmp_path, on_bad_record="warn")
  assert len(pairs) == 2
  assert [(b.path.split("/")[-1], b.line) for b in pairs.skipped] == [
      ("corpus.jsonl", 2), ("train.tsv", 3)]


def test_missing_field(tmp_path):
  write_beir(tmp_path, queries=[{"_id": "q1"}, GOOD_QUERIES[1]])
  with pytest.raises(DataFormatError, match=r"queries.jsonl:1: missing field 'text'"):
    train_pairs(tmp_path)
  (tmp_path / "other").mkdir()
  (tmp_path / "other" / "train.jsonl").write_text(
      json.dumps({"query": "q", "positive": "p"}) + "\n" + json.dumps({"query": "q2"}) + "\n")
  with pytest.raises(DataFormatError, match=r"train.jsonl:2: missing field 'positive'"):
    readers.open_dataset(tmp_path / "other", "jsonl").training_examples("train")


def test_empty_text(tmp_path):
  (tmp_path / "train.jsonl").write_text(
      json.dumps({"query": "q", "positive": "p"}) + "\n" +
      json.dumps({"query": "q2", "positive": "  "}) + "\n" +
      json.dumps({"query": "q3", "positive": "p3", "negatives": ["n", ""]}) + "\n")
  dataset = readers.open_dataset(tmp_path, "jsonl")
  with pytest.raises(DataFormatError, match=r"train.jsonl:2: field 'positive' is empty"):
    dataset.training_examples("train")
  warned = readers.open_dataset(tmp_path, "jsonl", on_bad_record="warn")
  examples = warned.training_examples("train")
  assert len(examples) == 1 and [b.line for b in examples.skipped] == [2, 3]
  assert "contains an empty text" in examples.skipped[1].reason
  beir = write_beir(tmp_path / "beir",
                    corpus=GOOD_CORPUS + [{"_id": "d4", "title": " ", "text": ""}])
  with pytest.raises(DataFormatError, match=r"corpus.jsonl:4: document 'd4' has empty title"):
    train_pairs(beir)


def test_qrels_row_naming_an_unknown_document_or_query(tmp_path):
  write_beir(tmp_path, qrels=GOOD_QRELS + ["q1\td9\t1"])
  with pytest.raises(DataFormatError,
                     match=r"qrels/train.tsv:5: document 'd9' is not in the corpus"):
    train_pairs(tmp_path)
  write_beir(tmp_path, qrels=["q7\td1\t1"] + GOOD_QRELS)
  with pytest.raises(DataFormatError, match=r"train.tsv:2: query 'q7' is not in the queries"):
    train_pairs(tmp_path)
  write_beir(tmp_path, qrels=GOOD_QRELS + ["q1\td2\tone"])
  with pytest.raises(DataFormatError, match=r"train.tsv:5: score 'one' is not an integer"):
    train_pairs(tmp_path)


def test_unknown_format_name(tmp_path):
  with pytest.raises(ValueError, match=r"unknown dataset format 'csv'; known formats: "
                                       r"\['beir', 'jsonl', 'msmarco', 'multireqa'\]"):
    readers.open_dataset(tmp_path, "csv")
  with pytest.raises(ValueError, match=r"register_dataset.format='csv': unknown dataset format"):
    registry.register_dataset("bad_format", str(tmp_path), "csv")
  with pytest.raises(ValueError, match=r"format 'beir' takes no option\(s\) \['fields'\]"):
    registry.register_dataset("bad_option", str(tmp_path), "beir", fields={"query": "q"})


def test_more_malformed_records(tmp_path):
  write_beir(tmp_path, corpus=GOOD_CORPUS + [GOOD_CORPUS[0]])
  with pytest.raises(DataFormatError, match=r"corpus.jsonl:4: duplicate document id 'd1'"):
    train_pairs(tmp_path)
  write_beir(tmp_path)
  (tmp_path / "queries.jsonl").write_bytes(b'{"_id": "q1", "text": "caf\xe9"}\n')
  with pytest.raises(DataFormatError, match=r"queries.jsonl:1: not UTF-8"):
    train_pairs(tmp_path)
  write_beir(tmp_path, qrels=["q1 d1"])
  with pytest.raises(DataFormatError, match=r"train.tsv:2: expected 3 fields"):
    train_pairs(tmp_path)
  (tmp_path / "j").mkdir()
  (tmp_path / "j" / "train.jsonl").write_text(json.dumps(
      {"query": "q", "positive": "p", "negatives": ["n"], "teacher_scores": {"t": [1.0]}}))
  with pytest.raises(DataFormatError, match=r"train.jsonl:1: teacher_scores\['t'\] must be 2"):
    readers.open_dataset(tmp_path / "j", "jsonl").training_examples("train")
  (tmp_path / "m").mkdir()
  (tmp_path / "m" / "collection.tsv").write_text("p1\tpassage one\np2\tpassage two\n")
  (tmp_path / "m" / "queries.train.tsv").write_text("q1\tquery one\n")
  (tmp_path / "m" / "qidpidtriples.train.tsv").write_text("q1\tp1\tp2\nq1\tp1\tp3\n")
  with pytest.raises(DataFormatError, match=r"qidpidtriples.train.tsv:2: passage 'p3' not"):
    readers.open_dataset(tmp_path / "m", "msmarco").training_examples("train")


def test_warnings_are_logged_with_the_count(tmp_path, caplog):
  write_beir(tmp_path, qrels=GOOD_QRELS + ["q1\td8\t1", "q1\td9\t1"])
  with caplog.at_level(logging.WARNING):
    pairs = train_pairs(tmp_path, on_bad_record="warn")
  assert len(pairs) == 3 and len(pairs.skipped) == 2
  assert "skipped 2 bad record(s)" in caplog.text and "train.tsv:5" in caplog.text
  with pytest.raises(ValueError, match="on_bad_record='ignore'"):
    train_pairs(tmp_path, on_bad_record="ignore")


def test_errors_surface_through_a_registered_task(tmp_path):
  write_beir(tmp_path, qrels=GOOD_QRELS + ["q1\td9\t1"])
  with gin.unlock_config():
    gin.parse_config([
        "import dualenc.data.registry",
        "dualenc.data.registry.register_dataset.name = 'bad_qrels_task'",
        f"dualenc.data.registry.register_dataset.directory = '{tmp_path}'",
        "dualenc.data.registry.register_dataset.format = 'beir'"])
  try:
    name = registry.register_dataset()
  finally:
    gin.clear_config()
  with pytest.raises(DataFormatError, match=r"qrels/train.tsv:5: document 'd9'"):
    pipeline.make_batch_iterator(name, split="train", batch_size=2,
                                 feature_lengths={"inputs": 8, "targets": 8})
