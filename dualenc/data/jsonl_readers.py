"""The JSONL formats: 'multireqa' (question -> answer sentence) and 'jsonl' (generic training
records with hard negatives and teacher scores). See readers.py for the format summary.

Both read one file per split (`splits`: split -> file relative to the directory; default
every *.jsonl, named by its stem) and accept `fields`: canonical name -> name in the file.
Where a record has no ids, the text is its own id.
"""

from __future__ import annotations

import functools
import math
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np

from dualenc.data.records import (EvalData, RecordErrors, RetrievalDataset, TrainingExamples,
                                  get_field, join_title, read_jsonl)

Qrels = Dict[str, Dict[str, int]]


class _JsonlSplitsDataset(RetrievalDataset):
  """Shared by the JSONL formats: one file per split, renamable fields."""

  FIELDS: Tuple[str, ...] = ()

  def __init__(self, directory, on_bad_record: str = "error",
               fields: Optional[Mapping[str, str]] = None,
               splits: Optional[Mapping[str, str]] = None):
    super().__init__(directory, on_bad_record)
    unknown = set(fields or {}) - set(self.FIELDS)
    if unknown:
      raise ValueError(f"fields: unknown canonical field(s) {sorted(unknown)}; "
                       f"known: {list(self.FIELDS)}")
    self.fields = {name: (fields or {}).get(name, name) for name in self.FIELDS}
    self._split_files = ({k: self.directory / v for k, v in splits.items()} if splits else
                         {p.stem: p for p in sorted(self.directory.glob("*.jsonl"))})

  def splits(self) -> List[str]:
    return sorted(self._split_files)

  def _records(self, split: str, errors: RecordErrors):
    self._check_split(split)
    path = self._split_files[split]
    for line, record in read_jsonl(path, errors):
      yield path, line, record

  def _get(self, record, name, path, line, errors, **kwargs):
    return get_field(record, self.fields[name], path, line, errors, **kwargs)


class MultiReQADataset(_JsonlSplitsDataset):
  """MultiReQA-style (question, answer sentence, context) records; see the module docstring.

  include_context=True appends the context to the answer sentence on the document side.
  """

  FIELDS = ("question", "answer", "context", "question_id", "answer_id")

  def __init__(self, directory, on_bad_record: str = "error", fields=None, splits=None,
               include_context: bool = False):
    super().__init__(directory, on_bad_record, fields, splits)
    self.include_context = include_context

  @functools.lru_cache(maxsize=None)
  def training_examples(self, split: str) -> TrainingExamples:
    errors = RecordErrors(self.on_bad_record)
    out = TrainingExamples([], [], [], [])
    questions, answers = {}, {}  # id -> (text, path, line), to catch conflicting ids
    for path, line, record in self._records(split, errors):
      question = self._get(record, "question", path, line, errors)
      answer = self._get(record, "answer", path, line, errors)
      context = self._get(record, "context", path, line, errors, kind="string",
                          required=False, default="")
      qid = self._get(record, "question_id", path, line, errors, kind="id", required=False)
      aid = self._get(record, "answer_id", path, line, errors, kind="id", required=False)
      if question is None or answer is None or context is None:
        continue
      answer_text = join_title(answer, context) if self.include_context else answer
      qid, aid = qid or question, aid or answer_text
      if not (_same_text(questions, qid, question, path, line, errors, "question") and
              _same_text(answers, aid, answer_text, path, line, errors, "answer")):
        continue
      out.queries.append(question)
      out.query_ids.append(qid)
      out.positives.append(answer_text)
      out.positive_ids.append(aid)
    errors.log_summary(f"{self.directory} split {split}")
    out.skipped = errors.skipped
    return out

  def eval_data(self, split: str) -> EvalData:
    return _eval_from_examples(self.training_examples(split))


def _same_text(seen: dict, item_id: str, text: str, path, line, errors, what) -> bool:
  previous = seen.setdefault(item_id, (text, line))
  if previous[0] != text:
    errors.report(path, line, f"{what} id {item_id!r} has a different text than on line "
                  f"{previous[1]}")
    return False
  return True


