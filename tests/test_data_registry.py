"""Registering datasets with gin bindings only (what `--gin.X=Y` flags become), the shipped
data gin files, and the registry's guards."""

import json
import pathlib

import gin
import numpy as np
import pytest
import seqio

from dualenc import gin_utils
from dualenc.data import pipeline, registry, vocabularies

REPO = pathlib.Path(__file__).resolve().parents[1]
LENGTHS = {"inputs": 16, "targets": 32}


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def flags_to_bindings(flags):
  """The trainer's own rewriting of `--gin.X=Y` flags (as argv holds them once the shell has
  removed the outer double quotes) into gin bindings."""
  bindings, rest = gin_utils.split_gin_overrides(flags)
  assert not rest
  return bindings


def test_shell_flags_register_a_task_that_yields_batches(shared_data_dir):
  flags = [
      "--gin.MIXTURE_OR_TASK_NAME=@dualenc.data.registry.register_dataset()",
      "--gin.dualenc.data.registry.register_dataset.name='shell_scifact'",
      f"--gin.dualenc.data.registry.register_dataset.directory='{shared_data_dir / 'scifact'}'",
      "--gin.dualenc.data.registry.register_dataset.format='beir'",
      "--gin.dualenc.data.pipeline.make_batch_iterator.task_or_mixture_name="
      "%MIXTURE_OR_TASK_NAME",
  ]
  # The flags import nothing themselves: the pipeline module (which the trainer imports)
  # makes the registry's configurables known to gin.
  gin.parse_config(["import dualenc.data.pipeline"] + flags_to_bindings(flags))
  assert "shell_scifact" not in seqio.TaskRegistry.names()  # registered when first used
  it = pipeline.make_batch_iterator(split="train", batch_size=8, feature_lengths=LENGTHS)
  batch = next(it)
  assert "shell_scifact" in seqio.TaskRegistry.names() and it.name == "shell_scifact"
  assert batch["left_encoder_input_tokens"].shape == (8, 16)
  assert seqio.get_mixture_or_task("shell_scifact").num_input_examples("train") == 919
  # Using the binding again (e.g. the evaluator after the trainer) re-registers nothing.
  assert pipeline.make_batch_iterator(split="test", batch_size=8,
                                      feature_lengths=LENGTHS).name == "shell_scifact"
  assert len(registry.eval_data("shell_scifact", "test").query_ids) == 300


def test_gin_mixture_of_two_scoped_registrations(shared_data_dir):
  gin.parse_config(f"""
      import dualenc.data.registry
      import dualenc.data.pipeline
      claims/dualenc.data.registry.register_dataset.name = 'gin_claims'
      claims/dualenc.data.registry.register_dataset.directory = '{shared_data_dir / "scifact"}'
      claims/dualenc.data.registry.register_dataset.format = 'beir'
      evidence/dualenc.data.registry.register_dataset.name = 'gin_evidence'
      evidence/dualenc.data.registry.register_dataset.directory = '{shared_data_dir / "scifact"}'
      evidence/dualenc.data.registry.register_dataset.format = 'multireqa'
      evidence/dualenc.data.registry.register_dataset.fields = {{
          'question': 'query', 'answer': 'sentence', 'question_id': 'query_id'}}
      evidence/dualenc.data.registry.register_dataset.splits = {{
          'train': 'rationale_pairs_train.jsonl'}}
      dualenc.data.registry.register_mixture.name = 'gin_claims_evidence'
      dualenc.data.registry.register_mixture.tasks = [
          (@claims/dualenc.data.registry.register_dataset(), 3.0),
          (@evidence/dualenc.data.registry.register_dataset(), 1.0)]
      dualenc.data.pipeline.make_batch_iterator.task_or_mixture_name = \\
          @dualenc.data.registry.register_mixture()
  """)
  it = pipeline.make_batch_iterator(split="train", batch_size=40, feature_lengths=LENGTHS)
  next(it)
  positions = it.get_state()["positions"]
  assert set(positions) == {"gin_claims", "gin_evidence"} and sum(positions.values()) == 40
  assert seqio.get_mixture_or_task("gin_evidence").num_input_examples("train") == 1025


