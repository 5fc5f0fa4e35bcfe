// What a binary is: its version and the git commit it was built from (cmake/build_info.cmake), for
// `moda --version`, the training log and the checkpoints' metadata.
#pragma once

#include <string>
#include <string_view>

namespace moda {

// The project version of CMakeLists.txt, e.g. "0.1.0".
std::string_view version();
// The commit's 12-digit short hash, with "-dirty" when tracked files differed from it at build
// time; "unknown" when the sources were not a git checkout.
std::string_view build_commit();
// "moda 0.1.0 (commit 0123456789ab, CUDA backend, NCCL)": one line naming the build.
std::string build_description();

}  // namespace moda
