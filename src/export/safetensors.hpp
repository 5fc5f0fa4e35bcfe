// A safetensors writer: 8-byte little-endian header length, a JSON header naming each tensor's
// dtype, shape and byte range, padded with spaces to a multiple of 8, then the raw data in header
// order (https://github.com/huggingface/safetensors, "Format").
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

namespace moda {

enum class SafeDType { f32, bf16, i32 };
std::string to_string(SafeDType dtype);  // "F32", "BF16", "I32"
size_t safe_dtype_size(SafeDType dtype);

// One tensor to write: float32 source data stored as `dtype` (f32 or bf16, round to nearest
// even), or int32 source data stored as i32.
struct SafeTensor {
  std::string name;
  std::vector<int64_t> shape;
  std::span<const float> f32;
  std::span<const int32_t> i32;
  SafeDType dtype = SafeDType::f32;
};

// Writes (and fsyncs) the file; throws std::runtime_error naming it on error or when a tensor's
// element count does not match its shape. `metadata` goes into "__metadata__".
void write_safetensors(const std::string& path, const std::vector<SafeTensor>& tensors,
                       const std::map<std::string, std::string>& metadata);

// bfloat16 bits of x, rounded to nearest even (NaN stays NaN).
uint16_t float_to_bf16(float x);

}  // namespace moda
