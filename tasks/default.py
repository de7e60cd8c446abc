"""`dualenc_default`: the embedded default dataset (see dualenc/data/default_dataset.py).

Python standard-library docstrings, summary -> rest; splits 'train' (pairs) and 'test'
(held-out queries against the whole corpus). Built into $DUALENC_CACHE on first use.
"""

from dualenc.data import default_dataset, registry

DEFAULT_TASK = "dualenc_default"

registry.register_lazy_dataset(DEFAULT_TASK, lambda: str(default_dataset.build()), "beir")
