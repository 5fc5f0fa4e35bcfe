// Byte-level BPE with tiktoken's semantics: the text is split into pieces by the encoding's
// regex (run by PCRE2), a piece that is a token is emitted as such, and any other piece is merged
// by tiktoken's byte_pair_merge (repeatedly merge the adjacent pair whose bytes form the token of
// lowest rank, leftmost on ties).
#pragma once

#include <absl/container/flat_hash_map.h>
#include <absl/strings/string_view.h>

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "moda/tokenizer.hpp"
#include "tokenizer/utf8.hpp"

struct pcre2_real_code_8;  // pcre2.h's compiled pattern; the header stays private to bpe.cpp

namespace moda {

// The two members moda reads from one of tiktoken's encoders/*.json.
struct TiktokenRanks {
  std::string pat_str;
  absl::flat_hash_map<std::string, int32_t> ranks;  // token bytes -> rank (= id)
};
// Reads `path`; throws std::runtime_error naming the file for anything malformed.
TiktokenRanks load_tiktoken_json(const std::string& path);

// Rewrites a tiktoken pat_str for PCRE2 so that its character classes mean what they mean to
// tiktoken's Rust regex: \s and \S become Unicode White_Space (PCRE2's \s also takes U+180E), and
// \p{L} / \p{N} gain the code points of `extra_letters` / `extra_numbers`.
std::string translate_pattern(std::string_view pat_str,
                              std::span<const utf8::CodeRange> extra_letters,
                              std::span<const utf8::CodeRange> extra_numbers);

struct BpeSpec {
  std::string name;
  std::string pat_str;  // tiktoken's
  absl::flat_hash_map<std::string, int32_t> ranks;
  std::vector<std::pair<std::string, int32_t>> specials;  // text -> id, decoded as their text
  int64_t vocab_size = 0;
  int32_t eos = 0;
  int32_t pad = 0;
};

class BpeTokenizer final : public Tokenizer {
 public:
  explicit BpeTokenizer(BpeSpec spec);
  ~BpeTokenizer() override;
  BpeTokenizer(const BpeTokenizer&) = delete;
  BpeTokenizer& operator=(const BpeTokenizer&) = delete;

  std::vector<int32_t> encode(std::string_view text) const override;
  void encode_append(std::string_view text, std::vector<int32_t>& out) const override;
  std::string decode(std::span<const int32_t> ids) const override;
  int64_t vocab_size() const override { return vocab_size_; }
  int32_t eos() const override { return eos_; }
  int32_t pad() const override { return pad_; }
  std::string name() const override { return name_; }

  // The ids of one piece of at least 2 bytes that is not a token: tiktoken's O(n^2) merge for
  // pieces up to kLinearMergeMax bytes, and for longer ones (runs of one character class can be
  // megabytes long) a heap-based merge that makes the same choices in O(n log n).
  void byte_pair_encode_linear(std::string_view piece, std::vector<int32_t>& out) const;
  void byte_pair_encode_heap(std::string_view piece, std::vector<int32_t>& out) const;
  static constexpr size_t kLinearMergeMax = 128;

 private:
  static constexpr uint32_t kNoRank = UINT32_MAX;
  uint32_t rank_of(std::string_view bytes) const {
    // Debian's Abseil has its own string_view type, not std::string_view.
    const auto it = ranks_.find(absl::string_view(bytes.data(), bytes.size()));
    return it == ranks_.end() ? kNoRank : static_cast<uint32_t>(it->second);
  }
  uint32_t pair_rank(const char* p) const {
    return pair_ranks_[static_cast<unsigned char>(p[0]) << 8 | static_cast<unsigned char>(p[1])];
  }
  void encode_piece(std::string_view piece, std::vector<int32_t>& out) const;
  void encode_valid_utf8(std::string_view text, std::vector<int32_t>& out) const;
  static pcre2_real_code_8* compile(const std::string& name, const std::string& pattern);

  std::string name_;
  int64_t vocab_size_;
  int32_t eos_, pad_;
  absl::flat_hash_map<std::string, int32_t> ranks_;
  uint64_t serial_;  // identifies this tokenizer's entries in the per-thread merge memo
  std::array<int32_t, 256> byte_ranks_{};
  std::vector<uint32_t> pair_ranks_;   // 65536 entries: the rank of every 2-byte token
  std::vector<std::string> id_bytes_;  // decode table; empty for ids that have no text
  // Pieces are cut by `plain_`, the pattern with PCRE2's own \p{L} and \p{N}, unless the text
  // holds one of the `extras_` code points that tiktoken's newer Unicode tables add
  // (unicode_compat.hpp); then by `extended_`, whose longer classes make PCRE2 about half as fast.
  pcre2_real_code_8* plain_ = nullptr;
  pcre2_real_code_8* extended_ = nullptr;
  std::vector<utf8::CodeRange> extras_;
};

}  // namespace moda
