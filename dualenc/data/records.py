"""In-memory records shared by every reader, and the bad-record policy.

`RetrievalDataset` is the interface every format reader implements (see readers.py).
`TrainingExamples` is columnar: row i is (queries[i] -> positives[i]) with optional hard
negatives and teacher scores. `EvalData` is a BEIR-style retrieval problem: a corpus, the
queries that have judgements, and qrels {query id: {doc id: int grade}}.

Bad input never passes silently. With `on_bad_record="error"` (the default) the first bad
record raises `DataFormatError("<file>:<line>: <reason>")`; with `on_bad_record="warn"` the
record (and anything that depends on it, e.g. the qrels rows naming a skipped document) is
skipped, counted in `.skipped`, and one warning per file is logged.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from dualenc import fs

BAD_RECORD_POLICIES = ("error", "warn")


class DataFormatError(ValueError):
  """A data file is malformed; the message starts with '<file>:<line>:'."""


@dataclasses.dataclass(frozen=True)
class BadRecord:
  path: str
  line: int
  reason: str

  def __str__(self) -> str:
    return f"{self.path}:{self.line}: {self.reason}"


class RecordErrors:
  """Raises at the first bad record ('error') or skips and counts them ('warn')."""

  def __init__(self, on_bad_record: str = "error"):
    if on_bad_record not in BAD_RECORD_POLICIES:
      raise ValueError(f"on_bad_record={on_bad_record!r}: use one of {BAD_RECORD_POLICIES}")
    self.policy = on_bad_record
    self.skipped: List[BadRecord] = []

  def report(self, path, line: int, reason: str) -> None:
    bad = BadRecord(str(path), line, reason)
    if self.policy == "error":
      raise DataFormatError(f"{bad} (pass on_bad_record='warn' to skip and count such records)")
    self.skipped.append(bad)

  def log_summary(self, what: str) -> None:
    if self.skipped:
      logging.warning("%s: skipped %d bad record(s) (on_bad_record='warn'); first: %s", what,
                      len(self.skipped), self.skipped[0])


@dataclasses.dataclass
class TrainingExamples:
  """Columnar (query -> positive [, negatives] [, teacher scores]) training rows.

  Ids are strings (the dataset's own ids, or the text itself where the format has none);
  `sources.stable_ids` hashes them into the int32 `left_ids` / `right_ids` features.
  teacher_scores[i] is float32 [len(teacher_names), 1 + len(negatives[i])]: the scores of
  the positive then each negative, one row per teacher (names sorted).
  """
  queries: List[str]
  positives: List[str]
  query_ids: List[str]
  positive_ids: List[str]
  negatives: Optional[List[List[str]]] = None
  teacher_names: Tuple[str, ...] = ()
  teacher_scores: Optional[List[np.ndarray]] = None
  skipped: List[BadRecord] = dataclasses.field(default_factory=list)

  def __len__(self) -> int:
    return len(self.queries)


@dataclasses.dataclass
class EvalData:
  """A retrieval evaluation problem (BEIR conventions).

  corpus_texts[i] is `(title + " " + text).strip()`, the same string training uses for a
  positive. Only queries with at least one qrels row are listed. qrels grades are ints; a
  grade <= 0 means judged non-relevant (pytrec_eval semantics).
  """
  corpus_ids: List[str]
  corpus_texts: List[str]
  query_ids: List[str]
  query_texts: List[str]
  qrels: Dict[str, Dict[str, int]]
  skipped: List[BadRecord] = dataclasses.field(default_factory=list)


def join_title(title: str, text: str) -> str:
  return f"{title} {text}".strip()


def read_jsonl(path, errors: RecordErrors) -> Iterator[Tuple[int, dict]]:
  """Yields (1-based line number, JSON object); blank lines are ignored."""
  path = fs.path(path)
  if not path.is_file():
    raise FileNotFoundError(f"data file not found: {path}")
  with path.open("rb") as f:
    for line_number, raw in enumerate(f, start=1):
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        errors.report(path, line_number, f"not UTF-8 ({e.reason} at byte {e.start})")
        continue
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        errors.report(path, line_number, f"malformed JSON: {e.msg} (column {e.colno})")
        continue
      if not isinstance(record, dict):
        errors.report(path, line_number, f"expected a JSON object, got {type(record).__name__}")
        continue
      yield line_number, record


def read_tsv(path, errors: RecordErrors, min_fields: int, max_splits: int = -1,
             header_prefix: Optional[str] = None) -> Iterator[Tuple[int, List[str]]]:
  """Yields (1-based line number, fields) of a tab-separated file; CRLF endings are fine.

  A first line starting with `header_prefix` is skipped; rows with fewer than `min_fields`
  fields are bad records.
  """
  path = fs.path(path)
  if not path.is_file():
    raise FileNotFoundError(f"data file not found: {path}")
  with path.open("rb") as f:
    for line_number, raw in enumerate(f, start=1):
      try:
        line = raw.decode("utf-8").rstrip("\r\n")
      except UnicodeDecodeError as e:
        errors.report(path, line_number, f"not UTF-8 ({e.reason} at byte {e.start})")
        continue
      if line_number == 1 and header_prefix and line.startswith(header_prefix):
        continue
      if not line.strip():
        continue
      fields = line.split("\t", max_splits)
      if len(fields) < min_fields:
        errors.report(path, line_number, f"expected {min_fields} tab-separated fields, "
                      f"got {len(fields)}")
        continue
      yield line_number, fields


def get_field(record: dict, name: str, path, line: int, errors: RecordErrors, *,
              kind: str = "text", required: bool = True, default=None):
  """Typed field access with errors naming file, line and field.

  kind: 'text' (non-empty string), 'string' (string, may be empty), 'id' (non-empty string
  or integer, returned as str), 'texts' (list of strings), 'object' (dict).
  Returns None after reporting a bad field (only reachable under on_bad_record='warn').
  """
  if name not in record:
    if required:
      errors.report(path, line, f"missing field {name!r}")
      return None
    return default
  value = record[name]
  if kind == "id" and isinstance(value, int) and not isinstance(value, bool):
    value = str(value)
  if kind in ("text", "string", "id"):
    if not isinstance(value, str):
      errors.report(path, line, f"field {name!r} must be a string, got {type(value).__name__}")
      return None
    if kind != "string" and not value.strip():
      errors.report(path, line, f"field {name!r} is empty")
      return None
    return value
  if kind == "texts":
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
      errors.report(path, line, f"field {name!r} must be a list of strings")
      return None
    if any(not v.strip() for v in value):
      errors.report(path, line, f"field {name!r} contains an empty text")
      return None
    return value
  if kind == "object":
    if not isinstance(value, dict):
      errors.report(path, line, f"field {name!r} must be a JSON object")
      return None
    return value
  raise ValueError(f"unknown field kind {kind!r}")


class RetrievalDataset:
  """Base: a directory of one format, parsed lazily, errors per `on_bad_record`."""

  def __init__(self, directory, on_bad_record: str = "error"):
    self.directory = fs.path(directory)
    RecordErrors(on_bad_record)  # validates the policy name now, not at first read
    self.on_bad_record = on_bad_record
    if not self.directory.is_dir():
      raise FileNotFoundError(f"dataset directory not found: {self.directory}")

  def splits(self) -> List[str]:
    raise NotImplementedError  # abstract: every format's reader implements it

  def training_examples(self, split: str) -> TrainingExamples:
    raise NotImplementedError  # abstract: every format's reader implements it

  def eval_data(self, split: str) -> EvalData:
    raise NotImplementedError  # abstract: every format's reader implements it

  def _check_split(self, split: str) -> None:
    if split not in self.splits():
      raise ValueError(f"{self.directory}: no split {split!r}; splits: {self.splits()}")
