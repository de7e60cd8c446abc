"""Where the built-in tasks look for their data.

`data_root()` is `data_root.path` (gin) or else $DUALENC_DATA_DIR, read when a task is first
used, not at import: every built-in task can be registered before its data exists.
"""

from __future__ import annotations

import os
from typing import Optional

import gin

from dualenc import fs


@gin.configurable
def data_root(path: Optional[str] = None):
  """Directory holding the datasets' folders (scifact/, cranfield/, msmarco-passage/, ...)."""
  path = path or os.environ.get("DUALENC_DATA_DIR")
  if not path:
    raise ValueError("built-in dualenc tasks read their data under a root directory: set "
                     "DUALENC_DATA_DIR or bind tasks.common.data_root.path")
  return fs.path(path)  # local or gs://


def under_root(*parts: str):
  """A zero-argument callable resolving data_root()/parts when the task is first used."""
  return lambda: str(data_root().joinpath(*parts))
