// Sizes for people: logs and `moda info`.
#pragma once

#include <cstdint>
#include <string>

namespace moda {

// "11.2 MiB" below a GiB, "8.41 GiB" from there.
std::string format_bytes(uint64_t bytes);

}  // namespace moda
