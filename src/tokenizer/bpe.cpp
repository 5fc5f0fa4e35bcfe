#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer/bpe.hpp"

#include <absl/strings/escaping.h>
#include <absl/strings/numbers.h>
#include <absl/strings/str_split.h>
#include <fmt/format.h>
#include <pcre2.h>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <functional>
#include <new>
#include <queue>
#include <sstream>
#include <stdexcept>

#include "tokenizer/json_scan.hpp"
#include "tokenizer/unicode_compat.hpp"
#include "tokenizer/utf8.hpp"

namespace moda {
namespace {

// Unicode White_Space, which is what \s means to Rust's regex crate (tiktoken's engine).
constexpr std::string_view kWhiteSpace =
    R"(\t-\r\x20\x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000})";

std::string pcre2_message(int code) {
  PCRE2_UCHAR buffer[256];
  pcre2_get_error_message(code, buffer, sizeof(buffer));
  return reinterpret_cast<const char*>(buffer);
}

// Per-thread PCRE2 match state, so that encode() allocates nothing per call and may run on many
// threads at once. The JIT stack grows up to 64 MiB for pathological inputs (megabytes of one
// character class).
struct MatchScratch {
  pcre2_match_data* data = pcre2_match_data_create(1, nullptr);
  pcre2_match_context* context = pcre2_match_context_create(nullptr);
  pcre2_jit_stack* stack = pcre2_jit_stack_create(32 * 1024, 64 * 1024 * 1024, nullptr);
  MatchScratch() {
    if (data == nullptr || context == nullptr || stack == nullptr) throw std::bad_alloc();
    pcre2_jit_stack_assign(context, nullptr, stack);
  }
  ~MatchScratch() {
    pcre2_jit_stack_free(stack);
    pcre2_match_context_free(context);
    pcre2_match_data_free(data);
  }
  MatchScratch(const MatchScratch&) = delete;
  MatchScratch& operator=(const MatchScratch&) = delete;
};

// Per-thread memo of the pieces that needed merging (pieces that are tokens are looked up
// directly). Text repeats its rare words, and a hit costs one lookup instead of one per merge
// step: about a fifth less time on source code and prose.
struct MergeMemo {
  // Bounds the memory (tens of MiB per thread): past them the memo starts afresh.
  static constexpr size_t kMaxPieces = 1 << 18;
  static constexpr size_t kMaxIds = 1 << 20;
  uint64_t owner = 0;  // serial of the tokenizer the entries belong to
  absl::flat_hash_map<std::string, std::pair<uint32_t, uint32_t>> spans;  // piece -> ids span
  std::vector<int32_t> ids;
};

MergeMemo& merge_memo() {
  thread_local MergeMemo memo;
  return memo;
}

std::atomic<uint64_t> next_serial{1};

MatchScratch& match_scratch() {
  thread_local MatchScratch scratch;
  return scratch;
}

}  // namespace

TiktokenRanks load_tiktoken_json(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(fmt::format("cannot read tokenizer file {}", path));
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string text = buffer.str();

  TiktokenRanks out;
  try {
    std::optional<std::string> pat = json::string_member(text, "pat_str");
    std::optional<std::string> bpe = json::string_member(text, "bpe_ranks");
    if (!pat || !bpe) throw std::runtime_error("needs the members pat_str and bpe_ranks");
    out.pat_str = std::move(*pat);
    // tiktoken's compact form (parse_bfe in tiktoken's wasm/src/lib.rs): lines of
    // "! FIRST_RANK B64 B64 ...", the tokens taking consecutive ranks from FIRST_RANK.
    std::string token;
    for (const absl::string_view line :
         absl::StrSplit(absl::string_view(bpe->data(), bpe->size()), '\n', absl::SkipEmpty())) {
      const std::vector<absl::string_view> fields = absl::StrSplit(line, ' ');
      int32_t first = 0;
      if (fields.size() < 2 || fields[0] != "!" || !absl::SimpleAtoi(fields[1], &first) ||
          first < 0) {
        throw std::runtime_error("bpe_ranks is not in tiktoken's \"! RANK B64...\" form");
      }
      out.ranks.reserve(out.ranks.size() + fields.size() - 2);
      for (size_t i = 2; i < fields.size(); ++i) {
        const int64_t rank = int64_t{first} + static_cast<int64_t>(i - 2);
        if (rank > INT32_MAX || !absl::Base64Unescape(fields[i], &token) || token.empty()) {
          throw std::runtime_error(fmt::format("bad token for rank {} in bpe_ranks", rank));
        }
        if (!out.ranks.emplace(token, static_cast<int32_t>(rank)).second) {
          throw std::runtime_error(fmt::format("duplicate token at rank {} in bpe_ranks", rank));
        }
      }
    }
  } catch (const std::runtime_error& e) {
    throw std::runtime_error(fmt::format("tokenizer file {}: {}", path, e.what()));
  }
  return out;
}

namespace {

std::string class_text(std::span<const utf8::CodeRange> ranges) {
  std::string out;
  for (const utf8::CodeRange& r : ranges) {
    out += fmt::format("\\x{{{:x}}}", static_cast<uint32_t>(r.lo));
    if (r.hi != r.lo) out += fmt::format("-\\x{{{:x}}}", static_cast<uint32_t>(r.hi));
  }
  return out;
}

}  // namespace

std::string translate_pattern(std::string_view pat, std::span<const utf8::CodeRange> extra_letters,
                              std::span<const utf8::CodeRange> extra_numbers) {
  const std::string letters = class_text(extra_letters);
  const std::string numbers = class_text(extra_numbers);
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < pat.size(); ++i) {
    const char c = pat[i];
    if (c != '\\') {
      if (c == '[') in_class = true;
      if (c == ']') in_class = false;
      out += c;
      continue;
    }
    if (i + 1 >= pat.size()) throw std::invalid_argument("pattern ends in a backslash");
    const char e = pat[i + 1];
    if (e == 's' || e == 'S') {
      if (in_class && e == 'S') throw std::invalid_argument("\\S inside [...] is not supported");
      out += in_class ? std::string(kWhiteSpace)
                      : fmt::format("[{}{}]", e == 'S' ? "^" : "", kWhiteSpace);
      ++i;
    } else if (pat.substr(i, 5) == "\\p{L}" || pat.substr(i, 5) == "\\p{N}") {
      const std::string_view prop = pat.substr(i, 5);
      const std::string& extra = prop[3] == 'L' ? letters : numbers;
      if (extra.empty()) {
        out += prop;
      } else {
        out += in_class ? fmt::format("{}{}", prop, extra) : fmt::format("[{}{}]", prop, extra);
      }
      i += 4;
    } else {
      out += c;
      out += e;
      ++i;
    }
  }
  return out;
}

