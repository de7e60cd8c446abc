"""Launch scripts: valid bash, and the commands they would run pass gin overrides through."""

import os
import subprocess

from tests.conftest import REPO_ROOT


def _dry_run(script, *args):
  env = dict(os.environ, DRY_RUN="1")
  return subprocess.run(["bash", str(REPO_ROOT / "launch" / script), *args], env=env,
                        capture_output=True, text=True, check=True).stdout


def test_tpu_pod_runs_the_same_command_on_every_worker():
  out = _dry_run("tpu_pod.sh", "my-tpu", "us-central2-b", "--project=p", "--",
                 "--gin_file=runs/finetune.gin", "--gin.MODEL_DIR='gs://b/run'")
  lines = out.strip().splitlines()
  assert len(lines) == 3 and all("--worker=all" in line for line in lines)
  assert "tpu-vm scp" in lines[0] and "'.[tpu]'" in lines[1]
  assert "dualenc.train --distributed" in lines[2] and "gs://b/run" in lines[2]
  assert "--project=p" in lines[2]


def test_tpu_pod_refuses_a_command_line_without_separator():
  result = subprocess.run(["bash", str(REPO_ROOT / "launch" / "tpu_pod.sh"), "n", "z", "x"],
                          capture_output=True, text=True)
  assert result.returncode == 2


def test_multinode_gpu_uses_srun_and_distributed_init():
  out = _dry_run("multinode_gpu.sh", "--gin_file=runs/finetune.gin", "--gin.BATCH_SIZE=512")
  assert out.startswith("srun ") and "--distributed" in out and "--gin.BATCH_SIZE=512" in out
