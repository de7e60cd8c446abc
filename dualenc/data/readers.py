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
  'msmarco'    collection.tsv (pid, passage), queries.<split>.tsv (qid, text; a dotted split
               such as 'train.full.2' falls back to queries.train.tsv),
               qrels.<split>.tsv (TREC "qid 0 pid grade" or "qid pid grade"), and optionally
               triples.<split>.tsv (query, positive, negative texts) or
               qidpidtriples.<split>.tsv (qid, pid, negative pid): one example per triple,
               else one pair per positive qrels row.
  'multireqa'  <split>.jsonl, one record per (question, answer sentence [, context,
               question_id, answer_id]); eval corpus = the split's distinct answer sentences.
  'jsonl'      <split>.jsonl of {"query", "positive", "negatives": [...],
               "teacher_scores": {teacher: [score of positive, scores of negatives...]},
               optional "query_id", "positive_id"}  (dualenc/data/jsonl_readers.py).
The JSONL formats take `fields` (canonical name -> name in the file) and `splits`
(split -> file relative to the directory; default: every *.jsonl, named by its stem).
Where a format has no ids, the text is its own id.
"""

from __future__ import annotations

import functools
from typing import Dict, List, Mapping, Optional, Tuple

from dualenc.data.jsonl_readers import JsonlDataset, MultiReQADataset
from dualenc.data.records import (EvalData, RecordErrors, RetrievalDataset, TrainingExamples,
                                  get_field, join_title, read_jsonl, read_tsv)

Qrels = Dict[str, Dict[str, int]]


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

  def _queries_file(self, split: str):
    """queries.<split>.tsv, else the longest dotted prefix: split 'train.full.2' (from
    qidpidtriples.train.full.2.tsv) reads queries.train.tsv."""
    parts = split.split(".")
    for k in range(len(parts), 0, -1):
      path = self.directory / f"queries.{'.'.join(parts[:k])}.tsv"
      if path.exists():
        return path
    return None

  @functools.lru_cache(maxsize=None)
  def _split(self, split: str) -> Tuple[Dict[str, str], Qrels, list]:
    self._check_split(split)
    docs, skipped = self._passages
    errors = RecordErrors(self.on_bad_record)
    queries_path = self._queries_file(split)
    queries = _read_id_text_tsv(queries_path, errors, "query") if queries_path else {}
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


FORMATS = {"beir": BeirDataset, "msmarco": MsMarcoDataset, "multireqa": MultiReQADataset,
           "jsonl": JsonlDataset}


def open_dataset(directory, format: str, **options) -> RetrievalDataset:  # pylint: disable=redefined-builtin
  """The reader for `format` over `directory`; options go to its constructor."""
  if format not in FORMATS:
    raise ValueError(f"unknown dataset format {format!r}; known formats: {sorted(FORMATS)}")
  return FORMATS[format](directory, **options)