pcre2_code* BpeTokenizer::compile(const std::string& name, const std::string& pattern) {
  int error = 0;
  PCRE2_SIZE offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                   PCRE2_UTF | PCRE2_UCP, &error, &offset, nullptr);
  if (code == nullptr) {
    throw std::runtime_error(
        fmt::format("tokenizer {}: pattern error at {}: {}", name, offset, pcre2_message(error)));
  }
  // Without JIT (a platform PCRE2 does not support) pcre2_match interprets: slower, same ids.
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  return code;
}

BpeTokenizer::BpeTokenizer(BpeSpec spec)
    : name_(std::move(spec.name)),
      vocab_size_(spec.vocab_size),
      eos_(spec.eos),
      pad_(spec.pad),
      ranks_(std::move(spec.ranks)),
      serial_(next_serial++),
      pair_ranks_(65536, kNoRank),
      id_bytes_(static_cast<size_t>(spec.vocab_size)) {
  for (const auto& [bytes, rank] : ranks_) {
    if (rank < 0 || rank >= vocab_size_) {
      throw std::runtime_error(fmt::format("tokenizer {}: rank {} outside the vocabulary of {}",
                                           name_, rank, vocab_size_));
    }
    id_bytes_[rank] = bytes;
    if (bytes.size() == 2)
      pair_ranks_[static_cast<unsigned char>(bytes[0]) << 8 |
                  static_cast<unsigned char>(bytes[1])] = rank;
  }
  for (int b = 0; b < 256; ++b) {
    const uint32_t r = rank_of(std::string(1, static_cast<char>(b)));
    if (r == kNoRank) {
      throw std::runtime_error(fmt::format("tokenizer {}: no token for byte {}", name_, b));
    }
    byte_ranks_[b] = static_cast<int32_t>(r);
  }
  for (const auto& [text, id] : spec.specials) {
    if (id < 0 || id >= vocab_size_ || !id_bytes_[id].empty()) {
      throw std::runtime_error(fmt::format("tokenizer {}: bad id {} for {}", name_, id, text));
    }
    id_bytes_[id] = text;
  }

  extras_.assign(std::begin(kTiktokenExtraLetters), std::end(kTiktokenExtraLetters));
  extras_.insert(extras_.end(), std::begin(kTiktokenExtraNumbers), std::end(kTiktokenExtraNumbers));
  std::sort(extras_.begin(), extras_.end(),
            [](const utf8::CodeRange& a, const utf8::CodeRange& b) { return a.lo < b.lo; });
  plain_ = compile(name_, translate_pattern(spec.pat_str, {}, {}));
  try {
    extended_ = compile(
        name_, translate_pattern(spec.pat_str, kTiktokenExtraLetters, kTiktokenExtraNumbers));
  } catch (...) {
    pcre2_code_free(plain_);
    throw;
  }
}

