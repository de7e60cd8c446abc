"""MultiReQA-style sentence retrieval tasks.

`multireqa_<subset>`: data_root()/multireqa/<Subset>/{train,dev,test}.jsonl with one record
per (question, answer sentence, context, question_id, answer_id) — the MultiReQA release
ships sentence boundaries for MRQA, convert them into this layout once. Evaluation (P@1,
MRR) ranks the split's distinct answer sentences; `include_context=False` (answer sentence
only) as in the SamToNe / dual-encoder papers.

`scifact_rationales`: SciFact claims -> evidence sentences (data_root()/scifact,
rationale_pairs_{train,dev}.jsonl), splits 'train' and 'dev'.
"""

from dualenc.data import registry
from tasks.common import under_root

TRAIN_SUBSETS = ("SearchQA", "TriviaQA", "HotpotQA", "NaturalQuestions", "SQuAD")
TEST_ONLY_SUBSETS = ("BioASQ", "RelationExtraction", "TextbookQA", "DuoRC")


def task_name(subset: str) -> str:
  return "multireqa_" + subset.lower()


for _subset in TRAIN_SUBSETS + TEST_ONLY_SUBSETS:
  registry.register_lazy_dataset(task_name(_subset), under_root("multireqa", _subset),
                                 "multireqa")

registry.register_lazy_dataset(
    "scifact_rationales", under_root("scifact"), "multireqa",
    fields={"question": "query", "answer": "sentence", "question_id": "query_id"},
    splits={"train": "rationale_pairs_train.jsonl", "dev": "rationale_pairs_dev.jsonl"})
