"""Registers gin-free functions as gin configurables, so gin files can name them.

`train.loss_fn = @samtone` with `samtone.doc_side = True` binds a loss of `dualenc.losses`
(whose functions stay pure and free of gin).
"""

import gin

from dualenc import losses

for _name, _fn in losses.LOSSES.items():
  gin.external_configurable(_fn, name=_name, module="dualenc.losses")
