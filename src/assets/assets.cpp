#include "assets/assets.hpp"

extern "C" {
extern const char moda_asset_tiny_config_begin[];
extern const char moda_asset_tiny_config_end[];
extern const char moda_asset_tiny_corpus_begin[];
extern const char moda_asset_tiny_corpus_end[];
}

namespace moda::assets {

std::string_view tiny_config() {
  return {moda_asset_tiny_config_begin,
          static_cast<size_t>(moda_asset_tiny_config_end - moda_asset_tiny_config_begin)};
}

std::string_view tiny_corpus() {
  return {moda_asset_tiny_corpus_begin,
          static_cast<size_t>(moda_asset_tiny_corpus_end - moda_asset_tiny_corpus_begin)};
}

}  // namespace moda::assets
