#include "dist/mpi_communicator.hpp"

#include <fmt/format.h>
// The C API only: Open MPI's deprecated C++ bindings would need libmpi_cxx.
#define OMPI_SKIP_MPICXX 1
#include <mpi.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <stdexcept>
#include <vector>

#include "dist/watchdog.hpp"

namespace moda {

namespace {

MPI_Datatype mpi_type(DType dtype) {
  switch (dtype) {
    case DType::f32:
      return MPI_FLOAT;
    case DType::f64:
      return MPI_DOUBLE;
    default:
      throw std::logic_error("MPI communicator: only float32/float64 host tensors");
  }
}

void check(int rc, const char* what) {
  if (rc != MPI_SUCCESS) throw std::runtime_error(fmt::format("MPI error {} in {}", rc, what));
}

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(bool any_thread, std::optional<double> timeout_s) {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) {
      int provided = 0;
      check(MPI_Init_thread(nullptr, nullptr, any_thread ? MPI_THREAD_MULTIPLE : MPI_THREAD_SINGLE,
                            &provided),
            "MPI_Init_thread");
      std::atexit([] {
        int finalized = 0;
        MPI_Finalized(&finalized);
        if (!finalized) MPI_Finalize();
      });
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_ARE_FATAL);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &world_);
    MPI_Comm local;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &local);
    MPI_Comm_rank(local, &local_rank_);
    MPI_Comm_free(&local);
    if (timeout_s) {
      watchdog_ = std::make_unique<Watchdog>(
          std::chrono::duration<double>(*timeout_s), [] { return std::string(); },
          [this](const std::string& message) { stop_hung_job(rank_, message); });
    }
  }
  int rank() const override { return rank_; }
  int world() const override { return world_; }
  int local_rank() const override { return local_rank_; }
  std::string name() const override { return fmt::format("MPI rank {} of {}", rank_, world_); }

  void all_reduce_sum(const Tensor& t) override {
    const auto wait = watch("the gradient all-reduce");
    check(MPI_Allreduce(MPI_IN_PLACE, t.data, static_cast<int>(t.numel), mpi_type(t.dtype), MPI_SUM,
                        MPI_COMM_WORLD),
          "MPI_Allreduce");
  }
  void reduce_scatter_sum(const Tensor& t, int64_t shard) override {
    const size_t bytes = static_cast<size_t>(shard) * dtype_size(t.dtype);
    std::vector<char> mine(bytes);
    const auto wait = watch("the gradient reduce-scatter");
    check(MPI_Reduce_scatter_block(t.data, mine.data(), static_cast<int>(shard), mpi_type(t.dtype),
                                   MPI_SUM, MPI_COMM_WORLD),
          "MPI_Reduce_scatter_block");
    std::memcpy(static_cast<char*>(t.data) + rank_ * bytes, mine.data(), bytes);
  }
  void all_gather(const Tensor& t, int64_t shard) override {
    const auto wait = watch("the parameter all-gather");
    check(MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, t.data, static_cast<int>(shard),
                        mpi_type(t.dtype), MPI_COMM_WORLD),
          "MPI_Allgather");
  }
  void all_reduce_host(std::span<double> values) override {
    const auto wait = watch("the host all-reduce");
    check(MPI_Allreduce(MPI_IN_PLACE, values.data(), static_cast<int>(values.size()), MPI_DOUBLE,
                        MPI_SUM, MPI_COMM_WORLD),
          "MPI_Allreduce");
  }
  std::string broadcast(const std::string& value) override {
    const auto wait = watch("the broadcast from rank 0");
    int size = static_cast<int>(value.size());
    MPI_Bcast(&size, 1, MPI_INT, 0, MPI_COMM_WORLD);
    std::string out = rank_ == 0 ? value : std::string(static_cast<size_t>(size), '\0');
    MPI_Bcast(out.data(), size, MPI_CHAR, 0, MPI_COMM_WORLD);
    return out;
  }
  void barrier() override {
    const auto wait = watch("the barrier");
    MPI_Barrier(MPI_COMM_WORLD);
  }

 private:
  // The wait registered with the watchdog for the call's duration (none without a timeout).
  std::unique_ptr<Watchdog::Wait> watch(const char* what) {
    return watchdog_ ? std::make_unique<Watchdog::Wait>(*watchdog_, what) : nullptr;
  }

  int rank_ = 0, world_ = 1, local_rank_ = 0;
  std::unique_ptr<Watchdog> watchdog_;  // last: its thread may end the process
};

}  // namespace

void abort_mpi_job(int exit_code) {
  int initialized = 0, finalized = 0, world = 1;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (!initialized || finalized) return;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  if (world > 1) MPI_Abort(MPI_COMM_WORLD, exit_code);
}

std::unique_ptr<Communicator> make_mpi_communicator(bool any_thread,
                                                    std::optional<double> timeout_s) {
  return std::make_unique<MpiCommunicator>(any_thread || timeout_s.has_value(), timeout_s);
}

}  // namespace moda
