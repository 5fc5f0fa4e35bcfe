#include "checkpoint/file_io.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <vector>

namespace moda::fileio {

namespace {

[[noreturn]] void fail_errno(const std::string& what, const std::string& path) {
  throw std::runtime_error(fmt::format("{} '{}': {}", what, path, std::strerror(errno)));
}

}  // namespace

void Crc32::update(const void* data, size_t bytes) {
  crc_ = static_cast<uint32_t>(
      crc32_z(crc_, static_cast<const Bytef*>(data), static_cast<z_size_t>(bytes)));
}

DurableFile::DurableFile(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) fail_errno("cannot create", path);
}

DurableFile::~DurableFile() {
  if (fd_ >= 0) ::close(fd_);
}

void DurableFile::write(const void* data, size_t bytes) {
  crc_.update(data, bytes);
  const char* p = static_cast<const char*>(data);
  size_t left = bytes;
  while (left > 0) {
    const ssize_t n = ::write(fd_, p, std::min<size_t>(left, size_t{1} << 30));
    if (n < 0) {
      if (errno == EINTR) continue;
      fail_errno("cannot write", path_);
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
  size_ += bytes;
}

void DurableFile::close() {
  if (fd_ < 0) return;
  if (::fsync(fd_) != 0) fail_errno("cannot fsync", path_);
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) fail_errno("cannot close", path_);
}

FileDigest write_file(const std::string& path, std::string_view text) {
  DurableFile f(path);
  f.write(text);
  f.close();
  return {f.size(), f.crc32()};
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(fmt::format("cannot read '{}'", path));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

FileDigest digest_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail_errno("cannot open", path);
  std::vector<char> buf(size_t{8} << 20);
  FileDigest d;
  Crc32 crc;
  for (;;) {
    const ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      ::close(fd);
      fail_errno("cannot read", path);
    }
    if (n == 0) break;
    crc.update(buf.data(), static_cast<size_t>(n));
    d.size += static_cast<uint64_t>(n);
  }
  ::close(fd);
  d.crc32 = crc.value();
  return d;
}

void fsync_dir(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) fail_errno("cannot open directory", path);
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) fail_errno("cannot fsync directory", path);
}

uint64_t tree_bytes(const std::string& dir) {
  uint64_t bytes = 0;
  std::error_code ec;
  for (auto it = std::filesystem::recursive_directory_iterator(dir, ec);
       !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    if (it->is_regular_file(ec)) bytes += it->file_size(ec);
  }
  return bytes;
}

}  // namespace moda::fileio
