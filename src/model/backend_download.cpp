// Backend's default float32 download.
#include <algorithm>
#include <vector>

#include "moda/backend.hpp"

namespace moda {

void Backend::download_f32(const Tensor& src, std::span<float> host) {
  std::vector<double> chunk(
      static_cast<size_t>(std::min<int64_t>(kDownloadChunk, static_cast<int64_t>(host.size()))));
  for (size_t at = 0; at < host.size(); at += chunk.size()) {
    const size_t n = std::min(chunk.size(), host.size() - at);
    download(src.slice(static_cast<int64_t>(at), static_cast<int64_t>(n)),
             std::span<double>(chunk).first(n));
    std::copy_n(chunk.begin(), n, host.begin() + static_cast<std::ptrdiff_t>(at));
  }
  if (host.empty()) download(src.slice(0, 0), {});
}

}  // namespace moda
