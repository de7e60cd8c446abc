"""Readers for the retrieval data formats people have, each with precise errors.

Every reader is a `RetrievalDataset` over one directory, parsed lazily on first use:
  splits()                   the split names the directory holds (no parsing)
  training_examples(split)   records.TrainingExamples
  eval_data(split)           records.EvalData (corpus, judged queries, qrels)

Formats (`open_dataset(directory, format, **options)`):
  'beir'       corpus.jsonl (_id, title, text), queries.jsonl (_id, text),
               qrels/<split>.tsv (query-id, corpus-id, score; header line; CRLF fine).
               Training pairs: one per qrels row with score > 0, positive text
               (title + " " + text).strip(). A document needs a title or a text.
  'msmarco'    collection.tsv (pid, passage), queries.<split>.tsv (qid, text),
               qrels.<split>.tsv (TREC "qid 0 pid grade" or "qid pid grade"), and optionally
               triples.<split>.tsv (query, positive, negative texts) or
               qidpidtriples.<split>.tsv (qid, pid, negative pid): one example per triple,
               else one pair per positive qrels row.
  'multireqa'  <split>.jsonl, one record per (question, answer sentence [, context,
               question_id, answer_id]); eval corpus = the split's distinct answer sentences.
  'jsonl'      <split>.jsonl of {"query", "positive", "negatives": [...],
               "teacher_scores": {teacher: [score of positive, scores of negatives...]},
               optional "query_id", "positive_id", "negative_ids"}.
The JSONL formats take `fields` (canonical name -> name in the file) and `splits`
(split -> file relative to the directory; default: every *.jsonl, named by its stem).
Where a format has no ids, the text is its own id.
"""

from __future__ import annotations

import functools
import math
import pathlib
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np

from dualenc.data.records import (EvalData, RecordErrors, TrainingExamples, get_field,
                                  join_title, read_jsonl, read_tsv)

Qrels = Dict[str, Dict[str, int]]


class RetrievalDataset:
  """Base: a directory of one format, parsed lazily, errors per `on_bad_record`."""

  def __init__(self, directory, on_bad_record: str = "error"):
    self.directory = pathlib.Path(directory).expanduser()
    RecordErrors(on_bad_record)  # validates the policy name now, not at first read
    self.on_bad_record = on_bad_record
    if not self.directory.is_dir():
      raise FileNotFoundError(f"dataset directory not found: {self.directory}")

  def splits(self) -> List[str]:
    raise NotImplementedError

  def training_examples(self, split: str) -> TrainingExamples:
    raise NotImplementedError

  def eval_data(self, split: str) -> EvalData:
    raise NotImplementedError

  def _check_split(self, split: str) -> None:
    if split not in self.splits():
      raise ValueError(f"{self.directory}: no split {split!r}; splits: {self.splits()}")


def _read_qrels(path, errors: RecordErrors, query_ids, doc_ids, trec: bool) -> Qrels:
  """qrels rows in file order; unknown query/doc ids and bad grades are bad records."""
  qrels: Qrels = {}
  for line, fields in read_tsv(path, errors, min_fields=1, header_prefix="query-id"):
    fields = fields[0].split() if trec and len(fields) == 1 else fields
    if trec and len(fields) == 4:
      fields = [fields[0], fields[2], fields[3]]
    if len(fields) != 3:
      errors.report(path, line, f"expected 3 fields (query-id, corpus-id, score), got "
                    f"{len(fields)}")
      continue
    qid, did, grade = (f.strip() for f in fields)
    try:
      score = int(grade)
    except ValueError:
      errors.report(path, line, f"score {grade!r} is not an integer")
      continue
    if qid not in query_ids:
      errors.report(path, line, f"query {qid!r} is not in the queries file")
    elif did not in doc_ids:
      errors.report(path, line, f"document {did!r} is not in the corpus")
    elif did in qrels.get(qid, {}):
      errors.report(path, line, f"duplicate judgement of ({qid!r}, {did!r})")
    else:
      qrels.setdefault(qid, {})[did] = score
  return qrels


