// The single-process communicator and the choice of implementation.
#include <cstdlib>
#include <stdexcept>

#include "dist/mpi_communicator.hpp"
#include "moda/dist.hpp"

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

}  // namespace

void abort_other_ranks(int exit_code) { abort_mpi_job(exit_code); }

bool launched_by_mpi() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "SLURM_NTASKS"}) {
    if (env_int(var) > 1) return true;
  }
  return false;
}

std::unique_ptr<Communicator> make_communicator(const std::string& device) {
  if (!launched_by_mpi()) return std::make_unique<SingleProcess>();
  if (device == "cpu" || device == "cpu64") return make_mpi_communicator();
  throw std::runtime_error(
      "several ranks were launched with runtime.device " + device +
      ", but this build has no NCCL communicator yet; run the CPU backend (runtime.device: cpu) "
      "or a single rank");
}

}  // namespace moda
