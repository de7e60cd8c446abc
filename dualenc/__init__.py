"""dualenc: dual encoders and learned sparse retrievers in JAX/Flax.

Importing the package sets a few environment variables before TensorFlow (seqio's engine,
imported by many modules) or etils.epath first read them; nothing heavy is imported. A variable
you set yourself wins.

  TF_ENABLE_ONEDNN_OPTS=0   TF only runs input pipelines (tokenization, tf.data) for dualenc;
                            its oneDNN kernels serve dense float math it never gets, and their
                            int64 check logs `E ... oneDNN supports DT_INT64 only on platforms
                            with AVX-512` on machines that have AVX-512.
  TF_CPP_MIN_LOG_LEVEL=3    only where no NVIDIA driver can be loaded: TF's GPU build probes
                            for a GPU when it starts and, without a driver, logs
                            `E ... failed call to cuInit` on every CPU machine. TF and XLA
                            errors still raise Python exceptions.
  EPATH_USE_TF=false        gs:// paths (dualenc/fs.py, Orbax) through gcsfs rather than TF's
                            GCS client: both read Google's default credentials, but only gcsfs
                            can be pointed elsewhere (STORAGE_EMULATOR_HOST: the tests' local
                            Cloud Storage emulator).
"""

import ctypes as _ctypes
import os as _os


def _nvidia_driver_present() -> bool:
  """Whether libcuda, which TensorFlow's and JAX's GPU support load, can be loaded at all."""
  try:
    _ctypes.CDLL("libcuda.so.1")
  except OSError:
    return False
  return True


_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
_os.environ.setdefault("EPATH_USE_TF", "false")
if "TF_CPP_MIN_LOG_LEVEL" not in _os.environ and not _nvidia_driver_present():
  _os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