def _pairs_from_qrels(qrels: Qrels, queries: Mapping[str, str], docs: Mapping[str, str],
                      skipped) -> TrainingExamples:
  rows = [(q, d) for q, judged in qrels.items() for d, s in judged.items() if s > 0]
  return TrainingExamples(queries=[queries[q] for q, _ in rows],
                          positives=[docs[d] for _, d in rows],
                          query_ids=[q for q, _ in rows], positive_ids=[d for _, d in rows],
                          skipped=list(skipped))


def _eval_from_qrels(qrels: Qrels, queries: Mapping[str, str], docs: Mapping[str, str],
                     skipped) -> EvalData:
  judged = [q for q in queries if q in qrels]
  return EvalData(corpus_ids=list(docs), corpus_texts=list(docs.values()), query_ids=judged,
                  query_texts=[queries[q] for q in judged], qrels=qrels, skipped=list(skipped))


class BeirDataset(RetrievalDataset):
  """BEIR layout; see the module docstring."""

  def splits(self) -> List[str]:
    return sorted(p.stem for p in (self.directory / "qrels").glob("*.tsv"))

  @functools.cached_property
  def _collection(self) -> Tuple[Dict[str, str], Dict[str, str], list]:
    errors = RecordErrors(self.on_bad_record)
    docs: Dict[str, str] = {}
    path = self.directory / "corpus.jsonl"
    for line, record in read_jsonl(path, errors):
      doc_id = get_field(record, "_id", path, line, errors, kind="id")
      title = get_field(record, "title", path, line, errors, kind="string", required=False,
                        default="")
      text = get_field(record, "text", path, line, errors, kind="string")
      if doc_id is None or title is None or text is None:
        continue
      if doc_id in docs:
        errors.report(path, line, f"duplicate document id {doc_id!r}")
      elif not (title.strip() or text.strip()):
        errors.report(path, line, f"document {doc_id!r} has empty title and text")
      else:
        docs[doc_id] = join_title(title, text)
    queries = _read_id_text_jsonl(self.directory / "queries.jsonl", errors, "query")
    errors.log_summary(str(self.directory))
    return docs, queries, errors.skipped

  @functools.lru_cache(maxsize=None)
  def _qrels(self, split: str) -> Tuple[Qrels, list]:
    self._check_split(split)
    docs, queries, skipped = self._collection
    errors = RecordErrors(self.on_bad_record)
    qrels = _read_qrels(self.directory / "qrels" / f"{split}.tsv", errors, queries, docs,
                        trec=False)
    errors.log_summary(f"{self.directory} qrels/{split}.tsv")
    return qrels, skipped + errors.skipped

  def training_examples(self, split: str) -> TrainingExamples:
    qrels, skipped = self._qrels(split)
    docs, queries, _ = self._collection
    return _pairs_from_qrels(qrels, queries, docs, skipped)

  def eval_data(self, split: str) -> EvalData:
    qrels, skipped = self._qrels(split)
    docs, queries, _ = self._collection
    return _eval_from_qrels(qrels, queries, docs, skipped)


def _read_id_text_jsonl(path, errors: RecordErrors, what: str) -> Dict[str, str]:
  out: Dict[str, str] = {}
  for line, record in read_jsonl(path, errors):
    item_id = get_field(record, "_id", path, line, errors, kind="id")
    text = get_field(record, "text", path, line, errors, kind="text")
    if item_id is None or text is None:
      continue
    if item_id in out:
      errors.report(path, line, f"duplicate {what} id {item_id!r}")
    else:
      out[item_id] = text
  return out


def _read_id_text_tsv(path, errors: RecordErrors, what: str) -> Dict[str, str]:
  out: Dict[str, str] = {}
  for line, (item_id, text) in read_tsv(path, errors, min_fields=2, max_splits=1):
    if not text.strip():
      errors.report(path, line, f"{what} {item_id!r} has empty text")
    elif item_id in out:
      errors.report(path, line, f"duplicate {what} id {item_id!r}")
    else:
      out[item_id] = text
  return out


