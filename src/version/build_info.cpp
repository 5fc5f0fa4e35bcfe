// build_description(); version() and build_commit() are generated at build time.
#include "moda/build_info.hpp"

#include <fmt/format.h>

namespace moda {

std::string build_description() {
#if defined(MODA_HAVE_NCCL)
  constexpr std::string_view kBackends = "CUDA backend, NCCL";
#elif defined(MODA_HAVE_CUDA)
  constexpr std::string_view kBackends = "CUDA backend";
#else
  constexpr std::string_view kBackends = "CPU only";
#endif
  return fmt::format("moda {} (commit {}, {})", version(), build_commit(), kBackends);
}

}  // namespace moda
