// The NCCL communicator.
//
// Bootstrap: the host communicator's local rank picks the GPU, and rank 0's ncclUniqueId reaches
// the others through the host broadcast (MPI_Bcast). The NCCL communicator is non-blocking
// (ncclConfig_t::blocking = 0): its creation and every collective return at once and finish in
// the background, so the host never blocks inside NCCL; it polls instead, and every place where
// it waits for other ranks is registered with a watchdog.
//
// Ordering with the compute: the CUDA backend queues its kernels on its own stream, which the
// trainer hands over (set_device_stream). A collective records an event on that stream and makes
// this communicator's stream wait for it, on the device: the tensors are final when the
// collective starts, and the host goes on queueing the backward of the layers below, which
// overlaps with it. wait() synchronizes the communicator's stream before the reduced values are
// used.
//
// Failures: when one of those waits - for a collective, for a host reduction -
// outlasts runtime.comm_timeout_s, or NCCL reports an asynchronous error (a peer's connection
// broke), the watchdog logs which and stops the whole job (MPI_Abort), so that no rank is left
// waiting for a dead or hung peer.
#include "dist/nccl_communicator.hpp"

#include <cuda_runtime.h>
#include <fmt/format.h>
#include <nccl.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <thread>

#include "dist/watchdog.hpp"

namespace moda {

namespace {

void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(fmt::format("{} failed: {}", what, cudaGetErrorString(err)));
  }
}

