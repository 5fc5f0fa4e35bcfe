#include "moda/tokenizer.hpp"

#include <fmt/format.h>

#include <cstdlib>
#include <filesystem>
#include <stdexcept>
#include <system_error>

#include "tokenizer/bpe.hpp"

namespace moda {

Tokenizer::~Tokenizer() = default;

namespace {

// Ids 0..255 are the bytes themselves; two specials follow.
class ByteTokenizer final : public Tokenizer {
 public:
  static constexpr int32_t kEos = 256;
  static constexpr int32_t kPad = 257;

  std::vector<int32_t> encode(std::string_view text) const override {
    std::vector<int32_t> out;
    encode_append(text, out);
    return out;
  }
  void encode_append(std::string_view text, std::vector<int32_t>& out) const override {
    out.reserve(out.size() + text.size());
    for (const char c : text) out.push_back(static_cast<unsigned char>(c));
  }
  std::string decode(std::span<const int32_t> ids) const override {
    std::string out;
    out.reserve(ids.size());
    for (const int32_t id : ids) {
      if (id < 0 || id > kPad) {
        throw std::out_of_range(fmt::format("tokenizer byte: id {} outside [0, 258)", id));
      }
      if (id < 256) {
        out += static_cast<char>(id);
      } else {
        out += id == kEos ? "<|endoftext|>" : "<|pad|>";
      }
    }
    return out;
  }
  int64_t vocab_size() const override { return 258; }
  int32_t eos() const override { return kEos; }
  int32_t pad() const override { return kPad; }
  std::string name() const override { return "byte"; }
};

std::unique_ptr<Tokenizer> make_bpe(BpeSpec spec, const std::string& file,
                                    const std::string& cache_dir) {
  const std::string path = (std::filesystem::path(cache_dir) / file).string();
  if (!std::filesystem::exists(path)) {
    throw std::runtime_error(fmt::format(
        "tokenizer {} needs {}, which is missing: run scripts/fetch_tokenizers.sh {} to fetch it",
        spec.name, path, cache_dir));
  }
  TiktokenRanks loaded = load_tiktoken_json(path);
  spec.pat_str = std::move(loaded.pat_str);
  spec.ranks = std::move(loaded.ranks);
  return std::make_unique<BpeTokenizer>(std::move(spec));
}

// The nearest of `start` and its ancestors that holds the repository's fetch script.
std::filesystem::path find_repo(std::filesystem::path start) {
  for (std::filesystem::path p = start; !p.empty(); p = p.parent_path()) {
    std::error_code ec;
    if (std::filesystem::exists(p / "scripts" / "fetch_tokenizers.sh", ec)) return p;
    if (p == p.parent_path()) break;
  }
  return {};
}

}  // namespace

std::unique_ptr<Tokenizer> make_tokenizer(const std::string& name, const std::string& cache_dir) {
  if (name == "byte") return std::make_unique<ByteTokenizer>();
  if (name == "gpt2") {
    BpeSpec spec;
    spec.name = "gpt2";
    spec.specials = {{"<|endoftext|>", 50256}};
    spec.vocab_size = 50257;
    spec.eos = spec.pad = 50256;
    return make_bpe(std::move(spec), "gpt2.json", cache_dir);
  }
  if (name == "dolma2") {
    // OLMo 2's allenai/dolma2-tokenizer: cl100k_base's ranks (0..100255) and pattern, with
    // cl100k's specials and <|pad|> after them. The other ids below 100278 are reserved and
    // decode to nothing.
    BpeSpec spec;
    spec.name = "dolma2";
    spec.specials = {{"<|endoftext|>", 100257},   {"<|fim_prefix|>", 100258},
                     {"<|fim_middle|>", 100259},  {"<|fim_suffix|>", 100260},
                     {"<|endofprompt|>", 100276}, {"<|pad|>", 100277}};
    spec.vocab_size = 100278;
    spec.eos = 100257;
    spec.pad = 100277;
    return make_bpe(std::move(spec), "cl100k_base.json", cache_dir);
  }
  throw std::invalid_argument(
      fmt::format("unknown tokenizer \"{}\" (known: byte, gpt2, dolma2)", name));
}

std::string default_tokenizer_cache() {
  if (const char* env = std::getenv("MODA_TOKENIZER_CACHE"); env != nullptr && *env != '\0') {
    return env;
  }
  std::error_code ec;
  const std::filesystem::path cwd = std::filesystem::current_path(ec);
  std::filesystem::path repo = find_repo(cwd);
  if (repo.empty()) {
    const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
    if (!ec) repo = find_repo(exe.parent_path());
  }
  return ((repo.empty() ? cwd : repo) / ".cache" / "tokenizers").string();
}

}  // namespace moda
