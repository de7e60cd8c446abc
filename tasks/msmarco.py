"""`msmarco_passage`: MS MARCO passage ranking TSVs under data_root()/msmarco-passage.

Expected files (official names; see dualenc/data/readers.py): collection.tsv,
queries.<split>.tsv, qrels.<split>.tsv, optionally triples.<split>.tsv (texts) or
qidpidtriples.<split>.tsv (ids) for training with one hard negative per example. E.g.
rename or link queries.dev.small.tsv / qrels.dev.small.tsv as split 'dev.small'.
"""

from dualenc.data import registry
from tasks.common import under_root

registry.register_lazy_dataset("msmarco_passage", under_root("msmarco-passage"), "msmarco")
