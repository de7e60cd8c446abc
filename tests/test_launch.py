"""Launch scripts: valid bash, the commands they would run pass gin overrides through, and
tpu_pod.sh's restart loop (against a fake `gcloud` first on PATH: no network)."""

import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.conftest import REPO_ROOT

TPU_POD = str(REPO_ROOT / "launch" / "tpu_pod.sh")
TRAIN_ARGS = ["--gin_file=runs/finetune.gin", "--gin.MODEL_DIR='gs://b/run'"]
TRAIN_COMMAND = ("--command=cd ~/dualenc && .venv/bin/python -m dualenc.train --distributed "
                 "--gin_file=runs/finetune.gin --gin.MODEL_DIR=\\'gs://b/run\\' ")
INSTALL_COMMAND = ("--command=cd ~/dualenc && python3 -m venv .venv && .venv/bin/pip install -q "
                   "-c constraints.txt -e '.[tpu]'")
SSH = ["compute", "tpus", "tpu-vm", "ssh", "my-tpu", "--zone=us-central2-b", "--project=p",
       "--worker=all"]
SCP = ["compute", "tpus", "tpu-vm", "scp", "--recurse", str(REPO_ROOT), "my-tpu:~/dualenc",
       "--zone=us-central2-b", "--project=p", "--worker=all"]
DESCRIBE = ["compute", "tpus", "tpu-vm", "describe", "my-tpu", "--zone=us-central2-b",
            "--project=p", "--format=value(state)"]


def _dry_run(script, *args):
  env = dict(os.environ, DRY_RUN="1")
  return subprocess.run(["bash", str(REPO_ROOT / "launch" / script), *args], env=env,
                        capture_output=True, text=True, check=True).stdout


def test_tpu_pod_dry_run_prints_the_exact_commands_of_one_attempt(tmp_path):
  env = _fake_gcloud(tmp_path, fail_train=0)
  out = subprocess.run(["bash", TPU_POD, "my-tpu", "us-central2-b", "--project=p", "--",
                        *TRAIN_ARGS], env=dict(env, DRY_RUN="1"), capture_output=True,
                       text=True, check=True).stdout
  # Each line is a command a shell would run with exactly these arguments.
  assert [shlex.split(line) for line in out.strip().splitlines()] == [
      ["gcloud", *SCP], ["gcloud", *SSH, INSTALL_COMMAND], ["gcloud", *SSH, TRAIN_COMMAND],
      ["gcloud", *DESCRIBE]]
  assert not (tmp_path / "calls.jsonl").exists()  # Nothing ran, no loop.


def test_tpu_pod_dry_run_without_training_arguments_passes_none():
  out = _dry_run("tpu_pod.sh", "n", "z", "--")
  assert shlex.split(out.splitlines()[2])[-1] == (
      "--command=cd ~/dualenc && .venv/bin/python -m dualenc.train --distributed ")


def test_tpu_pod_refuses_a_command_line_without_separator():
  result = subprocess.run(["bash", TPU_POD, "n", "z", "x"], capture_output=True, text=True)
  assert result.returncode == 2


def test_tpu_pod_usage_prints_the_whole_header_comment():
  lines = (REPO_ROOT / "launch" / "tpu_pod.sh").read_text().splitlines()
  header = []
  for line in lines[1:]:
    if not line.startswith("#"):
      break
    header.append(line)
  result = subprocess.run(["bash", TPU_POD], capture_output=True, text=True)
  assert result.returncode == 2 and result.stdout.splitlines() == header


def test_tpu_pod_refuses_a_malformed_setting():
  result = subprocess.run(["bash", TPU_POD, "n", "z", "--"], capture_output=True, text=True,
                          env=dict(os.environ, MAX_RESTARTS="ten"))
  assert result.returncode == 2 and "MAX_RESTARTS=ten" in result.stderr


