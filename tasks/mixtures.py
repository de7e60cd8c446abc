"""Mixtures (rates are relative numbers of examples).

`multireqa_train_mix`: the five MultiReQA training sets, rate = number of training examples
(seqio.mixing_rate_num_examples), as in the dual-encoder / SamToNe papers.
`scifact_wikiqa_mix`: the shared real data (beir_scifact, scifact_rationales, wikiqa_train),
equal rates; split 'train'.
"""

import seqio

from tasks import multireqa

seqio.MixtureRegistry.add(
    "multireqa_train_mix", [multireqa.task_name(s) for s in multireqa.TRAIN_SUBSETS],
    default_rate=seqio.mixing_rate_num_examples)

seqio.MixtureRegistry.add(
    "scifact_wikiqa_mix", [("beir_scifact", 1.0), ("scifact_rationales", 1.0),
                           ("wikiqa_train", 1.0)])