class MsMarcoDataset(RetrievalDataset):
  """MS MARCO passage TSVs; see the module docstring."""

  def splits(self) -> List[str]:
    names = set()
    for pattern, prefix in (("qrels.*.tsv", "qrels."), ("triples.*.tsv", "triples."),
                            ("qidpidtriples.*.tsv", "qidpidtriples.")):
      names.update(p.name[len(prefix):-len(".tsv")] for p in self.directory.glob(pattern))
    return sorted(names)

  @functools.cached_property
  def _passages(self) -> Tuple[Dict[str, str], list]:
    errors = RecordErrors(self.on_bad_record)
    docs = _read_id_text_tsv(self.directory / "collection.tsv", errors, "passage")
    errors.log_summary(str(self.directory / "collection.tsv"))
    return docs, errors.skipped

  @functools.lru_cache(maxsize=None)
  def _split(self, split: str) -> Tuple[Dict[str, str], Qrels, list]:
    self._check_split(split)
    docs, skipped = self._passages
    errors = RecordErrors(self.on_bad_record)
    queries_path = self.directory / f"queries.{split}.tsv"
    queries = _read_id_text_tsv(queries_path, errors, "query") if queries_path.exists() else {}
    qrels_path = self.directory / f"qrels.{split}.tsv"
    qrels = (_read_qrels(qrels_path, errors, queries, docs, trec=True)
             if qrels_path.exists() else {})
    errors.log_summary(f"{self.directory} split {split}")
    return queries, qrels, skipped + errors.skipped

  def training_examples(self, split: str) -> TrainingExamples:
    queries, qrels, skipped = self._split(split)
    docs, _ = self._passages
    text_triples = self.directory / f"triples.{split}.tsv"
    id_triples = self.directory / f"qidpidtriples.{split}.tsv"
    if not (text_triples.exists() or id_triples.exists()):
      return _pairs_from_qrels(qrels, queries, docs, skipped)
    errors = RecordErrors(self.on_bad_record)
    rows = []
    if text_triples.exists():
      for line, fields in read_tsv(text_triples, errors, min_fields=3):
        if len(fields) != 3 or not all(f.strip() for f in fields):
          errors.report(text_triples, line, "expected 3 non-empty fields: query, positive, "
                        "negative")
          continue
        rows.append((fields[0], fields[0], fields[1], fields[1], fields[2]))
    else:
      for line, fields in read_tsv(id_triples, errors, min_fields=3):
        qid, pid, nid = (f.strip() for f in fields[:3])
        unknown = ([f"query {qid!r}"] if qid not in queries else []) + [
            f"passage {i!r}" for i in (pid, nid) if i not in docs]
        if unknown or len(fields) != 3:
          errors.report(id_triples, line, f"{', '.join(unknown)} not found" if unknown
                        else f"expected 3 fields (qid, pid, negative pid), got {len(fields)}")
          continue
        rows.append((queries[qid], qid, docs[pid], pid, docs[nid]))
    errors.log_summary(f"{self.directory} triples of {split}")
    return TrainingExamples(queries=[r[0] for r in rows], query_ids=[r[1] for r in rows],
                            positives=[r[2] for r in rows], positive_ids=[r[3] for r in rows],
                            negatives=[[r[4]] for r in rows],
                            skipped=skipped + errors.skipped)

  def eval_data(self, split: str) -> EvalData:
    queries, qrels, skipped = self._split(split)
    if not qrels:
      raise ValueError(f"{self.directory}: split {split!r} has no qrels.{split}.tsv to "
                       "evaluate with")
    return _eval_from_qrels(qrels, queries, self._passages[0], skipped)


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


FORMATS = {"beir": BeirDataset, "msmarco": MsMarcoDataset, "multireqa": MultiReQADataset,
           "jsonl": JsonlDataset}


def open_dataset(directory, format: str, **options) -> RetrievalDataset:  # pylint: disable=redefined-builtin
  """The reader for `format` over `directory`; options go to its constructor."""
  if format not in FORMATS:
    raise ValueError(f"unknown dataset format {format!r}; known formats: {sorted(FORMATS)}")
  return FORMATS[format](directory, **options)
