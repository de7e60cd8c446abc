"""Paths for every file dualenc reads or writes: local, or an object store (`gs://...`).

Everything that takes a path (MODEL_DIR, checkpoints, config.gin, metrics, TensorBoard, eval
outputs, embedding caches, indexes, data directories, Hugging Face checkpoints) goes through
`fs.path`, an `etils.epath.Path`, as in Orbax and T5X. `gs://` is served by gcsfs (fsspec), the
client that honours Google's default credentials and `STORAGE_EMULATOR_HOST` (a local Cloud
Storage emulator for tests); Orbax's array data goes through TensorStore
(`TENSORSTORE_GCS_HTTP_URL` for an emulator).

Object stores differ from disks in three ways this module hides:
  - no directories: `makedirs` is a no-op there and an empty "directory" does not exist;
  - no append: `AppendFile` keeps what it wrote and rewrites the object on flush;
  - no renames: `write_text`/`write_bytes` are atomic anyway (an object appears whole), and
    `staged_directory` builds a directory locally and publishes it only once complete.
Libraries that need a local directory (ScaNN, tokenizers, safetensors) get one from
`local_copy`.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import tempfile
import time
from typing import Iterator, Union

from etils import epath  # gs:// through gcsfs: EPATH_USE_TF=false, set in dualenc/__init__.py

PathLike = Union[str, os.PathLike]
_URI_SCHEMES = ("gs://", "s3://", "az://", "hf://")


def is_remote(path: PathLike) -> bool:
  """True for object-store URIs (gs://, s3://, ...)."""
  return os.fspath(path).startswith(_URI_SCHEMES)


def path(value: PathLike) -> epath.Path:
  """An epath.Path: local paths with `~` expanded and made absolute, URIs as they are."""
  if isinstance(value, epath.Path) and (is_remote(value) or value.is_absolute()):
    return value
  if is_remote(value):
    return epath.Path(os.fspath(value))
  return epath.Path(os.path.abspath(os.path.expanduser(os.fspath(value))))


def identity(file: PathLike) -> list:
  """[size, modification time] of a file, cheap to read and changed by any rewrite
  (nanoseconds on local disks, seconds on object stores)."""
  file = path(file)
  if is_remote(file):
    stat = file.stat()
    return [stat.length, stat.mtime]
  stat = os.stat(file)
  return [stat.st_size, stat.st_mtime_ns]


def files_under(directory: PathLike) -> list:
  """[(path relative to `directory` with '/' separators, epath.Path)] of every file below it,
  sorted (epath refuses recursive globs on object stores; this walks)."""
  directory = path(directory)
  root = os.fspath(directory).rstrip("/")
  protocol = root[:root.index("://") + 3] if is_remote(root) else ""
  found = []
  for parent, _, names in directory.walk():
    parent = os.fspath(parent).rstrip("/")
    if protocol and not parent.startswith(protocol):
      parent = protocol + parent  # fsspec walks without the gs:// prefix
    below = parent[len(root):].strip("/")
    for name in names:
      relative = f"{below}/{name}" if below else name
      found.append((relative, directory / relative))
  return sorted(found, key=lambda pair: pair[0])


def makedirs(directory: PathLike) -> epath.Path:
  directory = path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  return directory


def write_bytes(target: PathLike, data: bytes) -> None:
  """Writes a whole file atomically: readers see the old content or the new, never a part."""
  target = path(target)
  makedirs(target.parent)
  if is_remote(target):
    target.write_bytes(data)  # an object becomes visible only when complete
    return
  tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
  tmp.write_bytes(data)
  os.replace(tmp, target)


def write_text(target: PathLike, text: str) -> None:
  write_bytes(target, text.encode("utf-8"))


class AppendFile:
  """A log file appended to across runs (metrics.jsonl, TensorBoard events).

  Local files are opened for appending and flushed on every `flush`. Objects cannot be appended
  to, so their content (seeded with what the object already holds) is kept in memory and the
  whole object is rewritten on `flush`, at most every `min_remote_interval_s` seconds, and on
  `close` (TensorFlow's GCS writer also re-uploads the whole file on every flush).
  """

  def __init__(self, target: PathLike, *, min_remote_interval_s: float = 10.0):
    self.path = path(target)
    self._remote = is_remote(self.path)
    self._interval = min_remote_interval_s
    self._last_upload = time.monotonic()
    self._dirty = False
    makedirs(self.path.parent)
    if self._remote:
      self._content = bytearray(self.path.read_bytes() if self.path.exists() else b"")
      self._file = None
    else:
      self._file = open(self.path, "ab")  # pylint: disable=consider-using-with

  def write(self, data: Union[bytes, str]) -> None:
    if isinstance(data, str):
      data = data.encode("utf-8")
    if self._remote:
      self._content += data
      self._dirty = True
    else:
      self._file.write(data)

  def flush(self, force: bool = False) -> None:
    if not self._remote:
      self._file.flush()
      return
    now = time.monotonic()
    if self._dirty and (force or now - self._last_upload >= self._interval):
      self.path.write_bytes(bytes(self._content))
      self._last_upload, self._dirty = now, False

  def close(self) -> None:
    if self._remote:
      self.flush(force=True)
    elif not self._file.closed:
      self._file.close()

  @property
  def closed(self) -> bool:
    return self._file.closed if self._file is not None else False


@contextlib.contextmanager
def local_copy(source: PathLike) -> Iterator[pathlib.Path]:
  """A local directory (or file) with `source`'s content: `source` itself when local, else a
  temporary download removed on exit. For libraries that only read local files."""
  source = path(source)
  if not is_remote(source):
    yield pathlib.Path(os.fspath(source))
    return
  if not source.exists():
    raise FileNotFoundError(f"{source} does not exist")
  with tempfile.TemporaryDirectory(prefix="dualenc-download-") as tmp:
    target = pathlib.Path(tmp) / source.name
    if source.is_dir():
      for relative, item in files_under(source):
        local = target / relative
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(item.read_bytes())
    else:
      target.write_bytes(source.read_bytes())
    yield target


_DOWNLOADS: dict = {}


def local_file(source: PathLike) -> str:
  """A local path with `source`'s bytes: `source` itself when local, else a download kept for
  the life of the process (for libraries that open files by name, e.g. SentencePiece)."""
  if not is_remote(source):
    return os.fspath(path(source))
  key = os.fspath(source)
  if key not in _DOWNLOADS:
    directory = tempfile.mkdtemp(prefix="dualenc-download-")
    target = os.path.join(directory, os.path.basename(key))
    with open(target, "wb") as f:
      f.write(path(source).read_bytes())
    _DOWNLOADS[key] = target
  return _DOWNLOADS[key]


def _upload_tree(local: pathlib.Path, target: epath.Path) -> None:
  for item in sorted(local.rglob("*")):
    if item.is_file():
      destination = target / item.relative_to(local).as_posix()
      destination.write_bytes(item.read_bytes())


@contextlib.contextmanager
def staged_directory(target: PathLike) -> Iterator[pathlib.Path]:
  """Yields an empty local directory whose files become `target` when the block succeeds.

  A failure anywhere (in the block or while publishing) leaves an existing `target` as it was;
  success replaces it. Remote targets are uploaded next to `target` first and moved in place
  only once complete.
  """
  target = path(target)
  remote = is_remote(target)
  suffix = f".staging-{os.getpid()}-{time.monotonic_ns()}"
  parent = None if remote else os.fspath(makedirs(target.parent))
  staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}{suffix}", dir=parent))
  try:
    yield staging
    if remote:
      uploaded = target.with_name(f".{target.name}{suffix}")
      _upload_tree(staging, uploaded)
      if target.exists():
        target.rmtree()
      uploaded.rename(target)
    else:
      if target.exists():
        shutil.rmtree(target)
      os.replace(staging, target)
  finally:
    if staging.exists():
      shutil.rmtree(staging, ignore_errors=True)
