"""Experiment suites (dualenc/experiments): the two-cell tiny version of each suite, run from the
shell end to end (train, evaluate, ledger, table, figures), then again to show finished cells
are skipped; the ledger and table arithmetic against NumPy and the cells' own metrics files."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from dualenc.experiments import grid
from dualenc.experiments import samtone_suite
from dualenc.experiments import sparse_suite
from tests.conftest import with_compilation_cache

REPO = pathlib.Path(__file__).resolve().parents[1]


def _suite(name, tmp_path, *extra):
  # As a user runs it: one CPU device (not the suite's 8 emulated ones), and the session's
  # compilation cache (the cells' evaluations compile the same encoder programs).
  env = with_compilation_cache({k: v for k, v in os.environ.items() if k != "XLA_FLAGS"})
  out = subprocess.run(
      [sys.executable, "-m", "dualenc.experiments", name, "--scale=tiny",
       f"--output_dir={tmp_path / 'runs'}", f"--report_dir={tmp_path / 'report'}", *extra],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  return out.stdout


def _check_skip_and_table(suite, tmp_path, first_stdout, metric_keys):
  """Shared by both suites: the ledger mirrors each cell's metrics.json, a second invocation
  runs nothing and leaves every file as it was, and the table shows each cell's numbers."""
  name = f"{suite}_tiny"  # the tiny scale's folders
  work, report = tmp_path / "runs" / name, tmp_path / "report" / name
  ledger = json.loads((report / "ledger.json").read_text())["cells"]
  assert len(ledger) == 2, ledger.keys()
  assert "0 finished; to run:" in first_stdout
  for cell_name, entry in ledger.items():
    metrics = grid.read_metrics(work / cell_name / "eval" / "metrics.json")
    assert entry["metrics"] == metrics
    assert len(entry["seconds"]) == 2 and all(s > 0 for s in entry["seconds"])
  stamps = {p: p.stat().st_mtime_ns for p in work.rglob("*") if p.is_file()}
  log_before = (work / "commands.log").read_text()
  again = _suite(suite, tmp_path)
  assert "2 cells, 2 finished; to run: 0 preparation steps and 0 cells" in again
  assert "$ " not in again  # no command ran
  assert (work / "commands.log").read_text() == log_before
  assert {p: p.stat().st_mtime_ns for p in work.rglob("*") if p.is_file()} == stamps
  table = (report / "table.md").read_text()
  for entry in ledger.values():
    for key in metric_keys:
      assert f"{entry['metrics'][key]:.4f}" in table, (key, table)
  return ledger, table


def test_samtone_tiny_suite_end_to_end(tmp_path):
  first = _suite("samtone", tmp_path)
  ledger, table = _check_skip_and_table("samtone", tmp_path, first,
                                        ("ndcg@10", "mrr@10", "recall@100"))
  assert "| SDE | in-batch softmax | 1 |" in table and "| SDE | SamToNe (query side) | 1 |" in table
  report = tmp_path / "report" / "samtone_tiny"
  for dataset_figure in ("default_top1.png", "default_ratio.png", "default_tsne.png"):
    png = report / "figures" / dataset_figure
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  # The analysis columns are the medians of the arrays kept for the figures.
  for cell_name, entry in ledger.items():
    with np.load(report / "figure_data" / (cell_name.replace("/", "__") + ".npz")) as f:
      top1 = f["top1"].astype(np.float64)
    assert entry["analysis"]["top1_median"] == pytest.approx(np.median(top1), abs=2e-3)
    assert -1.0 <= entry["analysis"]["top1_median"] <= 1.0


def test_sparse_tiny_suite_end_to_end(tmp_path):
  first = _suite("sparse", tmp_path)
  assert "1 preparation steps" in first  # the IDF table, then skipped by the second call
  ledger, table = _check_skip_and_table("sparse", tmp_path, first, ("ndcg@10",))
  assert {e["factors"]["query"] for e in ledger.values()} == {"idf", "ones"}
  for entry in ledger.values():  # the efficiency figures of a sparse evaluation are recorded
    assert entry["metrics"]["doc_nnz"] > 0 and entry["metrics"]["flops"] > 0
  assert "IDF-aware (tokenizer + IDF)" in table and "idf = 1 (SPLADE-doc)" in table


def test_seed_statistics_and_table_cells_match_numpy():
  values = [0.61, 0.64, 0.59]
  stats = grid.seed_statistics(values)
  assert stats["mean"] == pytest.approx(np.mean(values))
  assert stats["std"] == pytest.approx(np.std(values, ddof=1))
  assert grid.mean_std_cell(stats) == f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"
  assert grid.seed_statistics([0.5])["std"] == 0.0


