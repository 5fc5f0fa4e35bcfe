// Chooses a backend by name. The CUDA backend exists only in builds with a CUDA compiler.
#include <stdexcept>

#include "backend_cpu/cpu_backend.hpp"
#include "moda/backend.hpp"

#ifdef MODA_HAVE_CUDA
#include "moda/cuda_backend.hpp"
#endif

namespace moda {

bool cuda_available() {
#ifdef MODA_HAVE_CUDA
  return cuda_device_count() > 0;
#else
  return false;
#endif
}

std::unique_ptr<Backend> make_backend(const std::string& kind, int threads) {
  if (kind == "cpu") return std::make_unique<CpuBackend<float>>(threads);
  if (kind == "cpu64") return std::make_unique<CpuBackend<double>>(threads);
  if (kind == "cuda") {
#ifdef MODA_HAVE_CUDA
    if (cuda_device_count() == 0) {
      throw std::runtime_error(
          "device cuda (runtime.device, or --device of eval and sample) but no GPU is visible "
          "(CUDA found no device: the driver, CUDA_VISIBLE_DEVICES)");
    }
    return make_cuda_backend();
#else
    throw std::runtime_error(
        "device cuda (runtime.device, or --device of eval and sample) but this moda was built "
        "without CUDA (no nvcc found at configure time)");
#endif
  }
  throw std::invalid_argument("unknown backend '" + kind + "' (expected cpu, cpu64 or cuda)");
}

}  // namespace moda
