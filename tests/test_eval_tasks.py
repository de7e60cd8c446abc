"""Trained-checkpoint evaluation over a seqio mixture through the CLI and the trainer's hook:
per-task and macro-averaged metrics, determinism, and bad input (each a clear error or a
counted warning)."""

import json
import pathlib

import jax
import numpy as np
import pytest
import pytrec_eval
from flax import linen as nn

from dualenc import checkpoints, cli, encoders, evaluate, towers
from dualenc import search as search_cli
from dualenc import train_state as ts
from dualenc.data import records, registry, vocabularies
from tests.conftest import beir_slice
from dualenc.evaluation import retrieval

LENGTHS = {"inputs": 16, "targets": 48}
GIN = """
from dualenc import encoders
include 'models/dual_encoder.gin'
include 'runs/base.gin'
ENCODER_CONFIG = @encoders.BertConfig()
encoders.BertConfig.vocab_size = 30522
encoders.BertConfig.d_model = 32
encoders.BertConfig.num_heads = 2
encoders.BertConfig.num_layers = 2
encoders.BertConfig.d_ff = 64
encoders.BertConfig.max_position_embeddings = 64
towers.DualEncoder.architecture = 'ade_spl'
towers.DualEncoder.embedding_dim = 16
MODEL_DIR = '/unused'
TRAIN_STEPS = 7
BATCH_SIZE = 8
MIXTURE_OR_TASK_NAME = 'eval_test_mixture'
TASK_FEATURE_LENGTHS = {'inputs': 16, 'targets': 48}
"""
MODEL = towers.DualEncoder(
    encoders.BertConfig(vocab_size=30522, d_model=32, num_heads=2, num_layers=2, d_ff=64,
                        max_position_embeddings=64),
    architecture="ade_spl", embedding_dim=16)


@pytest.fixture(scope="module")
def trained(shared_data_dir, tmp_path_factory):
  """Two registered real tasks, their mixture, and a dualenc checkpoint of a tiny model."""
  root = tmp_path_factory.mktemp("eval_tasks")
  cran = beir_slice(shared_data_dir / "cranfield", root / "cran", 120)
  wiki = beir_slice(shared_data_dir / "wikiqa" / "test", root / "wiki", 150)
  vocab = vocabularies.wordpiece_vocabulary()
  registry.register_dataset("eval_test_cran", str(cran), "beir", on_bad_record="warn",
                            vocabulary=vocab)
  registry.register_dataset("eval_test_wiki", str(wiki), "beir", vocabulary=vocab)
  registry.register_mixture("eval_test_mixture", ["eval_test_cran", "eval_test_wiki"],
                            default_rate=1.0)
  ids = np.ones((2, 8), np.int32)
  params = nn.unbox(MODEL.init(jax.random.PRNGKey(0), ids, ids, ids, ids)["params"])
  model_dir = root / "model"
  checkpointer = checkpoints.Checkpointer(str(model_dir), async_save=False)
  state = ts.TrainState(step=jax.numpy.array(7, jax.numpy.int32), params=params, opt_state={})
  checkpointer.save(7, state, {"step": 7}, force=True)
  checkpointer.close()
  (model_dir / "config.gin").write_text(GIN)
  return {"root": root, "params": params, "step_dir": model_dir / "checkpoints" / "7",
          "gin": model_dir / "config.gin", "cran": cran, "wiki": wiki}


def run_cli(args, capsys):
  code = cli.report_bad_input(evaluate.main, [str(a) for a in args] + ["--no_progress"])
  captured = capsys.readouterr()
  return code, captured.out, captured.err


