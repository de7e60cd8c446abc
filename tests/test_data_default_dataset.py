"""The embedded default dataset: built in seconds, deterministic across processes, filtered
as documented, consistent with the docstrings Python itself reports, and trainable through
the `dualenc_default` task."""

import collections
import hashlib
import importlib
import inspect
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest
import seqio

import tasks  # noqa: F401  (registers dualenc_default)
from dualenc.data import default_dataset, pipeline, registry

REPO = pathlib.Path(__file__).resolve().parents[1]
SAFE_MODULES = ("json", "textwrap", "string", "fractions", "statistics", "heapq", "bisect",
                "difflib", "shlex", "base64", "csv", "calendar", "collections", "functools",
                "decimal", "ipaddress", "pathlib", "argparse", "configparser", "email.message")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  cache = tmp_path_factory.mktemp("cache")
  previous = os.environ.get("DUALENC_CACHE")
  os.environ["DUALENC_CACHE"] = str(cache)
  start = time.perf_counter()
  directory = default_dataset.build()
  seconds = time.perf_counter() - start
  yield directory, seconds
  if previous is None:
    del os.environ["DUALENC_CACHE"]
  else:
    os.environ["DUALENC_CACHE"] = previous


def read_jsonl(path):
  return [json.loads(line) for line in open(path, encoding="utf-8")]


def read_qrels(path):
  lines = open(path, encoding="utf-8").read().splitlines()
  assert lines[0] == "query-id\tcorpus-id\tscore"
  return [tuple(line.split("\t")) for line in lines[1:]]


def test_layout_counts_and_filters(built):
  directory, seconds = built
  assert seconds < 30, f"building took {seconds:.1f} s"
  manifest = default_dataset.manifest(directory)
  corpus = read_jsonl(directory / "corpus.jsonl")
  queries = read_jsonl(directory / "queries.jsonl")
  train = read_qrels(directory / "qrels" / "train.tsv")
  test = read_qrels(directory / "qrels" / "test.tsv")
  assert manifest["pairs"] == len(corpus) == len(queries) == len(train) + len(test)
  assert (manifest["train_pairs"], manifest["test_queries"]) == (len(train), len(test))
  assert 0.05 < len(test) / len(corpus) < 0.15 and len(corpus) > 1500
  for name, digest in manifest["sha256"].items():
    assert hashlib.sha256((directory / name).read_bytes()).hexdigest() == digest
  assert {q for q, _, _ in train}.isdisjoint({q for q, _, _ in test})
  assert all(d == "d" + q[1:] and s == "1" for q, d, s in train + test)
  assert all(len(q["text"].split()) >= 4 for q in queries)
  assert all(len(d["text"].split()) >= 8 and len(d["text"]) <= 1500 for d in corpus)
  summaries = collections.Counter(q["text"].casefold() for q in queries)
  bodies = collections.Counter(d["text"].casefold() for d in corpus)
  assert max(summaries.values()) == 1 and max(bodies.values()) == 1
  assert all(default_dataset.is_test_pair(corpus[int(q[1:])]["title"]) for q, _, _ in test)


def test_pairs_match_the_docstrings_python_reports(built):
  directory, _ = built
  corpus = read_jsonl(directory / "corpus.jsonl")
  queries = read_jsonl(directory / "queries.jsonl")
  checked = 0
  for doc, query in zip(corpus, queries):
    module_name = next((m for m in SAFE_MODULES if doc["title"] == m or
                        doc["title"].startswith(m + ".")), None)
    if module_name is None:
      continue
    obj = importlib.import_module(module_name)
    for attribute in doc["title"][len(module_name):].split(".")[1:]:
      obj = getattr(obj, attribute, None)
    if obj is None or not isinstance(getattr(obj, "__doc__", None), str):
      continue
    try:  # C accelerators replace some Python definitions; compare only the same object
      source_file = inspect.getsourcefile(obj)
    except TypeError:
      continue
    if not (source_file or "").endswith(doc["metadata"]["source"].split(":")[0]):
      continue
    summary, _, body = inspect.cleandoc(obj.__doc__).strip().partition("\n\n")
    assert " ".join(summary.split()) == query["text"], doc["title"]
    assert " ".join(body.split()).startswith(doc["text"]), doc["title"]
    checked += 1
  assert checked >= 50, checked


def test_cached_build_is_reused(built):
  directory, _ = built
  stamp = (directory / "corpus.jsonl").stat().st_mtime_ns
  start = time.perf_counter()
  assert default_dataset.build() == directory
  assert time.perf_counter() - start < 5
  assert (directory / "corpus.jsonl").stat().st_mtime_ns == stamp


RESUME_SCRIPT = """
import json, os, sys
import tasks
from dualenc.data import default_dataset, pipeline
state = json.loads(sys.argv[1])
it = pipeline.make_batch_iterator("dualenc_default", split="train", batch_size=16, seed=3,
                                  feature_lengths={"inputs": 16, "targets": 32})
it.set_state(state)
batch = next(it)
print(json.dumps({"dir": default_dataset.build().name,
                  "sha256": default_dataset.manifest(default_dataset.build())["sha256"],
                  "left_ids": batch["left_ids"].tolist(), "right_ids": batch["right_ids"].tolist(),
                  "tokens": int(batch["right_encoder_input_tokens"].astype("int64").sum())}))
"""


def test_another_process_builds_the_same_data_and_batches(built, tmp_path):
  directory, _ = built
  it = pipeline.make_batch_iterator("dualenc_default", split="train", batch_size=16, seed=3,
                                    feature_lengths={"inputs": 16, "targets": 32})
  for _ in range(3):
    next(it)
  state = it.get_state()
  expected = next(it)
  env = dict(os.environ, DUALENC_CACHE=str(tmp_path / "other_cache"))
  out = subprocess.run([sys.executable, "-c", RESUME_SCRIPT, json.dumps(state)], env=env,
                       cwd=str(REPO),
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  other = json.loads(out.stdout.strip().splitlines()[-1])
  assert other["dir"] == directory.name
  assert other["sha256"] == default_dataset.manifest(directory)["sha256"]
  assert other["left_ids"] == expected["left_ids"].tolist()
  assert other["right_ids"] == expected["right_ids"].tolist()
  assert other["tokens"] == int(expected["right_encoder_input_tokens"].astype(np.int64).sum())


def test_default_task_train_and_eval_splits(built):
  directory, _ = built
  manifest = default_dataset.manifest(directory)
  evaluation = registry.eval_data("dualenc_default", "test")
  assert len(evaluation.corpus_ids) == manifest["corpus_documents"]
  assert len(evaluation.query_ids) == manifest["test_queries"]
  assert all(list(evaluation.qrels[q]) == ["d" + q[1:]] for q in evaluation.query_ids)
  it = pipeline.make_batch_iterator("dualenc_default", split="train", batch_size=32,
                                    feature_lengths={"inputs": 32, "targets": 128}, seed=0)
  assert seqio.get_mixture_or_task("dualenc_default").num_input_examples(
      "train") == manifest["train_pairs"]
  batch = next(it)
  assert batch["left_encoder_input_tokens"].shape == (32, 32)
  assert batch["right_encoder_input_tokens"].shape == (32, 128)
