// Builds the train and validation token stores of a config's data section: the embedded KJV
// excerpt or text files (tokenized at start, one document per file / per blank-line-separated
// chapter of the excerpt), or pre-tokenized shards (memory-mapped).
#include <absl/strings/str_split.h>
#include <fmt/format.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "assets/assets.hpp"
#include "data/shards.hpp"
#include "moda/data.hpp"
#include "moda/tokenizer.hpp"

namespace moda {

namespace {

bool is_text_source(const std::string& source, const std::string& format) {
  if (source == "embedded") return true;
  if (format == "text") return true;
  if (format != "auto") return false;
  const std::string ext = std::filesystem::path(source).extension().string();
  return ext == ".txt" || ext == ".md";
}

std::string read_text_file(const std::string& path) {
  // An ifstream opens a directory and reads nothing: it would pass as an empty document.
  if (std::filesystem::is_directory(path)) {
    throw std::runtime_error(
        fmt::format("text file '{}' is a directory; name the files in it", path));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw std::runtime_error(
        fmt::format("cannot read text file '{}': {}", path, std::strerror(errno)));
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

Dataset open_dataset(const DataConfig& data, int64_t seq_len, const DatasetNames& names) {
  auto tokenizer = make_tokenizer(data.tokenizer, default_tokenizer_cache());
  Dataset ds;
  ds.vocab_size = tokenizer->vocab_size();
  ds.eos = tokenizer->eos();
  const int64_t window = seq_len + 1;

  auto text_documents = [&](const std::vector<std::string>& sources) {
    std::vector<std::string> docs;
    for (const std::string& src : sources) {
      if (src == "embedded") {
        // Debian's Abseil has its own string_view type, distinct from std::string_view.
        const std::string_view corpus = assets::tiny_corpus();
        for (absl::string_view chapter : absl::StrSplit(
                 absl::string_view(corpus.data(), corpus.size()), "\n\n", absl::SkipWhitespace())) {
          docs.emplace_back(chapter.data(), chapter.size());
        }
      } else {
        for (const std::string& path : expand_data_paths(src)) docs.push_back(read_text_file(path));
      }
    }
    return docs;
  };
  auto encode_all = [&](const std::vector<std::string>& docs, const std::vector<size_t>& pick) {
    std::vector<int32_t> tokens;
    for (size_t i : pick) {
      tokenizer->encode_append(docs[i], tokens);
      tokens.push_back(tokenizer->eos());
    }
    return tokens;
  };

  const bool text_train =
      std::all_of(data.train.begin(), data.train.end(),
                  [&](const std::string& s) { return is_text_source(s, data.format); });
  const bool any_text =
      std::any_of(data.train.begin(), data.train.end(),
                  [&](const std::string& s) { return is_text_source(s, data.format); });
  if (any_text && !text_train) {
    throw std::runtime_error(fmt::format(
        "{} mixes text sources and token shards; tokenize the text first (moda tokenize) or list "
        "only one kind",
        names.train));
  }
  const std::string train_desc = fmt::format("{} [{}]", names.train, fmt::join(data.train, ", "));
  if (text_train) {
    const std::vector<std::string> docs = text_documents(data.train);
    std::vector<size_t> train_ids, val_ids;
    for (size_t i = 0; i < docs.size(); ++i) {
      (data.val.empty() && is_val_document(data.seed, static_cast<int64_t>(i), data.val_fraction)
           ? val_ids
           : train_ids)
          .push_back(i);
    }
    ds.train = std::make_shared<MemoryTokenStore>(
        encode_all(docs, train_ids),
        fmt::format("{} ({} documents)", train_desc, train_ids.size()));
    if (data.val.empty()) {
      ds.val = std::make_shared<MemoryTokenStore>(
          encode_all(docs, val_ids),
          fmt::format("held-out documents of {} ({})", train_desc, val_ids.size()));
    }
  } else {
    std::shared_ptr<const TokenStore> all =
        open_shards(data.train, data.format, data.dtype, ds.vocab_size, window);
    if (data.val.empty()) {
      // Shards carry no document index here: hold out the tail.
      const auto val_tokens =
          static_cast<int64_t>(static_cast<double>(all->size()) * data.val_fraction);
      ds.train = std::make_shared<SliceTokenStore>(all, 0, all->size() - val_tokens);
      ds.val = std::make_shared<SliceTokenStore>(all, all->size() - val_tokens, val_tokens);
    } else {
      ds.train = all;
    }
  }
  if (!data.val.empty()) {
    const bool text_val = std::all_of(data.val.begin(), data.val.end(), [&](const std::string& s) {
      return is_text_source(s, data.format);
    });
    if (text_val) {
      const std::vector<std::string> docs = text_documents(data.val);
      std::vector<size_t> all_ids(docs.size());
      for (size_t i = 0; i < docs.size(); ++i) all_ids[i] = i;
      ds.val = std::make_shared<MemoryTokenStore>(
          encode_all(docs, all_ids), fmt::format("data.val [{}]", fmt::join(data.val, ", ")));
    } else {
      ds.val = open_shards(data.val, data.format, data.dtype, ds.vocab_size, window);
    }
  }
  if (ds.train->size() < window) {
    throw std::runtime_error(fmt::format("{} has {} tokens, fewer than one window of {} ({} + 1)",
                                         ds.train->describe(), ds.train->size(), window,
                                         names.seq_len));
  }
  if (ds.val && ds.val->size() < window) ds.val.reset();  // too small to validate on
  return ds;
}

SliceTokenStore::SliceTokenStore(std::shared_ptr<const TokenStore> base, int64_t offset,
                                 int64_t count)
    : base_(std::move(base)), offset_(offset), count_(count) {}

void SliceTokenStore::read(int64_t offset, int64_t count, int32_t* out) const {
  if (offset < 0 || offset + count > count_) {
    throw std::out_of_range(fmt::format("token read [{}, {}) beyond the {} tokens of {}", offset,
                                        offset + count, count_, describe()));
  }
  base_->read(offset_ + offset, count, out);
}

std::string SliceTokenStore::describe() const {
  return fmt::format("tokens [{}, {}) of {}", offset_, offset_ + count_, base_->describe());
}

}  // namespace moda