BpeTokenizer::~BpeTokenizer() {
  pcre2_code_free(plain_);
  pcre2_code_free(extended_);
}

std::vector<int32_t> BpeTokenizer::encode(std::string_view text) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3);
  encode_append(text, out);
  return out;
}

void BpeTokenizer::encode_append(std::string_view text, std::vector<int32_t>& out) const {
  while (!text.empty()) {
    const size_t valid = utf8::valid_prefix(text);
    encode_valid_utf8(text.substr(0, valid), out);
    text.remove_prefix(valid);
    // Bytes that are not UTF-8 cannot reach tiktoken (its input is a string); they become one
    // piece per run, so that every byte sequence encodes and decodes back unchanged.
    const size_t invalid = utf8::invalid_prefix(text);
    if (invalid > 0) encode_piece(text.substr(0, invalid), out);
    text.remove_prefix(invalid);
  }
}

void BpeTokenizer::encode_valid_utf8(std::string_view text, std::vector<int32_t>& out) const {
  MatchScratch& scratch = match_scratch();
  pcre2_code* const code = utf8::contains_any(text, extras_) ? extended_ : plain_;
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(scratch.data);
  size_t pos = 0;
  while (pos < text.size()) {
    const int rc = pcre2_match(code, subject, text.size(), pos, PCRE2_NO_UTF_CHECK, scratch.data,
                               scratch.context);
    if (rc < 0) {
      throw std::runtime_error(fmt::format("tokenizer {}: regex match failed at byte {}: {}", name_,
                                           pos, pcre2_message(rc)));
    }
    // The encodings' patterns match every character, so matches tile the text as in tiktoken.
    if (ovector[0] != pos || ovector[1] <= pos) {
      throw std::logic_error(
          fmt::format("tokenizer {}: pattern left a gap at byte {}", name_, pos));
    }
    encode_piece(text.substr(pos, ovector[1] - pos), out);
    pos = ovector[1];
  }
}

void BpeTokenizer::encode_piece(std::string_view piece, std::vector<int32_t>& out) const {
  if (piece.size() == 1) {
    out.push_back(byte_ranks_[static_cast<unsigned char>(piece[0])]);
    return;
  }
  const uint32_t whole = rank_of(piece);
  if (whole != kNoRank) {
    out.push_back(static_cast<int32_t>(whole));
    return;
  }
  if (piece.size() > kLinearMergeMax) {
    byte_pair_encode_heap(piece, out);
    return;
  }
  MergeMemo& memo = merge_memo();
  if (memo.owner != serial_ || memo.spans.size() >= MergeMemo::kMaxPieces ||
      memo.ids.size() >= MergeMemo::kMaxIds) {
    memo.owner = serial_;
    memo.spans.clear();
    memo.ids.clear();
  }
  const absl::string_view key(piece.data(), piece.size());
  if (const auto it = memo.spans.find(key); it != memo.spans.end()) {
    const auto first = memo.ids.begin() + it->second.first;
    out.insert(out.end(), first, first + it->second.second);
    return;
  }
  const size_t before = out.size();
  byte_pair_encode_linear(piece, out);
  memo.spans.emplace(key, std::pair(static_cast<uint32_t>(memo.ids.size()),
                                    static_cast<uint32_t>(out.size() - before)));
  memo.ids.insert(memo.ids.end(), out.begin() + before, out.end());
}