def _eval_from_examples(examples: TrainingExamples) -> EvalData:
  corpus = dict(zip(examples.positive_ids, examples.positives))
  if examples.negatives is not None:
    for negatives in examples.negatives:
      corpus.update((text, text) for text in negatives if text not in corpus)
  queries = dict(zip(examples.query_ids, examples.queries))
  qrels: Qrels = {}
  for qid, did in zip(examples.query_ids, examples.positive_ids):
    qrels.setdefault(qid, {})[did] = 1
  return EvalData(corpus_ids=list(corpus), corpus_texts=list(corpus.values()),
                  query_ids=list(queries), query_texts=list(queries.values()), qrels=qrels,
                  skipped=list(examples.skipped))


class JsonlDataset(_JsonlSplitsDataset):
  """Generic training records; see the module docstring. eval_data: positives as qrels,
  positives and negatives as the corpus."""

  FIELDS = ("query", "positive", "negatives", "query_id", "positive_id", "teacher_scores")

  @functools.lru_cache(maxsize=None)
  def training_examples(self, split: str) -> TrainingExamples:
    errors = RecordErrors(self.on_bad_record)
    rows = []
    teacher_names: Optional[Tuple[str, ...]] = None
    has_negatives = False
    for path, line, record in self._records(split, errors):
      query = self._get(record, "query", path, line, errors)
      positive = self._get(record, "positive", path, line, errors)
      negatives = self._get(record, "negatives", path, line, errors, kind="texts",
                            required=False, default=[])
      qid = self._get(record, "query_id", path, line, errors, kind="id", required=False)
      pid = self._get(record, "positive_id", path, line, errors, kind="id", required=False)
      scores = self._get(record, "teacher_scores", path, line, errors, kind="object",
                         required=False)
      if query is None or positive is None or negatives is None:
        continue
      has_negatives |= self.fields["negatives"] in record
      if teacher_names is None and scores is not None:
        teacher_names = tuple(sorted(scores))
      matrix = _teacher_matrix(scores, teacher_names, len(negatives), path, line, errors)
      if matrix is False:
        continue
      rows.append((query, positive, negatives, qid or query, pid or positive, matrix, line))
    if teacher_names is not None:
      for row in rows:
        if row[5] is None:  # records before the first one with scores were not checked
          errors.report(self._split_files[split], row[6], "missing field 'teacher_scores' "
                        "(other records have it)")
      rows = [row for row in rows if row[5] is not None]
    errors.log_summary(f"{self.directory} split {split}")
    return TrainingExamples(
        queries=[r[0] for r in rows], positives=[r[1] for r in rows],
        query_ids=[r[3] for r in rows], positive_ids=[r[4] for r in rows],
        negatives=[r[2] for r in rows] if has_negatives else None,
        teacher_names=teacher_names or (),
        teacher_scores=[r[5] for r in rows] if teacher_names is not None else None,
        skipped=errors.skipped)

  def eval_data(self, split: str) -> EvalData:
    return _eval_from_examples(self.training_examples(split))


def _teacher_matrix(scores, names, num_negatives, path, line, errors):
  """teacher_scores dict -> float32 [teachers, 1 + negatives]; None if absent; False if bad."""
  if scores is None:
    if names is not None:
      errors.report(path, line, "missing field 'teacher_scores' (earlier records have it)")
      return False
    return None
  if tuple(sorted(scores)) != names:
    errors.report(path, line, f"teacher_scores has teachers {sorted(scores)}, earlier "
                  f"records have {list(names)}")
    return False
  rows = []
  for name in names:
    values = scores[name]
    if (not isinstance(values, list) or len(values) != 1 + num_negatives or
        not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                for v in values)):
      errors.report(path, line, f"teacher_scores[{name!r}] must be {1 + num_negatives} finite "
                    "numbers (positive, then each negative)")
      return False
    rows.append(values)
  return np.asarray(rows, np.float32).reshape(len(names), 1 + num_negatives)
