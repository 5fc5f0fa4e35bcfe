// MPI over host memory: the data-parallel path of the CPU backend.
#pragma once

#include <memory>

#include "moda/dist.hpp"

namespace moda {

// Initializes MPI (once per process; finalized at exit) and returns a communicator over
// MPI_COMM_WORLD. Errors abort the whole job (MPI_ERRORS_ARE_FATAL), so no rank is left waiting.
// any_thread asks MPI for MPI_THREAD_MULTIPLE: the NCCL communicator's watchdog thread may call
// MPI_Abort while the main thread is inside an MPI call.
std::unique_ptr<Communicator> make_mpi_communicator(bool any_thread = false);
// MPI_Abort of the whole job when MPI is initialized and has several ranks.
void abort_mpi_job(int exit_code);

}  // namespace moda
