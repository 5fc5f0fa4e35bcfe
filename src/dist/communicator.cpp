// The single-process communicator and the choice of implementation.
#include <fmt/format.h>

#include <cstdlib>
#include <stdexcept>

#include "dist/mpi_communicator.hpp"
#include "moda/dist.hpp"

#ifdef MODA_HAVE_NCCL
#include "dist/nccl_communicator.hpp"
#endif

namespace moda {

namespace {

class SingleProcess final : public Communicator {
 public:
  int rank() const override { return 0; }
  int world() const override { return 1; }
  int local_rank() const override { return 0; }
  std::string name() const override { return "single process"; }
  void all_reduce_sum(const Tensor&) override {}
  void reduce_scatter_sum(const Tensor&, int64_t) override {}
  void all_gather(const Tensor&, int64_t) override {}
  void all_reduce_host(std::span<double>) override {}
  std::string broadcast(const std::string& value) override { return value; }
  void barrier() override {}
};

int env_int(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? -1 : std::atoi(v);
}

#ifdef MODA_HAVE_NCCL
// Started by an MPI launcher, also as its only rank (`mpirun -np 1` sets these too).
bool under_mpi_launcher() {
  if (launched_by_mpi()) return true;
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"}) {
    if (env_int(var) >= 1) return true;
  }
  return false;
}

std::unique_ptr<Communicator> make_nccl(double timeout_s) {
  // Ranks of a launch bootstrap through MPI; a process started alone is one rank and needs none.
  std::unique_ptr<Communicator> host;
  if (under_mpi_launcher()) {
    host = make_mpi_communicator(true);
  } else {
    host = std::make_unique<SingleProcess>();
  }
  return make_nccl_communicator(std::move(host), timeout_s);
}
#else
std::unique_ptr<Communicator> make_nccl(double) {
  throw std::runtime_error(
      "the NCCL communicator is needed (runtime.comm nccl, or several ranks on the CUDA "
      "backend), but this build has no NCCL: nccl.h and libnccl were not found when it was "
      "configured (see the 'moda: NCCL' line of cmake's output); install NCCL with the CUDA "
      "toolkit and rebuild");
}
#endif

}  // namespace

void abort_other_ranks(int exit_code) { abort_mpi_job(exit_code); }

bool launched_by_mpi() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "SLURM_NTASKS"}) {
    if (env_int(var) > 1) return true;
  }
  return false;
}

std::unique_ptr<Communicator> make_communicator(const std::string& device,
                                                const RuntimeConfig& runtime) {
  const bool gpu = device == "cuda";
  CommKind kind = runtime.comm;
  if (kind == CommKind::auto_detect) {
    kind = !launched_by_mpi() ? CommKind::single : gpu ? CommKind::nccl : CommKind::mpi;
  }
  switch (kind) {
    case CommKind::single:
      if (launched_by_mpi()) {
        throw std::runtime_error(
            "runtime.comm is single, but this process is one of several ranks started by "
            "mpirun/srun (use auto, mpi or nccl)");
      }
      return std::make_unique<SingleProcess>();
    case CommKind::mpi:
      if (gpu) {
        throw std::runtime_error(
            "runtime.comm mpi carries host memory, but the backend is cuda (use nccl or auto)");
      }
      return make_mpi_communicator(false, runtime.comm_timeout_s);
    case CommKind::nccl:
      if (!gpu) {
        throw std::runtime_error(fmt::format(
            "runtime.comm nccl needs the CUDA backend, but the backend is {} (use mpi or auto)",
            device));
      }
      return make_nccl(runtime.comm_timeout_s);
    case CommKind::auto_detect:
      break;
  }
  throw std::logic_error("make_communicator: unresolved runtime.comm");
}

}  // namespace moda