def test_samtone_summary_difference_and_standard_error():
  entries = {}
  for loss, scores in (("in_batch", [0.50, 0.52, 0.54]), ("samtone", [0.55, 0.56, 0.60])):
    for seed, value in enumerate(scores):
      entries[f"x/{loss}/{seed}"] = {
          "factors": {"dataset": "default", "architecture": "sde", "loss": loss, "seed": seed},
          "metrics": {"ndcg@10": value, "mrr@10": value, "recall@100": value},
          "analysis": {"top1_median": 0.5, "ratio_median": 1.0}}
  summary = samtone_suite.summarise(entries)
  delta = summary["default/sde/samtone"]["delta_vs_in_batch"]
  d = np.array([0.55, 0.56, 0.60]) - np.array([0.50, 0.52, 0.54])  # paired by seed
  assert delta["mean"] == pytest.approx(d.mean())
  assert delta["se"] == pytest.approx(d.std(ddof=1) / np.sqrt(3))
  assert delta["metric"] == "ndcg@10" and delta["seeds"] == [0, 1, 2]
  assert "delta_vs_in_batch" not in summary["default/sde/in_batch"]


def test_paired_difference_uses_only_the_seeds_both_cells_have():
  cell, base = {0: 0.60, 2: 0.50}, {0: 0.55, 1: 0.90, 2: 0.52}
  delta = grid.paired_difference(cell, base)
  d = np.array([0.60 - 0.55, 0.50 - 0.52])
  assert delta["seeds"] == [0, 2] and delta["n"] == 2
  assert delta["mean"] == pytest.approx(d.mean())
  assert delta["se"] == pytest.approx(d.std(ddof=1) / np.sqrt(2))
  assert grid.difference_cell(delta) == f"{d.mean():+.4f} ± {d.std(ddof=1) / np.sqrt(2):.4f}"
  one = grid.paired_difference({1: 0.7}, base)
  assert one["se"] == 0.0 and grid.difference_cell(one) == f"{0.7 - 0.9:+.4f} (seed 1)"
  assert grid.paired_difference({3: 0.7}, base) is None and grid.difference_cell(None) == ""


def test_sparse_summary_compares_each_row_with_the_idf_aware_ensemble_at_equal_lambda():
  ndcg = {("idf", "ensemble", 1.0): [0.40, 0.38, 0.39], ("ones", "ensemble", 1.0): [0.33, 0.35],
          ("idf", "bm25", 1.0): [0.39, 0.36, 0.40], ("idf", "ensemble", 16.0): [0.42],
          ("ones", "ensemble", 16.0): [0.34]}
  entries = {}
  for (query, teacher, multiple), values in ndcg.items():
    for seed, value in enumerate(values):
      entries[f"{query}/{teacher}/{multiple}/{seed}"] = {
          "factors": {"dataset": "default", "query": query, "teacher": teacher,
                      "flops_lambda_multiple": multiple, "seed": seed},
          "metrics": {m: value for m in sparse_suite.METRICS}}
  summary = sparse_suite.summarise(entries)
  ones = summary["default/ones/ensemble/x1"]["delta_vs_idf_ensemble"]
  d = np.array([0.33 - 0.40, 0.35 - 0.38])
  assert ones["seeds"] == [0, 1] and ones["mean"] == pytest.approx(d.mean())
  assert ones["se"] == pytest.approx(d.std(ddof=1) / np.sqrt(2))
  bm25 = summary["default/idf/bm25/x1"]["delta_vs_idf_ensemble"]
  assert bm25["mean"] == pytest.approx(np.mean([-0.01, -0.02, 0.01]))
  sweep = summary["default/ones/ensemble/x16"]["delta_vs_idf_ensemble"]  # λ × 16, not × 1
  assert sweep["mean"] == pytest.approx(0.34 - 0.42) and sweep["seeds"] == [0]
  assert "delta_vs_idf_ensemble" not in summary["default/idf/ensemble/x1"]
  assert "delta_vs_idf_ensemble" not in summary["default/idf/ensemble/x16"]


def test_changed_commands_rerun_a_cell(tmp_path):
  """The ledger is keyed by the cell's symbolic commands: a cell whose recipe changed (here
  its training steps) is not taken as finished."""
  suite = samtone_suite.build(seeds=(0,), datasets=("default",), train_steps=40)
  ledger = grid.Ledger(tmp_path / "ledger.json")
  ledger.record(suite.cells[0], {"metrics": {"ndcg@10": 0.5}, "seconds": [1.0]})
  reread = grid.Ledger(tmp_path / "ledger.json")
  assert reread.finished(suite.cells[0]) and not reread.finished(suite.cells[1])
  longer = samtone_suite.build(seeds=(0,), datasets=("default",), train_steps=80)
  assert not reread.finished(longer.cells[0])
  assert "{dir}" in json.dumps(reread.entries)  # machine-independent: folders stay symbolic