def _fake_gcloud(tmp_path, fail_train, states=("READY",), fail_setup=0, block_train=False):
  """A `gcloud` first on PATH that logs its argv (one JSON list a line) to calls.jsonl.

  The training ssh command exits 255 its first `fail_train` times (-1: always), then 0; the
  first `fail_setup` scp calls exit 255. `describe` prints states[i] on its i-th call (the last
  one from then on); NOT_FOUND fails the way gcloud does for a deleted node. With
  `block_train`, training waits until the file `release` exists, then fails.
  """
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (tmp_path / "states.json").write_text(json.dumps(list(states)))
  gcloud = bin_dir / "gcloud"
  gcloud.write_text(textwrap.dedent(f"""\
      #!{sys.executable}
      import json, pathlib, sys, time
      tmp = pathlib.Path({str(tmp_path)!r})
      argv = sys.argv[1:]
      with open(tmp / "calls.jsonl", "a") as log:
        log.write(json.dumps(argv) + "\\n")
      def bump(name):
        counter = tmp / name
        count = int(counter.read_text()) if counter.exists() else 0
        counter.write_text(str(count + 1))
        return count
      if "describe" in argv:
        states = json.loads((tmp / "states.json").read_text())
        state = states[min(bump("describes"), len(states) - 1)]
        if state == "NOT_FOUND":
          sys.exit("ERROR: (gcloud.compute.tpus.tpu-vm.describe) NOT_FOUND: Resource was not found")
        print(state)
      elif "scp" in argv:
        sys.exit(255 if bump("scps") < {fail_setup} else 0)
      elif any("dualenc.train" in arg for arg in argv):
        if {block_train}:
          while not (tmp / "release").exists():
            time.sleep(0.01)
          sys.exit(255)
        fails = {fail_train}
        sys.exit(255 if fails < 0 or bump("trains") < fails else 0)
      """))
  gcloud.chmod(0o755)
  return dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", POLL_SECONDS="0")


def _launch(env, **settings):
  env = {k: v for k, v in env.items() if k not in ("DRY_RUN", "RECREATE_COMMAND")}
  env.update(settings)
  return subprocess.run(["bash", TPU_POD, "my-tpu", "us-central2-b", "--project=p", "--",
                         *TRAIN_ARGS], env=env, capture_output=True, text=True, timeout=60)


def _calls(tmp_path):
  return [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]


def _kinds(calls):
  """Each call as setup/install/train/describe, checking its exact arguments on the way."""
  known = {json.dumps(SCP): "scp", json.dumps(SSH + [INSTALL_COMMAND]): "install",
           json.dumps(SSH + [TRAIN_COMMAND]): "train", json.dumps(DESCRIBE): "describe"}
  return [known[json.dumps(call)] for call in calls]  # KeyError: arguments changed.


def test_tpu_pod_restarts_until_training_succeeds(tmp_path):
  env = _fake_gcloud(tmp_path, fail_train=2, states=["REPAIRING", "READY"])
  result = _launch(env)
  assert result.returncode == 0, result.stderr
  # Setup re-runs before each attempt (a recreated VM is bare); the training command is
  # identical each time; describe is polled until READY after each failure.
  assert _kinds(_calls(tmp_path)) == [
      "scp", "install", "train", "describe", "describe",
      "scp", "install", "train", "describe",
      "scp", "install", "train"]
  assert "restart 1/10 after exit code 255 from training" in result.stderr
  assert "restart 2/10 after exit code 255 from training" in result.stderr
  assert "my-tpu is REPAIRING" in result.stderr and "restart 3/" not in result.stderr


def test_tpu_pod_counts_a_failed_setup_as_an_attempt(tmp_path):
  env = _fake_gcloud(tmp_path, fail_train=0, fail_setup=1)
  result = _launch(env)
  assert result.returncode == 0, result.stderr
  assert _kinds(_calls(tmp_path)) == ["scp", "describe", "scp", "install", "train"]
  assert "restart 1/10 after exit code 255 from setup" in result.stderr


def test_tpu_pod_gives_up_after_max_restarts(tmp_path):
  env = _fake_gcloud(tmp_path, fail_train=-1)
  result = _launch(env, MAX_RESTARTS="3")
  assert result.returncode == 1
  assert _kinds(_calls(tmp_path)).count("train") == 4  # The first attempt and 3 restarts.
  assert "restart 3/3 after exit code 255" in result.stderr
  assert "giving up after 3 restarts (MAX_RESTARTS=3)" in result.stderr
  assert "restart 4/" not in result.stderr


