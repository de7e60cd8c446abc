"""dualenc's seqio task and mixture registrations: `import tasks` registers them all.

  dualenc_default          embedded default dataset (stdlib docstrings; tasks/default.py)
  beir_<name>              BEIR folders under data_root() (tasks/beir.py), incl. beir_cranfield,
                           beir_wikiqa
  msmarco_passage          MS MARCO passage TSVs (tasks/msmarco.py)
  multireqa_<subset>       MultiReQA-style JSONL; scifact_rationales (tasks/multireqa.py)
  wikiqa_train             WikiQA with hard negatives (tasks/wikiqa.py)
  tfds_beir_<config>       BEIR through TFDS (tasks/tfds.py)
  multireqa_train_mix, scifact_wikiqa_mix   mixtures (tasks/mixtures.py)

Data lives under data_root() ($DUALENC_DATA_DIR or gin `data_root.path`), read on first
use. Importing this package is idempotent.
"""

from tasks import beir, default, msmarco, multireqa, tfds, wikiqa  # noqa: F401  (registration)
from tasks import mixtures  # noqa: F401  (after the tasks it mixes)
