#!/usr/bin/env bash
# Runs one dualenc training command on every worker of a Cloud TPU VM (a pod slice or a single
# host): syncs this checkout, installs it with the `tpu` extra, then starts the same command on
# all workers at once (jax.distributed.initialize() finds its peers through the TPU metadata).
#
#   launch/tpu_pod.sh NAME ZONE [--project=P] -- --gin_file=runs/finetune.gin \
#       --gin.MODEL_DIR="'gs://bucket/runs/ft'" --gin.BATCH_SIZE=512
#
# Everything after `--` goes to `python -m dualenc.train` unchanged, gin overrides included.
# MODEL_DIR must be shared by all workers (a gs:// bucket). Create the TPU first, e.g. with
# queued resources:
#   gcloud compute tpus queued-resources create NAME --node-id=NAME --zone=ZONE \
#       --accelerator-type=v5litepod-64 --runtime-version=v2-alpha-tpuv5-lite
#
# Restarts (spot/preemptible TPUs, maintenance, dropped ssh): when setup or training exits
# non-zero, `tpu-vm describe` is polled every POLL_SECONDS (default 60) until the node is READY,
# then the checkout is synced and installed again and the same command re-run; it resumes from
# MODEL_DIR's newest checkpoint. After MAX_RESTARTS (default 10) restarts the script exits 1;
# training exiting 0 ends it with 0. A PREEMPTED, TERMINATED or deleted node does not come back
# by itself: RECREATE_COMMAND, if set, is run once per wait with `bash -c` (e.g. delete and
# re-create the queued resource), else recreate it by hand; if the node is not READY within
# MAX_WAIT_SECONDS (default 3600) the script exits 1. Ctrl-C/SIGTERM stop it without a restart.
# DRY_RUN=1 prints the commands of one attempt and the describe command, runs nothing, no loop.
set -euo pipefail

usage() { sed -n '2,23p' "$0"; exit 2; }
[[ $# -ge 2 ]] || usage
name=$1 zone=$2; shift 2
gcloud_flags=()
while [[ $# -gt 0 && $1 != "--" ]]; do gcloud_flags+=("$1"); shift; done
[[ ${1:-} == "--" ]] || usage
shift
train_args=""
(($# == 0)) || train_args=$(printf '%q ' "$@")  # printf with no words would print ''.

poll_seconds=${POLL_SECONDS:-60}
max_restarts=${MAX_RESTARTS:-10}
max_wait_seconds=${MAX_WAIT_SECONDS:-3600}
for setting in POLL_SECONDS=$poll_seconds MAX_RESTARTS=$max_restarts \
               MAX_WAIT_SECONDS=$max_wait_seconds; do
  [[ ${setting#*=} =~ ^[0-9]+$ ]] || { echo "tpu_pod.sh: $setting: expected a whole number" >&2; exit 2; }
done

# Prints a command so that it can be pasted into a shell (quotes only what needs quoting).
safe_word='^[A-Za-z0-9_./:=@%+,-]+$' sq="'" escaped_sq="'\\''"
quote() {
  local words=() word
  for word in "$@"; do
    if [[ $word =~ $safe_word ]]; then words+=("$word"); else words+=("'${word//$sq/$escaped_sq}'"); fi
  done
  echo "${words[*]}"
}
run() { if [[ ${DRY_RUN:-0} == 1 ]]; then quote "$@"; else "$@"; fi; }
# ${a[@]+"${a[@]}"}: an empty array is an unbound variable under `set -u` before bash 4.4.
ssh_all() {
  run gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" ${gcloud_flags[@]+"${gcloud_flags[@]}"} \
    --worker=all --command="$1"
}
describe() {
  run gcloud compute tpus tpu-vm describe "$name" --zone="$zone" \
    ${gcloud_flags[@]+"${gcloud_flags[@]}"} --format='value(state)'
}

repo=$(cd "$(dirname "$0")/.." && pwd)
setup() {  # A recreated VM is bare, so this runs before every attempt.
  run gcloud compute tpus tpu-vm scp --recurse "$repo" "$name":~/dualenc --zone="$zone" \
    ${gcloud_flags[@]+"${gcloud_flags[@]}"} --worker=all || return
  ssh_all "cd ~/dualenc && python3 -m venv .venv && .venv/bin/pip install -q -c constraints.txt -e '.[tpu]'"
}
train() { ssh_all "cd ~/dualenc && .venv/bin/python -m dualenc.train --distributed $train_args"; }

if [[ ${DRY_RUN:-0} == 1 ]]; then setup; train; describe; exit 0; fi

say() { echo "tpu_pod.sh: $*" >&2; }
describe_errors=$(mktemp)
trap 'rm -f "$describe_errors"' EXIT
# Bash runs these once the foreground gcloud has returned; they exit instead of restarting.
trap 'say "interrupted; not restarting"; exit 130' INT
trap 'say "terminated; not restarting"; exit 143' TERM

wait_until_ready() {
  local start=$SECONDS state previous="" recreated=0
  while true; do
    if state=$(describe 2>"$describe_errors"); then
      state=$(echo $state)  # Trims whitespace.
    elif grep -q NOT_FOUND "$describe_errors"; then
      state=NOT_FOUND
    else
      state="unknown (describe failed: $(tail -n 1 "$describe_errors"))"
    fi
    [[ $state == "$previous" ]] || say "$name is ${state:-in no state}"
    previous=$state
    [[ $state == READY ]] && return 0
    if [[ $state == PREEMPTED || $state == TERMINATED || $state == NOT_FOUND ]] && ((!recreated)); then
      recreated=1
      if [[ -n ${RECREATE_COMMAND:-} ]]; then
        say "running RECREATE_COMMAND: $RECREATE_COMMAND"
        bash -c "$RECREATE_COMMAND" || { say "RECREATE_COMMAND failed with exit code $?"; exit 1; }
      else
        say "$name is $state and will not become READY by itself: recreate it (or set" \
            "RECREATE_COMMAND); waiting up to ${max_wait_seconds}s for it to be READY"
      fi
    fi
    if ((SECONDS - start >= max_wait_seconds)); then
      say "giving up: $name is not READY after ${max_wait_seconds}s (MAX_WAIT_SECONDS; state:" \
          "${state:-none})"
      exit 1
    fi
    sleep "$poll_seconds"
  done
}

restarts=0
while true; do
  rc=0 stage=setup
  setup || rc=$?
  if ((rc == 0)); then stage=training; train || rc=$?; fi
  if ((rc == 0)); then say "training finished after $restarts restart(s)"; exit 0; fi
  if ((restarts >= max_restarts)); then
    say "giving up after $restarts restarts (MAX_RESTARTS=$max_restarts): $stage exited with" \
        "code $rc"
    exit 1
  fi
  restarts=$((restarts + 1))
  say "restart $restarts/$max_restarts after exit code $rc from $stage; waiting for $name to be" \
      "READY, then setup and the same training command (resumes from MODEL_DIR)"
  wait_until_ready
done