def test_register_dataset_gin_file(shared_data_dir):
  gin.parse_config_files_and_bindings(
      [str(REPO / "gin_configs" / "data" / "register_dataset.gin")],
      [f"dualenc.data.registry.register_dataset.directory = '{shared_data_dir / 'cranfield'}'",
       "dualenc.data.registry.register_dataset.name = 'gin_file_cranfield'",
       "dualenc.data.registry.register_dataset.on_bad_record = 'warn'",
       "import dualenc.data.pipeline",
       "dualenc.data.pipeline.make_batch_iterator.task_or_mixture_name = "
       "%MIXTURE_OR_TASK_NAME",
       "dualenc.data.pipeline.make_batch_iterator.feature_lengths = %TASK_FEATURE_LENGTHS"])
  it = pipeline.make_batch_iterator(split="test", batch_size=4)
  assert next(it)["right_encoder_input_tokens"].shape == (4, 256)
  assert len(registry.eval_data("gin_file_cranfield", "test").corpus_ids) == 1398


def test_shipped_data_gin_files_parse(shared_data_dir):
  data = REPO / "gin_configs" / "data"
  gin.parse_config_file(str(data / "default.gin"))
  assert gin.query_parameter("%MIXTURE_OR_TASK_NAME") == "dualenc_default"
  assert gin.query_parameter("%TASK_FEATURE_LENGTHS") == {"inputs": 32, "targets": 128}
  gin.clear_config()
  gin.parse_config_file(str(data / "wikiqa_hard_negatives.gin"))
  assert gin.query_parameter("%TASK_FEATURE_LENGTHS")["negative_targets"] == [1, 64]
  gin.clear_config()
  gin.parse_config_files_and_bindings(
      [str(data / "vocab_t5.gin")],
      [f"dualenc.data.vocabularies.get_vocabulary.path = "
       f"'{shared_data_dir / 'vocab' / 'seqio_test_sentencepiece.model'}'"])
  assert isinstance(vocabularies.get_vocabulary(), seqio.SentencePieceVocabulary)
  gin.clear_config()
  gin.parse_config_file(str(data / "vocab_minilm.gin"))
  assert vocabularies.get_vocabulary().vocab_size == 30522
  gin.clear_config()
  gin.parse_config_file(str(data / "scifact.gin"))
  assert gin.query_parameter("%MIXTURE_OR_TASK_NAME") == "beir_scifact"


def test_registry_guards(shared_data_dir, tmp_path):
  scifact = str(shared_data_dir / "scifact")
  assert registry.register_dataset("guard_task", scifact, "beir") == "guard_task"
  assert registry.register_dataset("guard_task", scifact, "beir") == "guard_task"  # no-op
  with pytest.raises(ValueError, match="'guard_task' is already registered"):
    registry.register_dataset("guard_task", str(shared_data_dir / "cranfield"), "beir")
  with pytest.raises(FileNotFoundError, match="dataset directory not found: .*nowhere"):
    registry.register_dataset("guard_missing", str(tmp_path / "nowhere"), "beir")
  with pytest.raises(ValueError, match="no task or mixture named 'guard_unknown'"):
    registry.register_mixture("guard_mix", [("guard_task", 1.0), ("guard_unknown", 1.0)])
  with pytest.raises(ValueError, match="was not registered through dualenc.data.registry"):
    registry.eval_data("no_such_task", "test")
  with pytest.raises(ValueError, match="no split 'dev'"):
    registry.eval_data("guard_task", "dev")
  # eval_data texts tokenized with encode_batch are the training tokens of the same text.
  evaluation = registry.eval_data("guard_task", "test")
  corpus = {json.loads(l)["_id"]: json.loads(l) for l in open(shared_data_dir / "scifact" /
                                                                 "corpus.jsonl")}
  first = evaluation.corpus_ids[0]
  assert evaluation.corpus_texts[0] == (corpus[first]["title"] + " " +
                                        corpus[first]["text"]).strip()
  tokens = vocabularies.encode_batch(vocabularies.wordpiece_vocabulary(),
                                     evaluation.corpus_texts[:3], 16)
  assert tokens.shape == (3, 16) and np.all(tokens[:, 0] == 101)
