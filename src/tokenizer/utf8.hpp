// UTF-8 validation for the BPE encoder: PCRE2 is run on valid UTF-8 only (with its own per-call
// check switched off, which would otherwise rescan the whole subject at every match), and the
// invalid bytes in between are encoded as pieces of their own.
#pragma once

#include <cstddef>
#include <span>
#include <string_view>

namespace moda::utf8 {

struct CodeRange {
  char32_t lo, hi;  // inclusive
};

// Length of the longest prefix of s that is well-formed UTF-8 (RFC 3629: no overlong forms, no
// surrogates, nothing above U+10FFFF, no truncated sequence).
size_t valid_prefix(std::string_view s);

// Number of bytes at the start of s before the next well-formed character (0 when s starts with
// one).
size_t invalid_prefix(std::string_view s);

// Whether the well-formed UTF-8 text holds a code point of `ranges` (sorted, disjoint).
bool contains_any(std::string_view text, std::span<const CodeRange> ranges);

}  // namespace moda::utf8
