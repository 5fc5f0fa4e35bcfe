#!/usr/bin/env bash
# One node, one rank per GPU, NCCL between the GPUs, under Open MPI's mpirun.
# Usage: [GPUS=N] [MODA=binary] scripts/launch/mpirun_example.sh CONFIG [moda train arguments...]
#   GPUS=8 scripts/launch/mpirun_example.sh configs/paper/olmo2_1p5b.yaml --set runtime.zero1=true
# GPUS defaults to every GPU nvidia-smi lists; MODA to the bundle's wrapper dist-cuda/moda (which
# finds libnccl), else build/moda.
# Several nodes: add --hostfile (one line per node, "slots=8") or use slurm_example.sbatch.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
config="${1:?usage: [GPUS=N] $0 CONFIG [moda train arguments...]}"
shift
gpus="${GPUS:-$(nvidia-smi -L | wc -l)}"
moda="${MODA:-}"
if [[ -z "$moda" ]]; then
  moda="$repo/build/moda"
  [[ -x "$repo/dist-cuda/moda" ]] && moda="$repo/dist-cuda/moda"
fi

# NVLink multicast off: on shared GPU hosts it can take the GPUs out of service.
export NCCL_NVLS_ENABLE=0
export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"

# -x exports a variable to every rank; --bind-to none leaves the CPU cores to OpenMP and the data
# loader's thread; the local rank picks the GPU inside moda.
exec mpirun -np "$gpus" --bind-to none \
  -x NCCL_NVLS_ENABLE -x NCCL_DEBUG -x LD_LIBRARY_PATH -x PATH \
  "$moda" train --config "$config" --set runtime.device=cuda "$@"
