#include "tokenizer/utf8.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace moda::utf8 {
namespace {

// Length of the well-formed character at p (n bytes available), 0 when there is none.
size_t char_length(const unsigned char* p, size_t n) {
  const unsigned char c = p[0];
  if (c < 0x80) return 1;
  auto cont = [&](size_t k) { return k < n && (p[k] & 0xC0) == 0x80; };
  if (c >= 0xC2 && c <= 0xDF) return cont(1) ? 2 : 0;
  if (c >= 0xE0 && c <= 0xEF) {
    if (!cont(1) || !cont(2)) return 0;
    if (c == 0xE0 && p[1] < 0xA0) return 0;   // overlong
    if (c == 0xED && p[1] >= 0xA0) return 0;  // surrogate
    return 3;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    if (!cont(1) || !cont(2) || !cont(3)) return 0;
    if (c == 0xF0 && p[1] < 0x90) return 0;   // overlong
    if (c == 0xF4 && p[1] >= 0x90) return 0;  // above U+10FFFF
    return 4;
  }
  return 0;
}

}  // namespace

size_t valid_prefix(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    // ASCII fast path, 8 bytes at a time: most text is mostly ASCII.
    while (i + 8 <= n) {
      uint64_t w;
      std::memcpy(&w, p + i, 8);
      if (w & 0x8080808080808080ull) break;
      i += 8;
    }
    if (i >= n) break;
    const size_t len = char_length(p + i, n - i);
    if (len == 0) break;
    i += len;
  }
  return i;
}

size_t invalid_prefix(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  size_t i = 0;
  while (i < s.size() && char_length(p + i, s.size() - i) == 0) ++i;
  return i;
}

bool contains_any(std::string_view text, std::span<const CodeRange> ranges) {
  if (ranges.empty()) return false;
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  const char32_t lowest = ranges.front().lo;
  size_t i = 0;
  while (i < n) {
    const unsigned char c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    char32_t cp;
    size_t len;
    if (c < 0xE0) {
      cp = (c & 0x1Fu) << 6 | (p[i + 1] & 0x3Fu);
      len = 2;
    } else if (c < 0xF0) {
      cp = (c & 0x0Fu) << 12 | (p[i + 1] & 0x3Fu) << 6 | (p[i + 2] & 0x3Fu);
      len = 3;
    } else {
      cp = (c & 0x07u) << 18 | (p[i + 1] & 0x3Fu) << 12 | (p[i + 2] & 0x3Fu) << 6 |
           (p[i + 3] & 0x3Fu);
      len = 4;
    }
    i += len;
    if (cp < lowest) continue;
    const auto it = std::upper_bound(ranges.begin(), ranges.end(), cp,
                                     [](char32_t v, const CodeRange& r) { return v < r.lo; });
    if (it != ranges.begin() && cp <= std::prev(it)->hi) return true;
  }
  return false;
}

}  // namespace moda::utf8
