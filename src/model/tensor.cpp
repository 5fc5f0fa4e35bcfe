#include <fmt/format.h>

#include <stdexcept>

#include "moda/backend.hpp"

namespace moda {

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::f32:
      return 4;
    case DType::f64:
      return 8;
    case DType::bf16:
      return 2;
    case DType::i32:
      return 4;
  }
  throw std::logic_error("unknown dtype");
}

std::string to_string(DType dtype) {
  switch (dtype) {
    case DType::f32:
      return "float32";
    case DType::f64:
      return "float64";
    case DType::bf16:
      return "bfloat16";
    case DType::i32:
      return "int32";
  }
  throw std::logic_error("unknown dtype");
}

Tensor Tensor::slice(int64_t offset, int64_t count) const {
  if (offset < 0 || count < 0 || offset + count > numel) {
    throw std::out_of_range(fmt::format("tensor slice [{}, {}) out of range of {} elements", offset,
                                        offset + count, numel));
  }
  Tensor t = *this;
  t.data = static_cast<char*>(data) + offset * static_cast<int64_t>(dtype_size(dtype));
  t.numel = count;
  return t;
}

}  // namespace moda
