// Data-parallel communication. One interface, implementations: a single process (no MPI needed
// at run time), MPI over host memory (the CPU backend's ranks, so the data-parallel path runs in
// CI), and NCCL over device memory (GPU ranks, bootstrapped through MPI).
#pragma once

#include <memory>
#include <span>
#include <string>

#include "moda/backend.hpp"
#include "moda/config.hpp"

namespace moda {

// Tensors handed to the device collectives must hold their final values on the host's view:
// the NCCL communicator waits for the GPU before it reads them, a host backend has no queue.
class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int world() const = 0;
  virtual int local_rank() const = 0;  // rank within the node: picks the GPU
  virtual std::string name() const = 0;

  // In-place sum over ranks of a float32 tensor (master role: gradients).
  virtual void all_reduce_sum(const Tensor& values) = 0;
  // all_reduce_sum that may still run when it returns, so that it overlaps with the work this
  // rank queues next (the backward of lower layers); the sum is in place once wait() returned.
  // Calls must come in the same order on every rank. By default it completes before returning.
  virtual void all_reduce_sum_start(const Tensor& values) { all_reduce_sum(values); }
  // Returns once every all_reduce_sum_start has completed.
  virtual void wait() {}
  // `values` holds `world` equal shards of `shard` elements (the last padded by the caller's
  // layout); after the call shard rank() holds the sum over ranks of that shard. Other shards
  // are left unspecified.
  virtual void reduce_scatter_sum(const Tensor& values, int64_t shard) = 0;
  // Shard r of `values` comes from rank r; afterwards every rank holds all shards. Any dtype of
  // the backend's (the compute copy of the weights is bf16 on CUDA).
  virtual void all_gather(const Tensor& values, int64_t shard) = 0;
  // Host-side sum over ranks (losses, token counts, squared norms).
  virtual void all_reduce_host(std::span<double> values) = 0;
  // Rank 0's string, on every rank.
  virtual std::string broadcast(const std::string& value) = 0;
  virtual void barrier() = 0;
  // The stream (a cudaStream_t) that writes the device tensors handed to the collectives: they
  // then wait for that stream's queued work on the device instead of draining the whole device
  // from the host. Communicators of host tensors ignore it.
  virtual void set_device_stream(void* /*stream*/) {}
};

// The communicator runtime.comm asks for, given the resolved backend kind `device` ("cpu",
// "cpu64", "cuda"). auto: single-process when not launched by mpirun/srun as several ranks,
// otherwise MPI (CPU backend) or NCCL (CUDA). Throws with a clear message when the choice does
// not fit the launch or the build (NCCL missing).
std::unique_ptr<Communicator> make_communicator(const std::string& device,
                                                const RuntimeConfig& runtime);
// After a fatal error in one rank: when several MPI ranks run, abort them all (MPI_Abort) so no
// rank waits forever in a collective; otherwise does nothing.
void abort_other_ranks(int exit_code);
// True when the environment says this process is one of several ranks of an MPI launch.
bool launched_by_mpi();

}  // namespace moda
