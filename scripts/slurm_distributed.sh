#!/usr/bin/env bash
# A fedtorch run over several SLURM nodes: srun starts one torchrun per node, torchrun starts
# PROCS_PER_NODE fedtorch processes on each (docs/distributed.md, "SLURM").
#
#   sbatch --nodes=2 scripts/slurm_distributed.sh experiments/FashionMNIST/A0d5C100 rounds=50
#   PROCS_PER_NODE=4 FEDTORCH_PORT=29600 sbatch --nodes=4 scripts/slurm_distributed.sh <folder> [key=value ...]
#
# Every node needs the same checkout (.venv, same torch and fedtorch) and the same data files;
# rank 0 (on whichever node the rendezvous makes it) writes the run directory, so put
# output_dir on a file system every node shares. torch.distributed has no authentication
# or encryption: run this only on the cluster's trusted network.
#SBATCH --job-name=fedtorch-distributed
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --time=01:00:00
set -euo pipefail

if [ "$#" -lt 1 ]; then
    echo "usage: sbatch [--nodes=N] $0 <experiment-folder> [key.sub=value ...]" >&2
    exit 2
fi
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
PROCS_PER_NODE=${PROCS_PER_NODE:-2}
PORT=${FEDTORCH_PORT:-29500}
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)

# --kill-on-bad-exit: one failed node ends the whole step (no torchrun left waiting).
srun --kill-on-bad-exit=1 --ntasks-per-node=1 \
    .venv/bin/torchrun --nnodes "$SLURM_JOB_NUM_NODES" --nproc-per-node "$PROCS_PER_NODE" \
    --rdzv-backend c10d --rdzv-endpoint "$HEAD:$PORT" --rdzv-id "fedtorch-$SLURM_JOB_ID" \
    .venv/bin/fedtorch run "$@" execution.mode=distributed
