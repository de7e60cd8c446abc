"""BEIR datasets as seqio tasks `beir_<name>` over data_root()/<folder> (BEIR zip layout).

Training split = any qrels/<split>.tsv (pairs with score > 0); evaluation through
`dualenc.data.registry.eval_data("beir_<name>", split)`.

`beir_cranfield` skips its two documents with neither title nor text (ids 471 and 995; the
one qrels row naming 995 goes with them) as counted warnings; everything else is strict.
`beir_wikiqa` is WikiQA's BEIR-style test collection (wikiqa/test).
"""

from dualenc.data import registry
from tasks.common import under_root

BEIR_FOLDERS = ("msmarco", "trec-covid", "nfcorpus", "nq", "hotpotqa", "fiqa", "arguana",
                "webis-touche2020", "quora", "dbpedia-entity", "scidocs", "fever",
                "climate-fever", "scifact")
CQADUPSTACK_FORUMS = ("android", "english", "gaming", "gis", "mathematica", "physics",
                      "programmers", "stats", "tex", "unix", "webmasters", "wordpress")


def task_name(folder: str) -> str:
  return "beir_" + folder.replace("-", "_").replace("/", "_")


for _folder in BEIR_FOLDERS:
  registry.register_lazy_dataset(task_name(_folder), under_root(_folder), "beir")
for _forum in CQADUPSTACK_FORUMS:
  registry.register_lazy_dataset(task_name(f"cqadupstack/{_forum}"),
                                 under_root("cqadupstack", _forum), "beir")

registry.register_lazy_dataset("beir_cranfield", under_root("cranfield"), "beir",
                               on_bad_record="warn")
registry.register_lazy_dataset("beir_wikiqa", under_root("wikiqa", "test"), "beir")
