#include "tokenizer/corpus.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>
#include <stdexcept>
#include <string_view>

#include "tokenizer/json_scan.hpp"

namespace moda {

namespace fs = std::filesystem;

namespace {

bool is_corpus_file(const std::string& path) {
  for (const char* ext : {".txt", ".md", ".jsonl", ".json.gz", ".jsonl.gz", ".txt.gz", ".md.gz"}) {
    if (path.ends_with(ext)) return true;
  }
  return false;
}

constexpr size_t kReadChunk = 1 << 20;

}  // namespace

bool is_jsonl(const std::string& path) {
  return path.ends_with(".jsonl") || path.ends_with(".jsonl.gz") || path.ends_with(".json.gz");
}

std::vector<std::string> list_input_files(const std::vector<std::string>& inputs) {
  std::vector<std::string> files;
  for (const std::string& input : inputs) {
    std::error_code ec;
    if (fs::is_directory(input, ec)) {
      std::vector<std::string> found;
      for (const auto& entry : fs::recursive_directory_iterator(input)) {
        if (entry.is_regular_file() && is_corpus_file(entry.path().string())) {
          found.push_back(entry.path().string());
        }
      }
      std::sort(found.begin(), found.end());
      files.insert(files.end(), found.begin(), found.end());
    } else if (fs::exists(input, ec)) {
      files.push_back(input);
    } else {
      throw std::runtime_error(fmt::format("input {} does not exist", input));
    }
  }
  if (files.empty()) {
    throw std::runtime_error(
        fmt::format("no input files (.txt, .md, .jsonl, .json.gz or .gz of them) in {}",
                    fmt::join(inputs, ", ")));
  }
  // A file reached twice (named twice, or named and inside a named directory) would put its
  // documents into the shards twice.
  std::map<fs::path, std::string> seen;
  for (const std::string& file : files) {
    std::error_code ec;
    const fs::path key = fs::weakly_canonical(file, ec);
    if (const auto [at, fresh] = seen.emplace(ec ? fs::path(file) : key, file); !fresh) {
      throw std::runtime_error(
          fmt::format("input file {} is given twice{}: its documents would be tokenized twice",
                      file, at->second == file ? "" : fmt::format(" (also as {})", at->second)));
    }
  }
  return files;
}

std::string document_text(const RawDocument& doc, const std::vector<std::string>& files) {
  if (!doc.json) return doc.data;
  try {
    std::optional<std::string> text = json::string_member(doc.data, "text");
    if (!text) throw std::runtime_error("no \"text\" member");
    return std::move(*text);
  } catch (const std::runtime_error& e) {
    throw std::runtime_error(fmt::format("{}:{}: {}", files[doc.file], doc.line, e.what()));
  }
}

CorpusReader::CorpusReader(std::vector<std::string> files) : files_(std::move(files)) {}

CorpusReader::~CorpusReader() { close_file(); }

void CorpusReader::close_file() {
  if (gz_ != nullptr) gzclose(gz_);
  gz_ = nullptr;
  buf_.clear();
  pos_ = 0;
}

bool CorpusReader::open_next_file() {
  if (next_file_ >= files_.size()) return false;
  const std::string& path = files_[next_file_++];
  gz_ = gzopen(path.c_str(), "rb");
  if (gz_ == nullptr) {
    throw std::runtime_error(fmt::format("cannot open {}: {}", path, std::strerror(errno)));
  }
  gzbuffer(gz_, kReadChunk);
  json_ = is_jsonl(path);
  line_ = 0;
  return true;
}

bool CorpusReader::fill() {
  buf_.erase(0, pos_);
  pos_ = 0;
  const size_t old = buf_.size();
  buf_.resize(old + kReadChunk);
  const int n = gzread(gz_, buf_.data() + old, static_cast<unsigned>(kReadChunk));
  // A gzip stream cut short (data or the 8-byte trailer missing) ends with n == 0 and
  // Z_BUF_ERROR ("unexpected end of file"), not with n < 0.
  int code = Z_OK;
  std::string_view msg = n <= 0 ? gzerror(gz_, &code) : "";
  if (n < 0 || code != Z_OK) {
    // zlib puts the path in front of most of its messages.
    const std::string& path = files_[next_file_ - 1];
    if (msg.starts_with(path + ": ")) msg.remove_prefix(path.size() + 2);
    throw std::runtime_error(fmt::format("cannot read {}: {}", path, msg));
  }
  buf_.resize(old + static_cast<size_t>(n));
  bytes_read_ += n;
  return n > 0;
}

bool CorpusReader::next(RawDocument& doc) {
  for (;;) {
    if (gz_ == nullptr && !open_next_file()) return false;
    doc.file = next_file_ - 1;
    doc.json = json_;
    if (!json_) {
      while (fill()) {
      }
      doc.data = std::move(buf_);
      doc.line = 0;
      close_file();
      return true;
    }
    // One JSONL line; the last may lack its newline. `scanned` avoids searching a long line's
    // start again after each read.
    size_t eol, scanned = pos_;
    while ((eol = buf_.find('\n', scanned)) == std::string::npos) {
      scanned = buf_.size() - pos_;  // where the new data will start once fill() shifts buf_
      if (!fill()) break;
    }
    if (eol == std::string::npos && pos_ >= buf_.size()) {
      close_file();
      continue;
    }
    const size_t end = eol == std::string::npos ? buf_.size() : eol;
    doc.line = ++line_;
    doc.data.assign(buf_, pos_, end - pos_);
    pos_ = eol == std::string::npos ? buf_.size() : eol + 1;
    if (doc.data.find_first_not_of(" \t\r") != std::string::npos) return true;
  }
}

}  // namespace moda