ncclDataType_t nccl_type(DType dtype) {
  switch (dtype) {
    case DType::f32:
      return ncclFloat32;
    case DType::f64:
      return ncclFloat64;
    case DType::bf16:
      return ncclBfloat16;
    case DType::i32:
      return ncclInt32;
  }
  throw std::logic_error("NCCL communicator: unknown dtype");
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(std::unique_ptr<Communicator> host, double timeout_s)
      : host_(std::move(host)), rank_(host_->rank()) {
    watchdog_ = std::make_unique<Watchdog>(
        std::chrono::duration<double>(timeout_s), [this] { return probe(); },
        [this](const std::string& message) { stop_hung_job(rank_, message); });
    select_device();
    ncclUniqueId id{};
    if (rank_ == 0) check(ncclGetUniqueId(&id), "ncclGetUniqueId");
    std::string bytes(reinterpret_cast<const char*>(&id), sizeof id);
    {
      Watchdog::Wait wait(*watchdog_, "the broadcast of rank 0's ncclUniqueId");
      bytes = host_->broadcast(bytes);
    }
    std::memcpy(&id, bytes.data(), sizeof id);
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    ncclComm_t comm = nullptr;
    const ncclResult_t started = ncclCommInitRankConfig(&comm, world(), id, rank_, &config);
    comm_ = comm;
    settle(started, "ncclCommInitRankConfig");
    created_.store(true);
    check_cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    check_cuda(cudaEventCreateWithFlags(&compute_done_, cudaEventDisableTiming), "cudaEventCreate");
  }

  ~NcclCommunicator() override {
    if (!finalize()) {
      // Unwinding after an error, or finalizing failed: the peers may be gone, so don't wait for
      // them.
      created_.store(false);
      watchdog_.reset();
      if (comm_ != nullptr) ncclCommAbort(comm_);
    }
    if (compute_done_ != nullptr) cudaEventDestroy(compute_done_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  int rank() const override { return rank_; }
  int world() const override { return host_->world(); }
  int local_rank() const override { return host_->local_rank(); }
  std::string name() const override {
    int version = 0;
    ncclGetVersion(&version);
    return fmt::format("NCCL {}.{}.{} rank {} of {} on GPU {} (bootstrap: {})", version / 10000,
                       version / 100 % 100, version % 100, rank_, world(), device_, host_->name());
  }

  void all_reduce_sum(const Tensor& values) override {
    all_reduce_sum_start(values);
    wait();
  }
  void all_reduce_sum_start(const Tensor& values) override {
    device_ready();
    settle(ncclAllReduce(values.data, values.data, static_cast<size_t>(values.numel),
                         nccl_type(values.dtype), ncclSum, comm_, stream_),
           "ncclAllReduce");
  }
  void wait() override {
    Watchdog::Wait wait(*watchdog_, "the NCCL collectives in flight");
    check_cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize (NCCL stream)");
  }
  // In place: NCCL reads all shards of `values` and writes this rank's.
  void reduce_scatter_sum(const Tensor& values, int64_t shard) override {
    device_ready();
    char* base = static_cast<char*>(values.data);
    settle(ncclReduceScatter(base, base + rank_ * shard * dtype_size(values.dtype),
                             static_cast<size_t>(shard), nccl_type(values.dtype), ncclSum, comm_,
                             stream_),
           "ncclReduceScatter");
    wait();
  }
  // In place: this rank's shard of `values` is what it sends.
  void all_gather(const Tensor& values, int64_t shard) override {
    device_ready();
    char* base = static_cast<char*>(values.data);
    settle(ncclAllGather(base + rank_ * shard * dtype_size(values.dtype), base,
                         static_cast<size_t>(shard), nccl_type(values.dtype), comm_, stream_),
           "ncclAllGather");
    wait();
  }
  void all_reduce_host(std::span<double> values) override {
    Watchdog::Wait wait(*watchdog_, fmt::format("the host all-reduce ({})", host_->name()));
    host_->all_reduce_host(values);
  }
  std::string broadcast(const std::string& value) override {
    Watchdog::Wait wait(*watchdog_, fmt::format("the broadcast from rank 0 ({})", host_->name()));
    return host_->broadcast(value);
  }
  void barrier() override {
    Watchdog::Wait wait(*watchdog_, fmt::format("the barrier ({})", host_->name()));
    host_->barrier();
  }
  void set_device_stream(void* stream) override { compute_ = static_cast<cudaStream_t>(stream); }

 private:
  // One visible GPU (CUDA_VISIBLE_DEVICES or SLURM's --gpus-per-task set per rank) is this
  // rank's; otherwise the rank within the node picks one.
  void select_device() {
    int count = 0;
    const cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess || count == 0) {
      throw std::runtime_error(
          fmt::format("rank {}: the NCCL path needs a GPU, but CUDA sees none{}", rank_,
                      err != cudaSuccess ? fmt::format(" ({})", cudaGetErrorString(err)) : ""));
    }
    device_ = count == 1 ? 0 : local_rank();
    if (device_ >= count) {
      throw std::runtime_error(
          fmt::format("rank {} (local rank {}) has no GPU of its own: {} visible on this node; "
                      "start at most one rank per GPU",
                      rank_, local_rank(), count));
    }
    check_cuda(cudaSetDevice(device_), "cudaSetDevice");
  }

  // On a normal exit: lets NCCL flush its work, which may involve the peers, watched like a
  // collective. False when the communicator must be aborted instead.
  bool finalize() {
    if (!created_.load() || std::uncaught_exceptions() > 0) return false;
    try {
      settle(ncclCommFinalize(comm_), "ncclCommFinalize");
    } catch (const std::exception& e) {
      spdlog::error("{}", e.what());
      return false;
    }
    created_.store(false);
    watchdog_.reset();
    ncclCommDestroy(comm_);
    return true;
  }

  // The tensors of a collective were written by kernels the backend queued on its own stream.
  void device_ready() {
    if (compute_ == nullptr) {
      throw std::logic_error("NCCL communicator: collective before set_device_stream");
    }
    check_cuda(cudaEventRecord(compute_done_, compute_), "cudaEventRecord (compute stream)");
    check_cuda(cudaStreamWaitEvent(stream_, compute_done_, 0), "cudaStreamWaitEvent");
  }

  // A non-blocking communicator's call may return ncclInProgress and go on in the background;
  // NCCL calls on it must wait until that has finished.
  void settle(ncclResult_t result, const char* what) {
    if (result == ncclInProgress) {
      Watchdog::Wait wait(*watchdog_, what);
      while (result == ncclInProgress) {
        std::this_thread::yield();
        check(ncclCommGetAsyncError(comm_, &result), "ncclCommGetAsyncError");
      }
    }
    check(result, what);
  }

  void check(ncclResult_t result, const char* what) const {
    if (result == ncclSuccess) return;
    const char* detail = ncclGetLastError(comm_);
    throw std::runtime_error(fmt::format(
        "rank {}: {} failed: {}{}{}", rank_, what, ncclGetErrorString(result),
        detail != nullptr && *detail != '\0' ? ": " : "", detail != nullptr ? detail : ""));
  }

  // The watchdog's probe: an error NCCL met in the background (a peer's connection broke).
  std::string probe() {
    if (!created_.load()) return {};
    ncclResult_t state = ncclSuccess;
    if (ncclCommGetAsyncError(comm_, &state) != ncclSuccess) return "ncclCommGetAsyncError failed";
    if (state == ncclSuccess || state == ncclInProgress) return {};
    return fmt::format("NCCL reported an error: {}", ncclGetErrorString(state));
  }

  std::unique_ptr<Communicator> host_;
  int rank_ = 0;
  int device_ = 0;
  ncclComm_t comm_ = nullptr;
  std::atomic<bool> created_{false};  // comm_ is initialized and may be probed
  cudaStream_t stream_ = nullptr;
  cudaStream_t compute_ = nullptr;      // the backend's stream (set_device_stream)
  cudaEvent_t compute_done_ = nullptr;  // recorded on compute_ before each collective
  std::unique_ptr<Watchdog> watchdog_;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(std::unique_ptr<Communicator> host,
                                                     double timeout_s) {
  return std::make_unique<NcclCommunicator>(std::move(host), timeout_s);
}

}  // namespace moda
