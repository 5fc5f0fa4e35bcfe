#include "export/safetensors.hpp"

#include <absl/strings/str_join.h>
#include <fmt/format.h>

#include <bit>
#include <cstring>
#include <stdexcept>

#include "checkpoint/file_io.hpp"
#include "tokenizer/json_scan.hpp"

namespace moda {

static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian");

std::string to_string(SafeDType dtype) {
  switch (dtype) {
    case SafeDType::f32:
      return "F32";
    case SafeDType::bf16:
      return "BF16";
    case SafeDType::i32:
      return "I32";
  }
  return "?";
}

size_t safe_dtype_size(SafeDType dtype) { return dtype == SafeDType::bf16 ? 2 : 4; }

uint16_t float_to_bf16(float x) {
  uint32_t u = std::bit_cast<uint32_t>(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

void write_safetensors(const std::string& path, const std::vector<SafeTensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::string header = "{";
  if (!metadata.empty()) {
    header += "\"__metadata__\":{";
    bool first = true;
    for (const auto& [k, v] : metadata) {
      header += fmt::format("{}{}:{}", first ? "" : ",", json::quote(k), json::quote(v));
      first = false;
    }
    header += "}";
  }
  uint64_t offset = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const SafeTensor& t = tensors[i];
    int64_t numel = 1;
    for (int64_t s : t.shape) numel *= s;
    const bool is_int = t.dtype == SafeDType::i32;
    const int64_t have = static_cast<int64_t>(is_int ? t.i32.size() : t.f32.size());
    if (have != numel) {
      throw std::runtime_error(fmt::format("{}: tensor {} has {} values for shape [{}]", path,
                                           t.name, have, absl::StrJoin(t.shape, ", ")));
    }
    const uint64_t bytes = static_cast<uint64_t>(numel) * safe_dtype_size(t.dtype);
    header += fmt::format("{}{}:{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{},{}]}}",
                          header.size() > 1 ? "," : "", json::quote(t.name), to_string(t.dtype),
                          absl::StrJoin(t.shape, ","), offset, offset + bytes);
    offset += bytes;
  }
  header += "}";
  while (header.size() % 8 != 0) header += ' ';

  fileio::DurableFile f(path);
  const uint64_t n = header.size();
  f.write(&n, sizeof n);
  f.write(header);
  std::vector<uint16_t> buf;
  for (const SafeTensor& t : tensors) {
    switch (t.dtype) {
      case SafeDType::f32:
        f.write(t.f32.data(), t.f32.size_bytes());
        break;
      case SafeDType::i32:
        f.write(t.i32.data(), t.i32.size_bytes());
        break;
      case SafeDType::bf16: {
        constexpr size_t kChunk = size_t{1} << 20;
        for (size_t i = 0; i < t.f32.size(); i += kChunk) {
          const size_t m = std::min(kChunk, t.f32.size() - i);
          buf.resize(m);
          for (size_t j = 0; j < m; ++j) buf[j] = float_to_bf16(t.f32[i + j]);
          f.write(buf.data(), m * sizeof(uint16_t));
        }
        break;
      }
    }
  }
  f.close();
}

}  // namespace moda
