// Tokenizers: text <-> token ids. "byte" needs no files; "gpt2" and "dolma2" are byte-level BPE
// over tiktoken rank files that scripts/fetch_tokenizers.sh puts into the tokenizer cache, and
// they produce exactly tiktoken's ids (docs/data.md, docs/benchmarks.md).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace moda {

class Tokenizer {
 public:
  virtual ~Tokenizer();
  // Ordinary text: special tokens are NOT recognised, "<|endoftext|>" is encoded as its
  // characters. Any bytes are accepted (invalid UTF-8 is kept, see docs/data.md), and
  // decode(encode(text)) == text. Safe to call from several threads at once.
  virtual std::vector<int32_t> encode(std::string_view text) const = 0;
  // Appends the ids of `text` to `out`; lets a caller reuse one buffer.
  virtual void encode_append(std::string_view text, std::vector<int32_t>& out) const = 0;
  // Concatenated bytes of the tokens (special tokens as their text). Throws std::out_of_range
  // for an id outside [0, vocab_size()).
  virtual std::string decode(std::span<const int32_t> ids) const = 0;
  virtual int64_t vocab_size() const = 0;  // unpadded: every id is < this
  virtual int32_t eos() const = 0;
  virtual int32_t pad() const = 0;
  virtual std::string name() const = 0;
};

// name: "byte" | "gpt2" | "dolma2". cache_dir holds the rank files of the BPE tokenizers; a
// missing file throws std::runtime_error telling to run scripts/fetch_tokenizers.sh.
std::unique_ptr<Tokenizer> make_tokenizer(const std::string& name, const std::string& cache_dir);

// $MODA_TOKENIZER_CACHE, else <repo>/.cache/tokenizers where <repo> is the nearest ancestor of
// the working directory (or of the running binary) holding scripts/fetch_tokenizers.sh, else
// <cwd>/.cache/tokenizers.
std::string default_tokenizer_cache();

}  // namespace moda
