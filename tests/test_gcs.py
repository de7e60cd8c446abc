"""A gs:// MODEL_DIR end to end, against a local Cloud Storage emulator started by the test:
train, SIGKILL, resume exactly, evaluate and search from the bucket; nothing lands in the
working directory. Every path goes through dualenc.fs, the layer a real bucket uses too.

This is also the trainer's SIGKILL / exact-resume test (checkpoint, data position, dropout
keys): the runs take microbatches (gradient caching) on two CPU devices, so one trio of
processes covers the plain, the microbatched and the bucket paths."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from dualenc import checkpoints, fs
# The trainer tests' environment (inherits the emulator's variables set by the fixture).
from tests.test_train import _env

TINY = ["--gin_file=runs/tiny_cpu.gin", "--gin.TRAIN_STEPS=6", "--gin.BATCH_SIZE=8",
        "--gin.MICROBATCH_SIZE=4",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 16}",
        "--gin.train.checkpoint_every_steps=2", "--gin.train.progress_bar=False"]


def _run(args, cwd, devices=1, **kwargs):
  result = subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=_env(devices), text=True,
                          capture_output=True, timeout=600, **kwargs)
  assert result.returncode == 0, f"{args}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
  return result


def _params(step_dir, like):
  return jax.tree.map(np.asarray, checkpoints.restore_params(step_dir, like))


def _beir_subset(source, target, num_docs=60):
  """A small BEIR folder (the first documents and the queries judged on them) in the bucket."""
  docs = (source / "corpus.jsonl").read_text().splitlines()[:num_docs]
  kept = {json.loads(line)["_id"] for line in docs}
  rows = (source / "qrels" / "test.tsv").read_text().splitlines()
  qrels = [r for r in rows[1:] if r.split("\t")[1] in kept]
  queries = {r.split("\t")[0] for r in qrels}
  query_lines = [line for line in (source / "queries.jsonl").read_text().splitlines()
                 if json.loads(line)["_id"] in queries]
  fs.write_text(target / "corpus.jsonl", "\n".join(docs) + "\n")
  fs.write_text(target / "queries.jsonl", "\n".join(query_lines) + "\n")
  fs.write_text(target / "qrels" / "test.tsv", "\n".join([rows[0]] + qrels) + "\n")


def test_gs_model_dir_trains_resumes_exactly_and_evaluates_from_the_bucket(
    gcs_emulator, shared_data_dir, tmp_path):
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  straight, killed = gcs_emulator.uri("runs", "straight"), gcs_emulator.uri("runs", "killed")
  _run(["dualenc.train", *TINY, f"--gin.MODEL_DIR='{straight}'"], cwd, devices=2)

  hook = tmp_path / "slow.gin"
  hook.write_text("import tests.train_hooks\n"
                  "train.train.on_step_end = @tests.train_hooks.slow_steps\n"
                  "tests.train_hooks.slow_steps.seconds = 0.5\n")
  command = [sys.executable, "-m", "dualenc.train", *TINY, f"--gin.MODEL_DIR='{killed}'",
             f"--gin_file={hook}"]
  process = subprocess.Popen(command, cwd=cwd, env=_env(2), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
  committed = fs.path(killed) / "checkpoints" / "4" / "commit_success.txt"
  deadline = time.time() + 300
  while not committed.exists() and time.time() < deadline and process.poll() is None:
    time.sleep(0.2)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert committed.exists(), process.stdout.read().decode()[-3000:]
  assert not (fs.path(killed) / "checkpoints" / "6" / "commit_success.txt").exists()
  resumed = _run(["dualenc.train", *TINY, f"--gin.MODEL_DIR='{killed}'", f"--gin_file={hook}"],
                 cwd, devices=2)
  assert f"Resumed from {killed}/checkpoints/4 at step 4" in resumed.stdout

  straight_params = checkpoints.params_metadata(f"{straight}/checkpoints/6")
  like = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), straight_params)
  expected = _params(f"{straight}/checkpoints/6", like)
  got = _params(f"{killed}/checkpoints/6", like)
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=0, err_msg=str(path))

  run_dir = fs.path(killed)
  assert "MODEL_DIR = 'gs://" in (run_dir / "config.gin").read_text()
  steps = [json.loads(line)["step"] for line in
           (run_dir / "metrics.jsonl").read_text().splitlines()]
  # The killed run's lines up to its last checkpoint were uploaded before it committed; the
  # resumed run appended after them.
  assert steps[:4] == [1, 2, 3, 4] and steps[-2:] == [5, 6], steps
  # One event file per run, the killed run's uploaded at its checkpoints too. The resumed
  # run's holds its steps, readable by TensorBoard.
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  events = sorted((run_dir / "tensorboard").iterdir(), key=lambda p: p.name)
  assert len(events) == 2 and all(e.name.startswith("events.out.tfevents.") for e in events)
  (tmp_path / events[-1].name).write_bytes(events[-1].read_bytes())
  board = event_accumulator.EventAccumulator(str(tmp_path / events[-1].name))
  board.Reload()
  assert [e.step for e in board.Scalars("loss")][-2:] == [5, 6]

  # Evaluate the bucket's checkpoint on a BEIR folder in the bucket, save the index there and
  # search it from the shell.
  beir = fs.path(gcs_emulator.uri("data", "wiki"))
  _beir_subset(shared_data_dir / "wikiqa" / "test", beir)
  _run(["dualenc.evaluate", f"--checkpoint={killed}/checkpoints/6", f"--beir_dir={beir}",
        f"--save_index={killed}/index", "--no_progress"], cwd)
  metrics = json.loads((run_dir / "eval" / "6" / "metrics.json").read_text())
  (task,) = metrics["tasks"]
  per_task = json.loads((run_dir / "eval" / "6" / task / "metrics.json").read_text())
  assert per_task["counts"]["documents"] == 60
  assert per_task["settings"]["query_max_length"] == 16
  searched = _run(["dualenc.search", f"--index_dir={killed}/index", "--k=2",
                   "--query=how a water pump works"], cwd)
  assert searched.stdout.splitlines()[0] == "# how a water pump works"
  assert len(searched.stdout.splitlines()) == 3
  assert os.listdir(cwd) == []  # nothing written in the working directory


def test_append_file_rewrites_objects_and_appends_locally(gcs_emulator, tmp_path):
  for target in (fs.path(gcs_emulator.uri("append", "log.txt")), tmp_path / "log.txt"):
    log = fs.AppendFile(target, min_remote_interval_s=3600)
    log.write("a\n")
    log.flush()
    log.close()
    log = fs.AppendFile(target, min_remote_interval_s=3600)  # a resumed run
    log.write("b\n")
    log.flush()
    if fs.is_remote(target):
      assert fs.path(target).read_text() == "a\n"  # throttled: uploaded on close
    log.close()
    assert fs.path(target).read_text() == "a\nb\n"


@pytest.mark.parametrize("remote", [False, True])
def test_a_failed_staged_write_keeps_the_previous_directory(gcs_emulator, tmp_path, remote):
  target = fs.path(gcs_emulator.uri("staged", "index")) if remote else tmp_path / "index"
  with fs.staged_directory(target) as staging:
    (staging / "a.txt").write_text("old")
  with pytest.raises(RuntimeError):
    with fs.staged_directory(target) as staging:
      (staging / "a.txt").write_text("new")
      raise RuntimeError("the build failed")
  assert (fs.path(target) / "a.txt").read_text() == "old"
  with fs.staged_directory(target) as staging:
    (staging / "b.txt").write_text("new")
  assert sorted(p.name for p in fs.path(target).iterdir()) == ["b.txt"]
