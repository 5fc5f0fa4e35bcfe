// NCCL over device memory: the data-parallel communicator of the CUDA backend's ranks. Built only
// when CUDA and nccl.h are found (MODA_HAVE_NCCL).
#pragma once

#include <memory>

#include "moda/dist.hpp"

namespace moda {

// `host` gives rank, world and local rank, carries the bootstrap (the ncclUniqueId broadcast) and
// keeps doing the host-side operations: MPI under mpirun/srun, the single-process communicator
// for a process started alone. Selects the GPU of this rank (cudaSetDevice), so it must be made
// before the CUDA backend. A wait on other ranks longer than `timeout_s` stops the job.
std::unique_ptr<Communicator> make_nccl_communicator(std::unique_ptr<Communicator> host,
                                                     double timeout_s);

}  // namespace moda
