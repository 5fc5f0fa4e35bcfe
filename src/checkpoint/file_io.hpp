// Durable file writes (write + fsync), directory fsync, and crc32 over files, for checkpoints and
// exports.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace moda::fileio {

// Accumulates a zlib crc32 over pieces of any size.
class Crc32 {
 public:
  void update(const void* data, size_t bytes);
  uint32_t value() const { return crc_; }

 private:
  uint32_t crc_ = 0;
};

// Writes a file in pieces, computing the crc32 and the size; close() fsyncs. Throws
// std::runtime_error naming the path on any error.
class DurableFile {
 public:
  explicit DurableFile(const std::string& path);
  ~DurableFile();
  DurableFile(const DurableFile&) = delete;
  DurableFile& operator=(const DurableFile&) = delete;
  void write(const void* data, size_t bytes);
  void write(std::string_view text) { write(text.data(), text.size()); }
  void close();  // fsync + close; idempotent
  uint32_t crc32() const { return crc_.value(); }
  uint64_t size() const { return size_; }

 private:
  std::string path_;
  int fd_ = -1;
  Crc32 crc_;
  uint64_t size_ = 0;
};

struct FileDigest {
  uint64_t size = 0;
  uint32_t crc32 = 0;
};
// Writes `text` durably to `path` and returns its digest.
FileDigest write_file(const std::string& path, std::string_view text);
// Reads a whole file; throws std::runtime_error naming it when it cannot be read.
std::string read_file(const std::string& path);
// Size and crc32 of a file, streamed.
FileDigest digest_file(const std::string& path);
// fsync of a directory (makes renames and new entries in it durable).
void fsync_dir(const std::string& path);
// Bytes of the regular files under a directory, recursively (0 for one that does not exist).
uint64_t tree_bytes(const std::string& dir);

}  // namespace moda::fileio
