#!/usr/bin/env bash
# Runs one dualenc training command on every worker of a Cloud TPU VM (a pod slice or a single
# host): syncs this checkout, installs it with the `tpu` extra, then starts the same command on
# all workers at once (jax.distributed.initialize() finds its peers through the TPU metadata).
#
#   launch/tpu_pod.sh NAME ZONE [--project=P] -- --gin_file=runs/finetune.gin \
#       --gin.MODEL_DIR="'gs://bucket/runs/ft'" --gin.BATCH_SIZE=512
#
# Everything after `--` goes to `python -m dualenc.train` unchanged, gin overrides included.
# MODEL_DIR must be shared by all workers (a gs:// bucket). DRY_RUN=1 prints the gcloud
# commands instead of running them. Create the TPU first, e.g. with queued resources:
#   gcloud compute tpus queued-resources create NAME --node-id=NAME --zone=ZONE \
#       --accelerator-type=v5litepod-64 --runtime-version=v2-alpha-tpuv5-lite
set -euo pipefail

usage() { sed -n '2,15p' "$0"; exit 2; }
[[ $# -ge 2 ]] || usage
name=$1 zone=$2; shift 2
gcloud_flags=()
while [[ $# -gt 0 && $1 != "--" ]]; do gcloud_flags+=("$1"); shift; done
[[ ${1:-} == "--" ]] || usage
shift
train_args=$(printf '%q ' "$@")

run() { if [[ ${DRY_RUN:-0} == 1 ]]; then echo "$*"; else "$@"; fi; }
ssh_all() {
  run gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" "${gcloud_flags[@]}" --worker=all \
    --command="$1"
}

repo=$(cd "$(dirname "$0")/.." && pwd)
run gcloud compute tpus tpu-vm scp --recurse "$repo" "$name":~/dualenc --zone="$zone" \
  "${gcloud_flags[@]}" --worker=all
ssh_all "cd ~/dualenc && python3 -m venv .venv && .venv/bin/pip install -q -c constraints.txt -e '.[tpu]'"
ssh_all "cd ~/dualenc && .venv/bin/python -m dualenc.train --distributed $train_args"
