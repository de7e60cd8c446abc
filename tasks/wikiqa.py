"""`wikiqa_train`: WikiQA questions -> answer sentence, with the question's other candidate
sentences as hard negatives (data_root()/wikiqa/train_pairs.jsonl, split 'train').

Some questions have fewer hard negatives than a run asks for (21 of 1,040 have none): their
missing negative rows are all-zero tokens (see DualEncoderFeatureConverter).
"""

from dualenc.data import registry
from tasks.common import under_root

registry.register_lazy_dataset(
    "wikiqa_train", under_root("wikiqa"), "jsonl",
    fields={"query": "question", "query_id": "qid", "negatives": "hard_negatives"},
    splits={"train": "train_pairs.jsonl"})
