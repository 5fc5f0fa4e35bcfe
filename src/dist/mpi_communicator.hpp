// MPI over host memory: the data-parallel path of the CPU backend.
#pragma once

#include <memory>
#include <optional>

#include "moda/dist.hpp"

namespace moda {

// Initializes MPI (once per process; finalized at exit) and returns a communicator over
// MPI_COMM_WORLD. Errors abort the whole job (MPI_ERRORS_ARE_FATAL), so no rank is left waiting.
// any_thread asks MPI for MPI_THREAD_MULTIPLE: the NCCL communicator's watchdog thread may call
// MPI_Abort while the main thread is inside an MPI call. With timeout_s (runtime.comm_timeout_s
// of the CPU backend's data parallelism) the communicator has a watchdog of its own: a call that
// waits longer for the other ranks (one died or hangs, e.g. stopped) stops the job with an error
// naming it.
std::unique_ptr<Communicator> make_mpi_communicator(bool any_thread = false,
                                                    std::optional<double> timeout_s = std::nullopt);
// MPI_Abort of the whole job when MPI is initialized and has several ranks.
void abort_mpi_job(int exit_code);

}  // namespace moda