def test_tpu_pod_without_restarts_exits_on_the_first_failure(tmp_path):
  env = _fake_gcloud(tmp_path, fail_train=1)
  result = _launch(env, MAX_RESTARTS="0")
  assert result.returncode == 1 and "giving up after 0 restarts" in result.stderr
  assert _kinds(_calls(tmp_path)) == ["scp", "install", "train"]


def test_tpu_pod_recreates_a_preempted_node_once_per_wait(tmp_path):
  env = _fake_gcloud(tmp_path, fail_train=1,
                     states=["PREEMPTED", "NOT_FOUND", "CREATING", "READY"])
  recreated = tmp_path / "recreated"
  result = _launch(env, RECREATE_COMMAND=f"echo recreate >> {recreated}")
  assert result.returncode == 0, result.stderr
  assert recreated.read_text() == "recreate\n"  # Not again for NOT_FOUND while it is created.
  assert _kinds(_calls(tmp_path)) == [
      "scp", "install", "train", "describe", "describe", "describe", "describe",
      "scp", "install", "train"]
  assert "my-tpu is PREEMPTED" in result.stderr and "my-tpu is NOT_FOUND" in result.stderr


def test_tpu_pod_stops_when_recreate_command_fails(tmp_path):
  env = _fake_gcloud(tmp_path, fail_train=1, states=["PREEMPTED"])
  result = _launch(env, RECREATE_COMMAND="exit 7")
  assert result.returncode == 1
  assert "RECREATE_COMMAND failed with exit code 7" in result.stderr
  assert _kinds(_calls(tmp_path)) == ["scp", "install", "train", "describe"]


def test_tpu_pod_waits_for_a_preempted_node_at_most_max_wait_seconds(tmp_path):
  env = _fake_gcloud(tmp_path, fail_train=1, states=["PREEMPTED"])
  result = _launch(env, MAX_WAIT_SECONDS="0")
  assert result.returncode == 1
  assert "PREEMPTED and will not become READY by itself" in result.stderr
  assert "RECREATE_COMMAND" in result.stderr
  assert "not READY after 0s (MAX_WAIT_SECONDS; state: PREEMPTED)" in result.stderr
  assert _kinds(_calls(tmp_path)).count("train") == 1


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_tpu_pod_does_not_restart_after_being_stopped(tmp_path, signum, code):
  env = {k: v for k, v in _fake_gcloud(tmp_path, fail_train=0, block_train=True).items()
         if k not in ("DRY_RUN", "RECREATE_COMMAND")}
  process = subprocess.Popen(["bash", TPU_POD, "my-tpu", "us-central2-b", "--project=p", "--",
                              *TRAIN_ARGS], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True,
                             # A shell started in the background inherits SIGINT ignored, and
                             # bash cannot trap an ignored signal: give it the default back.
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
  try:
    deadline = time.monotonic() + 30
    log = tmp_path / "calls.jsonl"
    while not (log.exists() and "train" in _kinds(_calls(tmp_path))):
      assert time.monotonic() < deadline and process.poll() is None
      time.sleep(0.01)
    process.send_signal(signum)  # Only to the launcher, while training runs.
    time.sleep(0.2)
    (tmp_path / "release").touch()  # Training then fails, as an interrupted ssh would.
    _, stderr = process.communicate(timeout=30)
  finally:
    process.kill()
  assert process.returncode == code
  assert "not restarting" in stderr and "restart 1/" not in stderr
  assert _kinds(_calls(tmp_path)) == ["scp", "install", "train"]


def test_multinode_gpu_uses_srun_and_distributed_init():
  out = _dry_run("multinode_gpu.sh", "--gin_file=runs/finetune.gin", "--gin.BATCH_SIZE=512")
  assert out.startswith("srun ") and "--distributed" in out and "--gin.BATCH_SIZE=512" in out