// tiktoken's byte_pair_merge as it is: parts[i] = (start of part i, rank of merging parts i and
// i + 1); merge the leftmost minimum, refresh the two ranks around it, repeat.
void BpeTokenizer::byte_pair_encode_linear(std::string_view piece,
                                           std::vector<int32_t>& out) const {
  struct Part {
    uint32_t start, rank;
  };
  const size_t n = piece.size();
  if (n < 2 || n > kLinearMergeMax) throw std::invalid_argument("piece length out of range");
  Part parts[kLinearMergeMax + 1];
  size_t count = n + 1;
  for (size_t i = 0; i + 1 < n; ++i) parts[i] = {static_cast<uint32_t>(i), pair_rank(&piece[i])};
  parts[n - 1] = {static_cast<uint32_t>(n - 1), kNoRank};
  parts[n] = {static_cast<uint32_t>(n), kNoRank};

  // Rank of parts i and i + 1 merged, once parts holds the merge of the step.
  auto merged_rank = [&](size_t i) {
    if (i + 2 >= count) return kNoRank;
    return rank_of(piece.substr(parts[i].start, parts[i + 2].start - parts[i].start));
  };
  for (;;) {
    uint32_t min_rank = kNoRank;
    size_t at = 0;
    for (size_t i = 0; i + 1 < count; ++i) {
      if (parts[i].rank < min_rank) {
        min_rank = parts[i].rank;
        at = i;
      }
    }
    if (min_rank == kNoRank) break;
    std::copy(parts + at + 2, parts + count, parts + at + 1);
    --count;
    parts[at].rank = merged_rank(at);
    if (at > 0) parts[at - 1].rank = merged_rank(at - 1);
  }
  for (size_t i = 0; i + 1 < count; ++i) {
    out.push_back(static_cast<int32_t>(
        rank_of(piece.substr(parts[i].start, parts[i + 1].start - parts[i].start))));
  }
}

// The same merge order with a heap of (rank, start) and a linked list of parts. Part k starts at
// byte k; rank[k] is that of merging part k with the next one. A heap entry is current when its
// part is alive with that rank (equal ranks mean equal bytes, hence the same merge).
void BpeTokenizer::byte_pair_encode_heap(std::string_view piece, std::vector<int32_t>& out) const {
  const uint32_t n = static_cast<uint32_t>(piece.size());
  std::vector<uint32_t> next(n + 1), prev(n + 1), rank(n + 1, kNoRank);
  std::vector<bool> alive(n + 1, true);
  using Entry = std::pair<uint32_t, uint32_t>;  // (rank, start): leftmost minimum first
  std::priority_queue<Entry, std::vector<Entry>, std::greater<>> heap;
  for (uint32_t k = 0; k <= n; ++k) {
    next[k] = k + 1;
    prev[k] = k - 1;  // prev[0] is never read
  }
  for (uint32_t k = 0; k + 1 < n; ++k) {
    rank[k] = pair_rank(&piece[k]);
    if (rank[k] != kNoRank) heap.emplace(rank[k], k);
  }
  auto refresh = [&](uint32_t k) {
    const uint32_t m = next[k];
    rank[k] = m >= n ? kNoRank : rank_of(piece.substr(k, next[m] - k));
    if (rank[k] != kNoRank) heap.emplace(rank[k], k);
  };
  while (!heap.empty()) {
    const auto [r, k] = heap.top();
    heap.pop();
    if (!alive[k] || rank[k] != r) continue;
    const uint32_t m = next[k];
    alive[m] = false;
    next[k] = next[m];
    prev[next[m]] = k;
    refresh(k);
    if (k > 0) refresh(prev[k]);
  }
  for (uint32_t k = 0; k < n; k = next[k]) {
    out.push_back(static_cast<int32_t>(rank_of(piece.substr(k, next[k] - k))));
  }
}

std::string BpeTokenizer::decode(std::span<const int32_t> ids) const {
  std::string out;
  for (const int32_t id : ids) {
    if (id < 0 || id >= vocab_size_) {
      throw std::out_of_range(
          fmt::format("tokenizer {}: id {} outside [0, {})", name_, id, vocab_size_));
    }
    out += id_bytes_[id];
  }
  return out;
}

}  // namespace moda
