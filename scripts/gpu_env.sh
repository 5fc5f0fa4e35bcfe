# Sourced by every GPU script: NVLink multicast stays off (NCCL_NVLS_ENABLE=0: multicast objects
# can take the host's GPUs out of service for others), and mpirun may run as root (the GPU
# machines run commands as root).
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
