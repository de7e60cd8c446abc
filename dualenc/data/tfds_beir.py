"""BEIR through TFDS (`beir/<config>`), read with seqio's TfdsDataSource.

TFDS's BEIR builder stores each qrels split as rows of (query_id, query, passage_id,
passage, passage_metadata, score) and the collections as splits 'query' and 'passage';
the passage title lives in passage_metadata (JSON). `TfdsBeirDataset` turns that into the
same TrainingExamples / EvalData as the 'beir' directory reader: pairs are the rows with
score > 0, documents are (title + " " + text).strip().

TFDS must have prepared the dataset (`tfds build beir/scifact`, needs network once) under
`data_dir` (default: TFDS's own, ~/tensorflow_datasets); nothing here downloads.
"""

from __future__ import annotations

import functools
import json
from typing import Dict, List, Optional

import seqio

from dualenc.data.readers import RetrievalDataset
from dualenc.data.records import EvalData, TrainingExamples, join_title


def _title(metadata: bytes) -> str:
  try:
    parsed = json.loads(metadata.decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError):
    return ""
  title = parsed.get("title", "") if isinstance(parsed, dict) else ""
  return title if isinstance(title, str) else ""


class TfdsBeirDataset(RetrievalDataset):
  """A RetrievalDataset over TFDS `beir/<config>[:version]`."""

  def __init__(self, tfds_name: str, data_dir: Optional[str] = None):  # pylint: disable=super-init-not-called
    self.tfds_name = tfds_name
    self.source = seqio.TfdsDataSource(tfds_name=tfds_name, tfds_data_dir=data_dir)
    self.directory = tfds_name
    self.on_bad_record = "error"

  @functools.lru_cache(maxsize=None)
  def splits(self) -> List[str]:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    config = self.tfds_name.split("/", 1)[1].split(":", 1)[0]
    configs = {c.name: c for c in tfds.builder_cls("beir").BUILDER_CONFIGS}
    if config not in configs:
      raise ValueError(f"TFDS beir has no config {config!r}; configs: {sorted(configs)}")
    return sorted(configs[config].qrel_splits)

  def _rows(self, split: str):
    return self.source.get_dataset(split=split, shuffle=False).as_numpy_iterator()

  @functools.lru_cache(maxsize=None)
  def training_examples(self, split: str) -> TrainingExamples:
    self._check_split(split)
    out = TrainingExamples([], [], [], [])
    for row in self._rows(split):
      if row["score"] <= 0:
        continue
      out.queries.append(row["query"].decode("utf-8"))
      out.query_ids.append(row["query_id"].decode("utf-8"))
      out.positives.append(join_title(_title(row["passage_metadata"]),
                                      row["passage"].decode("utf-8")))
      out.positive_ids.append(row["passage_id"].decode("utf-8"))
    return out

  def eval_data(self, split: str) -> EvalData:
    self._check_split(split)
    corpus: Dict[str, str] = {}
    for row in self._rows("passage"):
      corpus[row["passage_id"].decode("utf-8")] = join_title(
          _title(row["passage_metadata"]), row["passage"].decode("utf-8"))
    qrels: Dict[str, Dict[str, int]] = {}
    queries: Dict[str, str] = {}
    for row in self._rows(split):
      qid = row["query_id"].decode("utf-8")
      queries[qid] = row["query"].decode("utf-8")
      qrels.setdefault(qid, {})[row["passage_id"].decode("utf-8")] = int(round(row["score"]))
    return EvalData(corpus_ids=list(corpus), corpus_texts=list(corpus.values()),
                    query_ids=list(queries), query_texts=list(queries.values()), qrels=qrels)
