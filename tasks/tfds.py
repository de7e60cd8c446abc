"""`tfds_beir_<config>`: the BEIR datasets TFDS provides (`beir/<config>`), read through
seqio.TfdsDataSource. TFDS must have built them (`tfds build beir/<config>`) beforehand.
"""

from dualenc.data import registry, tfds_beir

TFDS_BEIR_CONFIGS = ("msmarco", "trec_covid", "nfcorpus", "nq", "hotpotqa", "fiqa", "arguana",
                     "webis_touche2020", "quora", "dbpedia_entity", "scidocs", "fever",
                     "climate_fever", "scifact")

for _config in TFDS_BEIR_CONFIGS:
  registry.add_task(f"tfds_beir_{_config}",
                    (lambda c=_config: tfds_beir.TfdsBeirDataset(f"beir/{c}:1.0.0")),
                    spec=("tfds", _config), description=f"TFDS beir/{_config}")
