"""TensorFlow for input pipelines only: imported through here so it never claims an accelerator.

JAX owns the GPUs/TPUs; TF (tf.data, tokenizers) runs on the host CPU. Hiding the GPUs must
happen before TF initialises its devices, hence every dualenc.data module imports `tf` from
here rather than importing tensorflow directly. (How TF logs and which kernels it uses are set
in dualenc/__init__.py, before anything imports TF.)
"""

from __future__ import annotations

import dualenc
import tensorflow as tf

# Without an NVIDIA driver TF cannot use a GPU: nothing to hide, and no need to probe for one.
if dualenc._nvidia_driver_present():  # pylint: disable=protected-access
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:
    # TF was already initialised by someone else; their device choice stands.
    pass


def no_autograph(fn):
  """Marks a tf.data map function as plain graph code: AutoGraph's source transformation costs
  seconds per function on a small CPU and our functions have no tensor-dependent control flow."""
  return tf.autograph.experimental.do_not_convert(fn)


__all__ = ["tf", "no_autograph"]
