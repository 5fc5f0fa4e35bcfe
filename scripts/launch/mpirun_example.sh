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
mpirun -np "$gpus" --bind-to none \
  -x NCCL_NVLS_ENABLE -x NCCL_DEBUG -x LD_LIBRARY_PATH -x PATH \
  "$moda" train --config "$config" --set runtime.device=cuda "$@" &
launcher=$!
# A stop (SIGTERM of a scheduler, Ctrl-C: mpirun runs in the background, so the terminal's SIGINT
# reaches this script only) becomes a SIGUSR1 to mpirun, which forwards it to every rank: they
# finish the step, save a checkpoint and exit 0. mpirun's own SIGTERM handling would kill the
# ranks a second later, before a large model's save.
trap 'kill -USR1 "$launcher" 2> /dev/null || true' TERM INT
status=0
# wait returns early when a trapped signal arrives: wait again until mpirun has ended.
while kill -0 "$launcher" 2> /dev/null; do
  wait "$launcher" && status=0 || status=$?
done
exit "$status"
