// Text inputs of `moda tokenize`: plain text files (one file = one document; blank lines do not
// split it) and JSONL files (the "text" member of each line = one document), either possibly
// gzip-compressed. Documents come out in a fixed order: files sorted, lines in file order.
#pragma once

#include <zlib.h>

#include <cstdint>
#include <string>
#include <vector>

namespace moda {

// The files named by `inputs`, in order. A directory contributes, recursively and sorted, its
// files ending in .txt, .md, .jsonl, .json.gz, .jsonl.gz, .txt.gz or .md.gz; a file named
// directly is always taken. Throws std::runtime_error for a missing input, an empty result or a
// file reached twice.
std::vector<std::string> list_input_files(const std::vector<std::string>& inputs);

// JSONL: .jsonl, .jsonl.gz, .json.gz (Dolma's name for gzipped JSONL); anything else is text.
bool is_jsonl(const std::string& path);

struct RawDocument {
  std::string data;  // a JSONL line (decoded later, on a worker thread) or a text file's content
  bool json = false;
  size_t file = 0;   // index into the file list
  int64_t line = 0;  // 1-based line of a JSONL document
};

// The document's text: `data` itself, or its JSONL line's "text" member. Throws
// std::runtime_error naming file and line for a malformed line or one without "text".
std::string document_text(const RawDocument& doc, const std::vector<std::string>& files);

// Reads the documents of the files one after another (zlib's gzread reads plain and gzip files
// alike).
class CorpusReader {
 public:
  explicit CorpusReader(std::vector<std::string> files);
  ~CorpusReader();
  CorpusReader(const CorpusReader&) = delete;
  CorpusReader& operator=(const CorpusReader&) = delete;

  // The next document (empty JSONL lines are skipped); false after the last one.
  bool next(RawDocument& doc);
  const std::vector<std::string>& files() const { return files_; }
  int64_t bytes_read() const { return bytes_read_; }  // uncompressed

 private:
  bool open_next_file();
  void close_file();
  bool fill();  // reads more of the current file into buf_; false at its end

  std::vector<std::string> files_;
  size_t next_file_ = 0;
  gzFile gz_ = nullptr;
  std::string buf_;
  size_t pos_ = 0;  // start of the unread part of buf_
  bool json_ = false;
  int64_t line_ = 0;
  int64_t bytes_read_ = 0;
};

}  // namespace moda
