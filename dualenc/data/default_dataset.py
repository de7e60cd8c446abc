"""The embedded default dataset: (docstring summary -> rest of the docstring) pairs mined from
the Python standard library of the running interpreter, so the main job trains offline.

  python -m dualenc.data.default_dataset      # builds it (or finds it) and prints the manifest

Built on first use in seconds into `$DUALENC_CACHE/default_dataset/<key>/` (default
`~/.cache/dualenc/...`), where <key> hashes the builder version, the Python version and the
bytes of every stdlib file read: the same interpreter gives byte-identical files on every
machine, and a different stdlib gets its own directory instead of a stale one. The directory
is a BEIR dataset:

  corpus.jsonl     one document per pair: _id "d<n>", title = qualified name of the documented
                   object (e.g. "json.dumps"), text = docstring after its first paragraph
  queries.jsonl    _id "q<n>", text = the docstring's first paragraph (the summary)
  qrels/train.tsv  q<n> -> d<n> for ~90% of the pairs
  qrels/test.tsv   the held-out ~10% (chosen by a hash of the qualified name); the corpus
                   for evaluation is every document, train and test
  manifest.json    counts, SHA-256 of each file, versions, the stdlib path

Mining: every module, class and function docstring of `*.py` files under
sysconfig's stdlib path (excluding test, idle_test, site-packages, turtledemo and
__pycache__), parsed with `ast` (nothing is imported). A docstring with at least two
paragraphs gives a pair; whitespace is collapsed; summaries need 4-60 words, bodies >= 8
words (cut at 1,500 characters on a word boundary); a summary or a body occurring more than
once (case-insensitive) drops every pair that has it.
"""

from __future__ import annotations

if __name__ == "__main__":  # run as dualenc.X, not __main__: see dualenc/cli.py
  from dualenc import cli
  cli.run_program(__spec__.name)

import ast
import hashlib
import json
import os
import pathlib
import re
import shutil
import sys
import sysconfig
import tempfile
import time
from typing import Iterator, List, NamedTuple, Optional, Tuple

BUILDER_VERSION = 1
_EXCLUDED_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "turtledemo",
                  "__pycache__"}
_MIN_SUMMARY_WORDS, _MAX_SUMMARY_WORDS, _MIN_BODY_WORDS = 4, 60, 8
_MAX_BODY_CHARS = 1500
_TEST_FRACTION_PER_MILLE = 100


class Pair(NamedTuple):
  qualname: str
  source: str  # "<relative path>:<line>"
  summary: str
  body: str


def cache_root() -> pathlib.Path:
  """$DUALENC_CACHE, else ~/.cache/dualenc."""
  return pathlib.Path(os.environ.get("DUALENC_CACHE") or
                      pathlib.Path.home() / ".cache" / "dualenc").expanduser()


def stdlib_files(root: Optional[str] = None) -> Tuple[pathlib.Path, List[pathlib.Path]]:
  """(stdlib root, its .py files in sorted order), test and vendor directories excluded."""
  root_path = pathlib.Path(root or sysconfig.get_paths()["stdlib"])
  files = []
  for directory, subdirs, names in os.walk(root_path):
    subdirs[:] = sorted(d for d in subdirs if d not in _EXCLUDED_DIRS
                        and not d.startswith((".", "config-")))
    files.extend(pathlib.Path(directory) / n for n in sorted(names) if n.endswith(".py"))
  return root_path, files


def _module_name(relative: pathlib.Path) -> str:
  parts = list(relative.with_suffix("").parts)
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(parts)


def _docstrings(tree: ast.Module, module: str) -> Iterator[Tuple[str, int, str]]:
  """(qualified name, line, cleaned docstring) of the module and every class/function."""
  stack = [(tree, module)]
  while stack:
    node, name = stack.pop(0)
    doc = ast.get_docstring(node, clean=True)
    if doc:
      yield name, getattr(node, "lineno", 1), doc
    for child in ast.iter_child_nodes(node):
      if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        stack.append((child, f"{name}.{child.name}"))


def _split_docstring(doc: str) -> Optional[Tuple[str, str]]:
  paragraphs = re.split(r"\n[ \t]*\n", doc.strip(), maxsplit=1)
  if len(paragraphs) != 2:
    return None
  summary, body = (" ".join(p.split()) for p in paragraphs)
  words = len(summary.split())
  if not _MIN_SUMMARY_WORDS <= words <= _MAX_SUMMARY_WORDS:
    return None
  if len(body.split()) < _MIN_BODY_WORDS:
    return None
  if len(body) > _MAX_BODY_CHARS:
    body = body[:_MAX_BODY_CHARS].rsplit(" ", 1)[0]
  return summary, body