def test_mixture_reports_each_task_and_the_macro_average_identically_twice(trained, capsys):
  out1, out2 = trained["root"] / "out1", trained["root"] / "out2"
  code, stdout, stderr = run_cli(["--checkpoint", trained["step_dir"], "--output_dir", out1],
                                 capsys)  # gin from MODEL_DIR/config.gin
  assert code == 0, stderr
  assert "macro_average" in stdout and "eval_test_wiki" in stdout
  code, _, stderr = run_cli(["--checkpoint", trained["step_dir"], "--gin_file", trained["gin"],
                             "--gin_file", "eval/scann.gin", "--output_dir", out2, "--no_cache",
                             "--save_index", out2 / "index"], capsys)
  assert code == 0, stderr
  settings = json.loads((out2 / "eval_test_wiki" / "metrics.json").read_text())["settings"]
  assert settings["searcher"] == "scann"  # from eval/scann.gin
  assert settings["searcher_settings"]["mode"] == "brute_force"  # 150 documents
  first = json.loads((out1 / "metrics.json").read_text())
  second = json.loads((out2 / "metrics.json").read_text())
  assert sorted(first["tasks"]) == ["eval_test_cran", "eval_test_wiki"]
  assert first == second  # re-encoded, other searcher (exact at this size): same numbers
  for name in ("ndcg@10", "mrr@10", "p@1", "recall@100", "map"):
    mean = np.mean([first["tasks"][t][name] for t in first["tasks"]])
    assert first["macro_average"][name] == pytest.approx(mean)
  for task in first["tasks"]:
    per_task = json.loads((out1 / task / "metrics.json").read_text())
    assert per_task["ndcg@10"] == first["tasks"][task]["ndcg@10"]
    assert (out1 / task / "run.trec").is_file()
  cran = json.loads((out1 / "eval_test_cran" / "metrics.json").read_text())
  assert cran["counts"]["documents"] == 120 and cran["num_queries"] == cran["counts"]["queries"]


