// Files compiled into the binary (src/assets/embedded_assets.S.in): the default config and the
// tiny corpus, so `moda train` runs with no files at all.
#pragma once

#include <string_view>

namespace moda::assets {

std::string_view tiny_config();
std::string_view tiny_corpus();

}  // namespace moda::assets