def mine_pairs(root: Optional[str] = None) -> List[Pair]:
  """All filtered, de-duplicated pairs of the stdlib under `root`, in deterministic order."""
  root_path, files = stdlib_files(root)
  pairs = []
  for path in files:
    relative = path.relative_to(root_path)
    try:
      tree = ast.parse(path.read_bytes(), filename=str(relative))
    except (SyntaxError, ValueError):  # a few stdlib files are deliberately invalid
      continue
    for qualname, line, doc in _docstrings(tree, _module_name(relative)):
      split = _split_docstring(doc)
      if split:
        pairs.append(Pair(qualname, f"{relative.as_posix()}:{line}", *split))
  summaries, bodies = {}, {}
  for pair in pairs:
    summaries[pair.summary.casefold()] = summaries.get(pair.summary.casefold(), 0) + 1
    bodies[pair.body.casefold()] = bodies.get(pair.body.casefold(), 0) + 1
  return [p for p in pairs
          if summaries[p.summary.casefold()] == 1 and bodies[p.body.casefold()] == 1]


def is_test_pair(qualname: str) -> bool:
  digest = hashlib.blake2b(qualname.encode("utf-8"), digest_size=8).digest()
  return int.from_bytes(digest, "little") % 1000 < _TEST_FRACTION_PER_MILLE


def build_key(root: Optional[str] = None) -> str:
  """Hash of the builder version, Python version and every stdlib file's path and bytes."""
  root_path, files = stdlib_files(root)
  digest = hashlib.sha256(f"v{BUILDER_VERSION} {sys.version_info[:3]}".encode())
  for path in files:
    digest.update(path.relative_to(root_path).as_posix().encode() + b"\0")
    digest.update(hashlib.sha256(path.read_bytes()).digest())
  version = ".".join(map(str, sys.version_info[:3]))
  return f"v{BUILDER_VERSION}-py{version}-{digest.hexdigest()[:16]}"


def _write(directory: pathlib.Path, pairs: List[Pair], root: str, seconds: float) -> None:
  (directory / "qrels").mkdir(parents=True)
  with open(directory / "corpus.jsonl", "w", encoding="utf-8", newline="\n") as corpus, \
       open(directory / "queries.jsonl", "w", encoding="utf-8", newline="\n") as queries, \
       open(directory / "qrels" / "train.tsv", "w", encoding="utf-8", newline="\n") as train, \
       open(directory / "qrels" / "test.tsv", "w", encoding="utf-8", newline="\n") as test:
    train.write("query-id\tcorpus-id\tscore\n")
    test.write("query-id\tcorpus-id\tscore\n")
    counts = {"train": 0, "test": 0}
    for n, pair in enumerate(pairs):
      corpus.write(json.dumps({"_id": f"d{n}", "title": pair.qualname, "text": pair.body,
                               "metadata": {"source": pair.source}}, ensure_ascii=False) + "\n")
      queries.write(json.dumps({"_id": f"q{n}", "text": pair.summary}, ensure_ascii=False)
                    + "\n")
      split = "test" if is_test_pair(pair.qualname) else "train"
      (test if split == "test" else train).write(f"q{n}\td{n}\t1\n")
      counts[split] += 1
  files = ["corpus.jsonl", "queries.jsonl", "qrels/train.tsv", "qrels/test.tsv"]
  manifest = {
      "builder_version": BUILDER_VERSION, "python": sys.version.split()[0],
      "stdlib": root, "pairs": len(pairs), "train_pairs": counts["train"],
      "test_queries": counts["test"], "corpus_documents": len(pairs),
      "build_seconds": round(seconds, 2),
      "sha256": {f: hashlib.sha256((directory / f).read_bytes()).hexdigest() for f in files}}
  (directory / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def build(cache_dir: Optional[str] = None, root: Optional[str] = None) -> pathlib.Path:
  """The default dataset's BEIR directory, built first if it is not in the cache yet.

  Safe against concurrent builders: each writes a private temporary directory and renames it
  into place; the first rename wins.
  """
  base = pathlib.Path(cache_dir) if cache_dir else cache_root()
  target = base / "default_dataset" / build_key(root)
  if (target / "manifest.json").is_file():
    return target
  target.parent.mkdir(parents=True, exist_ok=True)
  start = time.perf_counter()
  pairs = mine_pairs(root)
  if not pairs:
    raise RuntimeError(f"no docstring pairs found under {stdlib_files(root)[0]}")
  staging = pathlib.Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
  try:
    _write(staging / "data", pairs, str(stdlib_files(root)[0]), time.perf_counter() - start)
    try:
      os.replace(staging / "data", target)
    except OSError:
      if not (target / "manifest.json").is_file():
        raise
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return target


def manifest(directory) -> dict:
  return json.loads((pathlib.Path(directory) / "manifest.json").read_text())


def main(argv=None) -> int:
  """`python -m dualenc.data.default_dataset`: builds (or finds) the dataset, prints where and
  its manifest."""
  del argv
  built = build()
  print(built)
  print(json.dumps(manifest(built), indent=2))
  return 0