def test_search_command_rebuilds_a_trained_model_from_the_index(trained, capsys):
  index_dir = trained["root"] / "out2" / "index" / "eval_test_wiki"
  assert search_cli.main(["--index_dir", str(index_dir), "--k", "2", "--query",
                          "how a water pump works"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[0] == "# how a water pump works" and len(lines) == 3
  assert lines[1].split()[2] in registry.eval_data("eval_test_wiki", "test").corpus_ids


def test_trainer_hook_gives_the_cli_numbers_and_matches_numpy_search(trained, capsys):
  results = retrieval.evaluate_tasks(MODEL, trained["params"], "eval_test_mixture",
                                     feature_lengths=LENGTHS, split="test")
  cli = json.loads((trained["root"] / "out1" / "metrics.json").read_text())
  for task in ("eval_test_cran", "eval_test_wiki"):
    for name, value in cli["tasks"][task].items():
      assert results[task][name] == pytest.approx(value, abs=1e-9)
  # Independent check for one task: NumPy exact search over the CLI's cached embeddings, then
  # trec_eval directly.
  cache = trained["root"] / "out1" / "embeddings"
  data = registry.eval_data("eval_test_wiki", "test")
  docs = np.load(cache / "eval_test_wiki.document.npy")
  queries = np.load(cache / "eval_test_wiki.query.npy")
  scores = queries.astype(np.float64) @ docs.astype(np.float64).T
  top = np.argsort(-scores, axis=1, kind="stable")[:, :100]
  run = {q: {data.corpus_ids[j]: float(scores[i, j]) for j in top[i]}
         for i, q in enumerate(data.query_ids)}
  ndcg = pytrec_eval.RelevanceEvaluator(data.qrels, {"ndcg_cut_10"}).evaluate(run)
  assert results["eval_test_wiki"]["ndcg@10"] == pytest.approx(
      np.mean([v["ndcg_cut_10"] for v in ndcg.values()]), abs=1e-6)
  flat = retrieval.flatten_for_logging(results)
  assert flat["eval/macro_average/ndcg@10"] == results["macro_average"]["ndcg@10"]


def test_checkpoint_of_another_architecture_is_a_clear_error(trained, capsys):
  code, _, stderr = run_cli(["--checkpoint", trained["step_dir"], "--output_dir",
                             trained["root"] / "bad", "--gin.towers.DualEncoder.architecture="
                             "'sde'"], capsys)
  assert code == 2
  assert "does not fit the model gin builds (towers.DualEncoder.architecture='sde'" in stderr
  assert "unexpected in checkpoint: document_encoder/*" in stderr
  code, _, stderr = run_cli(["--checkpoint", trained["root"] / "nowhere", "--gin_file",
                             trained["gin"]], capsys)
  assert code == 2 and "not a dualenc checkpoint step directory" in stderr


def test_hf_checkpoint_of_an_unsupported_architecture_is_a_clear_error(tmp_path, trained,
                                                                      capsys):
  (tmp_path / "gpt").mkdir()
  (tmp_path / "gpt" / "config.json").write_text('{"model_type": "gpt2"}')
  code, _, stderr = run_cli(["--hf_checkpoint", tmp_path / "gpt", "--beir_dir", trained["wiki"],
                             "--output_dir", tmp_path / "out"], capsys)
  assert code == 2 and "unsupported model_type 'gpt2'" in stderr


def test_qrels_naming_unknown_documents_error_or_are_counted(trained, capsys, tmp_path):
  bad = beir_slice(trained["wiki"], tmp_path / "bad", 150, extra_qrels=["Q0\tNO-SUCH-DOC\t1"])
  args = ["--checkpoint", trained["step_dir"], "--beir_dir", bad, "--output_dir",
          tmp_path / "out"]
  code, _, stderr = run_cli(args, capsys)
  assert code == 2
  assert "qrels/test.tsv:" in stderr and "'NO-SUCH-DOC' is not in the corpus" in stderr
  assert "--on_bad_record=warn" in stderr
  code, _, stderr = run_cli(args + ["--on_bad_record=warn"], capsys)
  assert code == 0, stderr
  metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
  (task,) = metrics["tasks"]  # beir_bad_<hash>: beir_bad is taken by the 'error' policy
  assert task.startswith("beir_bad_")
  per_task = json.loads((tmp_path / "out" / task / "metrics.json").read_text())
  assert per_task["counts"]["skipped_records"] == 1  # the bad row, counted


def test_qrels_with_or_without_header_and_crlf_give_the_same_numbers(trained, capsys, tmp_path):
  crlf = trained["wiki"]  # header line and CRLF line ends
  lf = beir_slice(trained["wiki"], tmp_path / "lf_no_header", 150)
  rows = (crlf / "qrels" / "test.tsv").read_bytes().decode().splitlines()[1:]
  (lf / "qrels" / "test.tsv").write_text("\n".join(rows) + "\n")
  results = {}
  for name, directory in (("crlf", crlf), ("lf", lf)):
    code, _, stderr = run_cli(["--checkpoint", trained["step_dir"], "--beir_dir", directory,
                               "--output_dir", tmp_path / name], capsys)
    assert code == 0, stderr
    (task,) = json.loads((tmp_path / name / "metrics.json").read_text())["tasks"].items()
    results[name] = task[1]
  assert results["crlf"] == results["lf"]


def test_check_eval_data_counts_recoverable_problems_and_refuses_hopeless_ones(caplog):
  data = records.EvalData(
      corpus_ids=["d1", "d2"], corpus_texts=["a", "b"],
      query_ids=["q1", "q2", "q3"], query_texts=["x", "y", "z"],
      qrels={"q1": {"d1": 1, "ghost": 2}, "q3": {"d2": 0}, "q_unknown": {"d1": 1}})
  checked = retrieval.check_eval_data(data, "toy")
  assert checked.query_ids == ["q1", "q3"]
  assert checked.counts == {"documents": 2, "queries": 2, "queries_without_qrels": 1,
                            "qrels_unknown_queries": 1, "qrels_unknown_documents": 1,
                            "queries_without_relevant": 1, "skipped_records": 0}
  assert "1 queries have no qrels" in caplog.text
  assert "name documents absent from the corpus" in caplog.text
  empty = records.EvalData([], [], ["q1"], ["x"], {"q1": {"d1": 1}})
  with pytest.raises(ValueError, match="the corpus is empty"):
    retrieval.check_eval_data(empty, "toy")
  unjudged = records.EvalData(["d1"], ["a"], ["q1"], ["x"], {})
  with pytest.raises(ValueError, match="no query has qrels"):
    retrieval.check_eval_data(unjudged, "toy")
  with pytest.raises(ValueError, match="duplicate document id 'd1'"):
    retrieval.check_eval_data(records.EvalData(["d1", "d1"], ["a", "b"], [], [], {}), "toy")


def test_empty_beir_corpus_is_a_clear_error(trained, capsys, tmp_path):
  empty = beir_slice(trained["wiki"], tmp_path / "empty", 0)
  code, _, stderr = run_cli(["--checkpoint", trained["step_dir"], "--beir_dir", empty,
                             "--output_dir", tmp_path / "out", "--on_bad_record=warn"], capsys)
  assert code == 2 and "the corpus is empty" in stderr