def test_full_grids_have_the_issue_cells():
  samtone = samtone_suite.build()
  keys = {(c.factors["dataset"], c.factors["architecture"], c.factors["loss"], c.factors["seed"])
          for c in samtone.cells}
  assert len(keys) == len(samtone.cells) == 3 * (3 * 4 * 2 + 2)
  assert ("wikiqa", "ade_spl", "samtone_both_nomask", 2) in keys
  assert not any(k[2] == "samtone_both_nomask" and k[0] != "wikiqa" for k in keys)
  sparse = sparse_suite.build()
  trained = [c for c in sparse.cells if "seed" in c.factors]
  assert len(trained) == 2 * (3 * 5 + 2 * len(sparse_suite.SWEEP))
  assert len(sparse.cells) - len(trained) == 4  # BM25 and the dense teacher per dataset
  # The lambda sweep belongs to seed 0, also when a later invocation asks for other seeds only.
  later = [c.factors for c in sparse_suite.build(seeds=(1, 2)).cells if "seed" in c.factors]
  assert len(later) == 2 * 2 * 5 and {f["flops_lambda_multiple"] for f in later} == {1.0}


def test_dry_run_lists_every_command_and_writes_nothing(tmp_path):
  out = subprocess.run(
      [sys.executable, "-m", "dualenc.experiments", "samtone", "--dry_run", "--seeds=0",
       "--datasets=wikiqa", f"--output_dir={tmp_path / 'runs'}",
       f"--report_dir={tmp_path / 'report'}"],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=True,
      env=dict(os.environ, DUALENC_DATA_DIR=str(tmp_path / "data")))
  assert "suite samtone: 10 cells, 0 finished" in out.stdout
  assert out.stdout.count("-m dualenc.train") == 10 and out.stdout.count("-m dualenc.evaluate") == 10
  assert f"--beir_dir={tmp_path / 'data'}/wikiqa/test" in out.stdout
  assert out.stdout.count("--gin.train.train.mask_false_negatives=False") == 2  # SDE, ADE-SPL
  assert not (tmp_path / "runs").exists() and not (tmp_path / "report").exists()


def test_unknown_dataset_is_a_clear_error():
  out = subprocess.run([sys.executable, "-m", "dualenc.experiments", "sparse",
                        "--datasets=wikiqa", "--dry_run"], cwd=REPO, capture_output=True,
                       text=True, timeout=300, check=False)
  assert out.returncode == 2
  assert "--datasets: unknown ['wikiqa']" in out.stderr


def test_a_folder_of_another_recipe_is_refused_not_reused(tmp_path):
  """A changed recipe must not resume the old checkpoint or take the old metrics as its own,
  and nothing in the folder is deleted."""
  short, longer = (samtone_suite.build(seeds=(0,), datasets=("default",), train_steps=n).cells[0]
                   for n in (20, 40))
  folder = tmp_path / "cell"
  grid.claim_folder(short, folder)
  grid.claim_folder(short, folder)  # the same recipe: resumes
  (folder / "eval").mkdir()
  (folder / "eval" / "metrics.json").write_text("{}")
  with pytest.raises(ValueError, match="holds a run of a different recipe"):
    grid.claim_folder(longer, folder)
  assert (folder / "eval" / "metrics.json").read_text() == "{}"
  stranger = tmp_path / "other"
  stranger.mkdir()
  (stranger / "notes.txt").write_text("mine")
  with pytest.raises(ValueError, match="has no cell.json"):
    grid.claim_folder(short, stranger)


def test_sparse_tradeoff_figure_is_drawn_from_a_summary(tmp_path):
  """NDCG@10 against FLOPS: one line per query side over the lambda multiples, the references
  as horizontal lines; a side with a single point draws nothing to connect but is still shown."""
  stat = lambda v: grid.seed_statistics([v])
  summary = {"default/reference/bm25": {"ndcg@10": stat(0.48)},
             "default/reference/dense": {"ndcg@10": stat(0.59)}}
  for query, base in (("idf", 0.41), ("ones", 0.34)):
    for multiple, flops in ((0.25, 4.2), (1.0, 4.1), (16.0, 2.0)):
      summary[f"default/{query}/ensemble/x{multiple:g}"] = {
          "ndcg@10": stat(base - 0.01 * multiple), "flops": stat(flops)}
  (path,) = sparse_suite.draw_tradeoff(summary, tmp_path)
  assert path.name == "default_ndcg_vs_flops.png"
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert sparse_suite._label("default/ones/ensemble/x16") == (  # pylint: disable=protected-access
      "idf = 1 (SPLADE-doc), ensemble KD (BM25 + MiniLM), λ × 16")
