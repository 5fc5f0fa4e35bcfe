// Sizes for people.
#include "format/byte_size.hpp"

#include <fmt/format.h>

namespace moda {

std::string format_bytes(uint64_t bytes) {
  const double b = static_cast<double>(bytes);
  return b >= (1 << 30) ? fmt::format("{:.2f} GiB", b / (1 << 30))
                        : fmt::format("{:.1f} MiB", b / (1 << 20));
}

}  // namespace moda
