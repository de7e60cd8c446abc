#!/usr/bin/env bash
# Multi-node GPU training under SLURM: one process per node, each seeing its node's GPUs.
#
#   sbatch --nodes=4 --ntasks-per-node=1 --gpus-per-node=8 launch/multinode_gpu.sh \
#       --gin_file=runs/finetune.gin --gin.MODEL_DIR="'/shared/runs/ft'"
#
# Arguments go to `python -m dualenc.train` unchanged; jax.distributed.initialize() reads the
# SLURM environment. Install first on every node: pip install -c constraints.txt -e '.[gpu]'.
# MODEL_DIR must be on a filesystem all nodes share. DRY_RUN=1 prints the command only.
set -euo pipefail
cd "$(dirname "$0")/.."
command=(srun .venv/bin/python -m dualenc.train --distributed "$@")
if [[ ${DRY_RUN:-0} == 1 ]]; then printf '%q ' "${command[@]}"; echo; else exec "${command[@]}"; fi
