"""The trainer end to end on the tiny CPU config: logging, sharding, preemption, failures.

SIGKILL and exact resume: tests/test_gcs.py (a gs:// MODEL_DIR, microbatches, two devices: one
trio of processes for the plain, the microbatched and the bucket paths). A dataset registered from the shell: the README's
`runs/mine` command, run by tests/test_readme_commands.py."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import gin
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from dualenc import gin_utils, train
from tests.conftest import REPO_ROOT
from tests.conftest import with_compilation_cache

TINY = ["--gin_file=runs/tiny_cpu.gin", "--gin.TRAIN_STEPS=8", "--gin.BATCH_SIZE=8",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 16}",
        "--gin.train.checkpoint_every_steps=4", "--gin.train.progress_bar=False"]
NO_DROPOUT = ["--gin.encoders.BertConfig.dropout_rate=0.0",
              "--gin.encoders.BertConfig.attention_dropout_rate=0.0"]


def _train_in_process(model_dir, *extra):
  gin_utils.parse_command_line(TINY + [f"--gin.MODEL_DIR='{model_dir}'", *extra], "test")
  try:
    return train.train()
  finally:
    gin.clear_config()


def _losses(model_dir):
  lines = pathlib.Path(model_dir, "metrics.jsonl").read_text().splitlines()
  return {r["step"]: r["loss"] for r in map(json.loads, lines)}


def _saved_params(model_dir, step=None):
  directory = pathlib.Path(model_dir, "checkpoints")
  step = step or max(int(p.name) for p in directory.iterdir() if p.name.isdigit())
  restored = ocp.StandardCheckpointer().restore(directory / str(step) / "state")
  return jax.tree.map(np.asarray, restored["params"])


def _assert_trees_close(a, b, atol):
  flat_a = jax.tree_util.tree_flatten_with_path(a)[0]
  flat_b = dict(jax.tree_util.tree_flatten_with_path(b)[0])
  assert len(flat_a) == len(flat_b)
  for path, value in flat_a:
    np.testing.assert_allclose(value, flat_b[path], atol=atol, rtol=0, err_msg=str(path))


def _env(devices=1):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = str(REPO_ROOT)
  return with_compilation_cache(env) if devices == 1 else env


def _command(model_dir, *extra):
  return [sys.executable, "-m", "dualenc.train", *TINY, f"--gin.MODEL_DIR='{model_dir}'", *extra]


def _hook_file(tmp_path, seconds):
  path = tmp_path / "slow.gin"
  path.write_text("import tests.train_hooks\n"
                  "train.train.on_step_end = @tests.train_hooks.slow_steps\n"
                  f"tests.train_hooks.slow_steps.seconds = {seconds}\n")
  return f"--gin_file={path}"


def test_tiny_run_logs_every_step_and_writes_its_config(tmp_path):
  state = _train_in_process(tmp_path / "run")
  assert int(state.step) == 8
  losses = _losses(tmp_path / "run")
  assert sorted(losses) == list(range(1, 9))
  assert all(np.isfinite(v) for v in losses.values())
  record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
  for key in ("loss", "top1_accuracy", "mrr", "grad_norm", "learning_rate",
              "examples_per_second", "mfu"):
    assert key in record
  assert 0 < record["mfu"] < 1
  config = (tmp_path / "run" / "config.gin").read_text()
  assert "BATCH_SIZE = 8" in config and "train.loss_fn = @samtone" in config
  # TensorBoard reads the event file (its own loader) and sees the logged values.
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  (events,) = (tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*")
  board = event_accumulator.EventAccumulator(str(events))
  board.Reload()
  logged = [(e.step, e.value) for e in board.Scalars("loss")]
  assert [s for s, _ in logged] == list(range(1, 9))
  np.testing.assert_allclose([v for _, v in logged], [losses[s] for s in range(1, 9)], rtol=1e-6)
  assert sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir()) == [4, 8]


def test_data_model_mesh_matches_a_single_device(tmp_path):
  assert jax.device_count() == 8
  # SGD: Adam-style normalisation turns 1e-9 gradient noise on rarely-seen embedding rows into
  # full-size updates, which would hide what this test checks (the sharded gradients).
  sgd = "--gin.optimizers.make_optimizer.name='sgd'"
  _train_in_process(tmp_path / "one", *NO_DROPOUT, sgd, "--gin.train.mesh_data=1",
                    "--gin.train.mesh_model=1")
  _train_in_process(tmp_path / "mesh", *NO_DROPOUT, sgd, "--gin.train.mesh_data=4",
                    "--gin.train.mesh_model=2")
  one, mesh = _losses(tmp_path / "one"), _losses(tmp_path / "mesh")
  # Relative: at temperature 0.01 the logits are 100 x cosine, so fp32 reduction-order noise
  # in the sharded matmuls shows up as ~1e-5 absolute on a loss of ~10.
  np.testing.assert_allclose([mesh[s] for s in sorted(mesh)], [one[s] for s in sorted(one)],
                             rtol=1e-5, atol=0)
  _assert_trees_close(_saved_params(tmp_path / "mesh"), _saved_params(tmp_path / "one"), 1e-5)


def test_sigterm_saves_the_current_step_and_exits_zero(tmp_path):
  command = _command(tmp_path / "run", _hook_file(tmp_path, 0.5), "--gin.TRAIN_STEPS=200")
  process = subprocess.Popen(command, env=_env(), cwd=REPO_ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
  metrics = tmp_path / "run" / "metrics.jsonl"
  deadline = time.time() + 240
  while time.time() < deadline and process.poll() is None and (
      not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
    time.sleep(0.05)
  process.send_signal(signal.SIGTERM)
  output, _ = process.communicate(timeout=120)
  assert process.returncode == 0, output[-3000:]
  last_step = max(_losses(tmp_path / "run"))
  assert f"SIGTERM: saved checkpoint at step {last_step}" in output
  assert (tmp_path / "run" / "checkpoints" / str(last_step)).is_dir()
  assert last_step < 200


def test_corrupted_latest_checkpoint_is_set_aside_and_the_previous_one_used(tmp_path, capsys):
  _train_in_process(tmp_path / "run")
  for path in (tmp_path / "run" / "checkpoints" / "8" / "state").rglob("*"):
    if path.is_file():
      path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
  capsys.readouterr()
  state = _train_in_process(tmp_path / "run", "--gin.TRAIN_STEPS=10")
  output = capsys.readouterr().out
  assert "is unreadable" in output and "Resumed from" in output and "at step 4" in output
  assert (tmp_path / "run" / "checkpoints_corrupt" / "8").is_dir()  # kept, not deleted
  assert int(state.step) == 10
  assert sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir()) == [4, 8, 10]


def test_non_finite_update_stops_the_run_and_keeps_the_good_checkpoint(tmp_path):
  hooks = tmp_path / "nan.gin"
  hooks.write_text("import tests.train_hooks\n"
                   "train.train.schedule = @tests.train_hooks.nan_after\n"
                   "tests.train_hooks.nan_after.after_step = 5\n")
  with pytest.raises(train.NonFiniteLossError, match="newest good checkpoint"):
    _train_in_process(tmp_path / "run", f"--gin_file={hooks}",
                      "--gin.train.checkpoint_every_steps=2")
  steps = sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir())
  assert steps == [2, 4]
  params = _saved_params(tmp_path / "run", 4)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


@pytest.mark.parametrize("flag,culprit", [("--gin.train.batchsize=3", "batchsize"),
                                          ("--gin.trian.batch_size=3", "trian")])
def test_misspelled_gin_binding_fails_before_any_compute(flag, culprit):
  started = time.perf_counter()
  with pytest.raises(gin_utils.GinConfigError, match=culprit):
    train.main(["--gin_file=runs/tiny_cpu.gin", "--gin.MODEL_DIR='/nonexistent'", flag])
  gin.clear_config()
  assert not pathlib.Path("/nonexistent").exists()
  assert time.perf_counter() - started < 30


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_match_one_process_with_as_many_devices(tmp_path):
  flags = [*NO_DROPOUT, "--gin.TRAIN_STEPS=3", "--gin.train.checkpoint_every_steps=100"]
  address = f"localhost:{_free_port()}"
  processes = [subprocess.Popen(
      _command(tmp_path / "two", *flags, f"--coordinator_address={address}",
               "--num_processes=2", f"--process_id={i}"),
      env=_env(devices=4), cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True) for i in range(2)]
  outputs = [p.communicate(timeout=400)[0] for p in processes]
  for p, out in zip(processes, outputs):
    assert p.returncode == 0, out[-3000:]
  single = subprocess.run(_command(tmp_path / "one", *flags), env=_env(devices=8),
                          cwd=REPO_ROOT, capture_output=True, text=True)
  assert single.returncode == 0, single.stdout[-3000:] + single.stderr[-3000:]
  two, one = _losses(tmp_path / "two"), _losses(tmp_path / "one")
  assert sorted(two) == sorted(one) == [1, 2, 3]
  np.testing.assert_allclose([two[s] for s in (1, 2, 3)], [one[s] for s in (1, 2, 3)],
                             rtol=1e-5, atol=0)


@pytest.mark.parametrize("run", ["tiny_cpu", "finetune", "main", "samtone_paper"])
def test_every_run_config_parses_and_prints(run, capsys):
  extra = ["--gin.dualenc.data.vocabularies.get_vocabulary.path='/spiece.model'"
           ] if run == "samtone_paper" else []
  assert train.main([f"--gin_file=runs/{run}.gin", "--gin.MODEL_DIR='/x'", "--print_config",
                     *extra]) == 0
  gin.clear_config()
  printed = capsys.readouterr().out
  assert "train.model = %MODEL" in printed and "MODEL_DIR = '/x'" in printed


def test_a_different_config_never_overwrites_the_earlier_one(tmp_path):
  path = tmp_path / "config.gin"
  train._write_config(path, "A = 1\n")
  train._write_config(path, "A = 1\n")  # same config: nothing to keep
  train._write_config(path, "A = 2\n")
  assert path.read_text() == "A = 2\n"
  assert (tmp_path / "config.gin.1").read_text() == "A = 1\n"
  assert not (tmp_path / "config.gin.2").exists()


def test_periodic_and_cli_evaluation_of_a_checkpoint_agree_under_the_runs_eval_settings(
    tmp_path, capsys):
  """EVAL_FEATURE_LENGTHS lives in the run's config.gin, so the trainer's evaluation and
  `dualenc.evaluate --checkpoint` encode the same way and report the same numbers."""
  from dualenc import cli, evaluate  # pylint: disable=g-import-not-at-top
  lengths = "--gin.EVAL_FEATURE_LENGTHS={'inputs': 8, 'targets': 24}"
  _train_in_process(tmp_path / "run", "--gin.TRAIN_STEPS=4", "--gin.train.eval_every_steps=4",
                    lengths)
  periodic = json.loads((tmp_path / "run" / "eval" / "4" / "dualenc_default" /
                         "metrics.json").read_text())
  assert (periodic["settings"]["query_max_length"],
          periodic["settings"]["document_max_length"]) == (8, 24)
  assert "EVAL_FEATURE_LENGTHS = {'inputs': 8, 'targets': 24}" in (
      tmp_path / "run" / "config.gin").read_text()
  code = cli.report_bad_input(evaluate.main, [
      f"--checkpoint={tmp_path / 'run' / 'checkpoints' / '4'}", "--no_progress",
      f"--output_dir={tmp_path / 'cli'}"])
  assert code == 0, capsys.readouterr().err
  again = json.loads((tmp_path / "cli" / "dualenc_default" / "metrics.json").read_text())
  assert again["settings"] == periodic["settings"]
  for name in ("ndcg@10", "mrr@10", "p@1", "recall@100", "map"):
    assert again[name] == periodic[name], name
