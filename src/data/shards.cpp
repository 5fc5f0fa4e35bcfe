#include "data/shards.hpp"

#include <absl/strings/numbers.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <glob.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "moda/tokenizer.hpp"
#include "tokenizer/corpus.hpp"
#include "tokenizer/json_scan.hpp"

namespace moda {

// Shards are little-endian; so is every machine moda runs on, which lets the readers map them.
static_assert(std::endian::native == std::endian::little);

namespace fs = std::filesystem;

TokenDtype parse_dtype(const std::string& s) {
  if (s == "uint16") return TokenDtype::uint16;
  if (s == "uint32") return TokenDtype::uint32;
  throw std::invalid_argument(fmt::format("unknown token dtype \"{}\" (uint16 or uint32)", s));
}

const char* to_string(TokenDtype d) { return d == TokenDtype::uint16 ? "uint16" : "uint32"; }

TokenDtype dtype_for_vocab(int64_t vocab_size) {
  return vocab_size <= 65536 ? TokenDtype::uint16 : TokenDtype::uint32;
}

ShardFormat parse_format(const std::string& s) {
  if (s == "npy") return ShardFormat::npy;
  if (s == "bin") return ShardFormat::bin;
  throw std::invalid_argument(fmt::format("unknown shard format \"{}\" (npy or bin)", s));
}

const char* to_string(ShardFormat f) { return f == ShardFormat::npy ? "npy" : "bin"; }

namespace {

size_t dtype_bytes(TokenDtype d) { return d == TokenDtype::uint16 ? 2 : 4; }

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw std::runtime_error(fmt::format("shard file {}: {}", path, what));
}

// A read-only memory map of a whole file.
class MappedFile {
 public:
  explicit MappedFile(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail(path, fmt::format("cannot open: {}", std::strerror(errno)));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      const int err = errno;
      ::close(fd);
      fail(path, fmt::format("cannot stat: {}", std::strerror(err)));
    }
    size_ = static_cast<size_t>(st.st_size);
    if (size_ > 0) {
      void* p = ::mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd, 0);
      const int err = errno;
      ::close(fd);
      if (p == MAP_FAILED) fail(path, fmt::format("cannot map: {}", std::strerror(err)));
      data_ = static_cast<const unsigned char*>(p);
    } else {
      ::close(fd);
    }
  }
  ~MappedFile() {
    if (data_ != nullptr) ::munmap(const_cast<unsigned char*>(data_), size_);
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const unsigned char* data() const { return data_; }
  size_t size() const { return size_; }
  // Hints the kernel to read ahead (for the one full scan at open) or not.
  void advise(int advice) const {
    if (data_ != nullptr) ::madvise(const_cast<unsigned char*>(data_), size_, advice);
  }

 private:
  const unsigned char* data_ = nullptr;
  size_t size_ = 0;
};

struct Shard {
  std::string path;
  std::unique_ptr<MappedFile> map;
  const unsigned char* tokens = nullptr;
  TokenDtype dtype = TokenDtype::uint16;
  int64_t count = 0;
  int64_t start = 0;  // offset of its first token in the store
};

// Index of the first token >= limit, or -1. Blocks of a fixed length keep the max reduction
// vectorizable, so the check runs at memory speed.
template <typename T>
int64_t first_at_or_above(const T* p, int64_t n, uint64_t limit) {
  constexpr int64_t kBlock = 4096;
  int64_t i = 0;
  for (; i + kBlock <= n; i += kBlock) {
    T m = 0;
    for (int64_t k = 0; k < kBlock; ++k) m = std::max(m, p[i + k]);
    if (m >= limit) break;
  }
  for (; i < n; ++i) {
    if (p[i] >= limit) return i;
  }
  return -1;
}

class ShardStore final : public TokenStore {
 public:
  explicit ShardStore(std::vector<Shard> shards) : shards_(std::move(shards)) {
    for (Shard& s : shards_) {
      s.start = total_;
      total_ += s.count;
    }
  }
  int64_t size() const override { return total_; }

  void read(int64_t offset, int64_t count, int32_t* out) const override {
    if (offset < 0 || count < 0 || offset + count > total_) {
      throw std::out_of_range(fmt::format("read of [{}, {}) from a store of {} tokens", offset,
                                          offset + count, total_));
    }
    // The last shard starting at or before offset; empty shards on the way copy nothing.
    size_t i = static_cast<size_t>(
        std::upper_bound(shards_.begin(), shards_.end(), offset,
                         [](int64_t v, const Shard& s) { return v < s.start; }) -
        shards_.begin() - 1);
    for (; count > 0; ++i) {
      const Shard& s = shards_[i];
      const int64_t at = offset - s.start;
      const int64_t n = std::min(count, s.count - at);
      if (s.dtype == TokenDtype::uint16) {
        const auto* p = reinterpret_cast<const uint16_t*>(s.tokens) + at;
        std::copy(p, p + n, out);
      } else {
        const auto* p = reinterpret_cast<const uint32_t*>(s.tokens) + at;
        std::transform(p, p + n, out, [](uint32_t v) { return static_cast<int32_t>(v); });
      }
      out += n;
      offset += n;
      count -= n;
    }
  }

  std::string describe() const override {
    const std::string files =
        shards_.size() == 1 ? shards_[0].path
                            : fmt::format("{} .. {}", shards_.front().path, shards_.back().path);
    return fmt::format("{} shard file{} ({}), {} tokens", shards_.size(),
                       shards_.size() == 1 ? "" : "s", files, total_);
  }

 private:
  std::vector<Shard> shards_;
  int64_t total_ = 0;
};

const ShardManifest* manifest_near(const std::string& path,
                                   std::map<std::string, std::optional<ShardManifest>>& cache) {
  const std::string dir = fs::path(path).parent_path().string();
  auto it = cache.find(dir);
  if (it == cache.end()) it = cache.emplace(dir, read_manifest(dir.empty() ? "." : dir)).first;
  return it->second ? &*it->second : nullptr;
}

// uint32 tokens read as uint16: every high half is 0 and passes the vocabulary check, which for
// vocabularies above 65535 (dolma2) can never catch it. Looks at the first 64Ki values; a file of
// fewer than 64 is not judged (a few zeros by chance are not a pattern).
bool looks_like_uint32(const uint16_t* tokens, int64_t count) {
  const int64_t n = std::min<int64_t>(count, int64_t{1} << 16);
  if (n < 64) return false;
  bool even_nonzero = false;
  for (int64_t i = 0; i + 1 < n; i += 2) {
    if (tokens[i + 1] != 0) return false;
    even_nonzero |= tokens[i] != 0;
  }
  return even_nonzero;
}

Shard open_one(const std::string& path, const std::string& format, const std::string& dtype,
               int64_t vocab_size, std::map<std::string, std::optional<ShardManifest>>& manifests) {
  Shard s;
  s.path = path;
  std::string fmt_name = format;
  if (fmt_name == "auto") {
    const std::string ext = fs::path(path).extension().string();
    if (ext != ".npy" && ext != ".bin") {
      fail(path, ext == ".txt" || ext == ".md"
                     ? "is a text file among token shards: text and shards do not mix in one "
                       "list, so a glob must name the extension (DIR/*.npy, DIR/*.txt)"
                     : "cannot tell the format from the extension (.npy or .bin); set the format");
    }
    fmt_name = ext.substr(1);
  }
  const ShardFormat shard_format = parse_format(fmt_name);
  s.map = std::make_unique<MappedFile>(path);
  const unsigned char* data = s.map->data();
  const size_t size = s.map->size();
  std::optional<TokenDtype> wanted;
  if (dtype != "auto") wanted = parse_dtype(dtype);

  size_t header = 0;
  if (shard_format == ShardFormat::bin) {
    header = kLlmcHeaderInts * sizeof(int32_t);
    if (size < header) fail(path, fmt::format("{} bytes is too short for an llm.c header", size));
    int32_t h[3];
    std::memcpy(h, data, sizeof(h));
    if (h[0] != kLlmcMagic) {
      fail(path, fmt::format("bad magic {} (llm.c .bin files start with {})", h[0], kLlmcMagic));
    }
    if (h[1] != 1 && h[1] != 2) {
      fail(path, fmt::format("unsupported version {} (1: uint16 tokens, 2: uint32)", h[1]));
    }
    s.dtype = h[1] == 1 ? TokenDtype::uint16 : TokenDtype::uint32;
    if (wanted && *wanted != s.dtype) {
      fail(path, fmt::format("holds {} tokens, not the {} asked for", to_string(s.dtype), dtype));
    }
    const uint64_t bytes = size - header;
    if (h[2] < 0 || static_cast<uint64_t>(h[2]) * dtype_bytes(s.dtype) != bytes) {
      fail(path,
           fmt::format("header says {} tokens but the file holds {} bytes of tokens", h[2], bytes));
    }
  } else {
    const ShardManifest* manifest = manifest_near(path, manifests);
    if (wanted && manifest != nullptr && *wanted != manifest->dtype) {
      fail(path, fmt::format("data.dtype is {} but the {} beside it says {}", dtype, kManifestName,
                             to_string(manifest->dtype)));
    }
    if (wanted) {
      s.dtype = *wanted;
    } else if (manifest != nullptr) {
      s.dtype = manifest->dtype;
    } else {
      fail(path, fmt::format("dtype unknown: no {} beside it; set the dtype (uint16 or uint32)",
                             kManifestName));
    }
    if (size >= 6 && std::memcmp(data, "\x93NUMPY", 6) == 0) {
      fail(path, "has a NumPy header; token .npy files are raw arrays (OLMo-core's layout)");
    }
    if (size % dtype_bytes(s.dtype) != 0) {
      fail(path, fmt::format("size {} is not a multiple of {} bytes ({})", size,
                             dtype_bytes(s.dtype), to_string(s.dtype)));
    }
    if (manifest != nullptr) {
      const std::string name = fs::path(path).filename().string();
      for (const ShardFileInfo& f : manifest->files) {
        if (f.name == name &&
            f.tokens * static_cast<int64_t>(dtype_bytes(s.dtype)) != static_cast<int64_t>(size)) {
          fail(path, fmt::format("{} says {} tokens but the file has {} bytes", kManifestName,
                                 f.tokens, size));
        }
      }
    }
  }
  s.tokens = data + header;
  s.count = static_cast<int64_t>((size - header) / dtype_bytes(s.dtype));
  if (shard_format != ShardFormat::bin && s.dtype == TokenDtype::uint16 &&
      looks_like_uint32(reinterpret_cast<const uint16_t*>(s.tokens), s.count)) {
    fail(path,
         "looks like uint32 tokens (every odd uint16 of its start is 0, the even ones are "
         "not); set data.dtype: uint32");
  }

  s.map->advise(MADV_SEQUENTIAL);
  const int64_t bad = s.dtype == TokenDtype::uint16
                          ? first_at_or_above(reinterpret_cast<const uint16_t*>(s.tokens), s.count,
                                              static_cast<uint64_t>(vocab_size))
                          : first_at_or_above(reinterpret_cast<const uint32_t*>(s.tokens), s.count,
                                              static_cast<uint64_t>(vocab_size));
  s.map->advise(MADV_NORMAL);
  if (bad >= 0) {
    const uint32_t id = s.dtype == TokenDtype::uint16
                            ? reinterpret_cast<const uint16_t*>(s.tokens)[bad]
                            : reinterpret_cast<const uint32_t*>(s.tokens)[bad];
    fail(path, fmt::format("token {} at index {} is >= the vocabulary size {} (shards of another "
                           "tokenizer?)",
                           id, bad, vocab_size));
  }
  return s;
}

}  // namespace

std::vector<std::string> expand_data_paths(const std::string& path_or_glob) {
  if (path_or_glob.find_first_of("*?[") == std::string::npos) {
    std::error_code ec;
    if (!fs::exists(path_or_glob, ec)) {
      throw std::runtime_error(fmt::format("data file {} does not exist", path_or_glob));
    }
    if (fs::is_directory(path_or_glob, ec)) {
      throw std::runtime_error(fmt::format(
          "data file {} is a directory; name its files or a glob such as DIR/train-*.npy or "
          "DIR/*.txt",
          path_or_glob));
    }
    return {path_or_glob};
  }
  glob_t g{};
  const int rc = ::glob(path_or_glob.c_str(), GLOB_ERR, nullptr, &g);
  std::vector<std::string> out;
  for (size_t i = 0; i < g.gl_pathc; ++i) out.emplace_back(g.gl_pathv[i]);
  ::globfree(&g);
  if (rc == GLOB_NOMATCH || out.empty()) {
    throw std::runtime_error(fmt::format("no file matches {}", path_or_glob));
  }
  if (rc != 0) throw std::runtime_error(fmt::format("cannot expand {}", path_or_glob));
  return out;  // glob sorts its matches
}

std::shared_ptr<TokenStore> open_shards(const std::vector<std::string>& paths_or_globs,
                                        const std::string& format, const std::string& dtype,
                                        int64_t vocab_size, int64_t min_tokens) {
  if (format != "auto") parse_format(format);
  if (dtype != "auto") parse_dtype(dtype);
  if (paths_or_globs.empty()) throw std::runtime_error("no shard files given");
  std::map<std::string, std::optional<ShardManifest>> manifests;
  std::vector<Shard> shards;
  for (const std::string& arg : paths_or_globs) {
    for (const std::string& path : expand_data_paths(arg)) {
      shards.push_back(open_one(path, format, dtype, vocab_size, manifests));
    }
  }
  auto store = std::make_shared<ShardStore>(std::move(shards));
  if (store->size() < min_tokens) {
    throw std::runtime_error(fmt::format("shards {} hold {} tokens, fewer than one window of {}",
                                         fmt::join(paths_or_globs, ", "), store->size(),
                                         min_tokens));
  }
  return store;
}

void write_manifest(const std::string& dir, const ShardManifest& m) {
  std::string files;
  for (size_t i = 0; i < m.files.size(); ++i) {
    const ShardFileInfo& f = m.files[i];
    files += fmt::format(
        "    {{\"name\": {}, \"split\": {}, \"tokens\": {}, \"documents\": {}, \"crc32\": "
        "\"{:08x}\"}}{}\n",
        json::quote(f.name), json::quote(f.split), f.tokens, f.documents, f.crc32,
        i + 1 < m.files.size() ? "," : "");
  }
  const std::string text = fmt::format(
      "{{\n  \"format\": \"{}\",\n  \"dtype\": \"{}\",\n  \"tokenizer\": {},\n"
      "  \"vocab_size\": {},\n  \"eos\": {},\n  \"files\": [\n{}  ]\n}}\n",
      to_string(m.format), to_string(m.dtype), json::quote(m.tokenizer), m.vocab_size, m.eos,
      files);
  const fs::path path = fs::path(dir) / kManifestName;
  const fs::path tmp = fs::path(dir) / (std::string(kManifestName) + ".tmp");
  {
    std::ofstream out(tmp, std::ios::binary);
    out << text;
    out.close();
    if (!out) throw std::runtime_error(fmt::format("cannot write {}", tmp.string()));
  }
  fs::rename(tmp, path);
}

std::optional<ShardManifest> read_manifest(const std::string& dir) {
  const fs::path path = fs::path(dir) / kManifestName;
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string text = buffer.str();
  try {
    auto required = [](std::string_view object, std::string_view key) {
      const std::optional<std::string_view> v = json::find_member(object, key);
      if (!v) throw std::runtime_error(fmt::format("no \"{}\"", key));
      return *v;
    };
    auto string = [&](std::string_view object, std::string_view key) {
      return json::unescape_string(required(object, key));
    };
    auto integer = [&](std::string_view object, std::string_view key) {
      const std::string_view v = required(object, key);
      int64_t n = 0;
      if (!absl::SimpleAtoi(absl::string_view(v.data(), v.size()), &n)) {
        throw std::runtime_error(fmt::format("\"{}\" is not an integer", key));
      }
      return n;
    };
    ShardManifest m;
    m.format = parse_format(string(text, "format"));
    m.dtype = parse_dtype(string(text, "dtype"));
    m.tokenizer = string(text, "tokenizer");
    m.vocab_size = integer(text, "vocab_size");
    m.eos = static_cast<int32_t>(integer(text, "eos"));
    for (const std::string_view f : json::array_elements(required(text, "files"))) {
      ShardFileInfo info;
      info.name = string(f, "name");
      info.split = string(f, "split");
      info.tokens = integer(f, "tokens");
      info.documents = integer(f, "documents");
      if (!absl::SimpleHexAtoi(string(f, "crc32"), &info.crc32)) {
        throw std::runtime_error("\"crc32\" is not 8 hex digits");
      }
      m.files.push_back(std::move(info));
    }
    return m;
  } catch (const std::exception& e) {
    throw std::runtime_error(fmt::format("manifest {}: {}", path.string(), e.what()));
  }
}

ShardWriter::ShardWriter(std::string dir, std::string split, ShardFormat format, TokenDtype dtype,
                         int64_t shard_tokens)
    : dir_(std::move(dir)),
      split_(std::move(split)),
      format_(format),
      dtype_(dtype),
      shard_tokens_(shard_tokens) {
  if (shard_tokens_ <= 0) throw std::invalid_argument("shard_tokens must be positive");
}

ShardWriter::~ShardWriter() {
  if (file_ != nullptr) {
    std::fclose(file_);
    std::remove(tmp_path_.c_str());
  }
}

void ShardWriter::open_file() {
  current_ = ShardFileInfo{};
  current_.name = fmt::format("{}-{:05d}.{}", split_, done_.size(), to_string(format_));
  current_.split = split_;
  tmp_path_ = (fs::path(dir_) / (current_.name + ".tmp")).string();
  file_ = std::fopen(tmp_path_.c_str(), "wb");
  if (file_ == nullptr) fail(tmp_path_, fmt::format("cannot create: {}", std::strerror(errno)));
  crc_ = crc32(0, nullptr, 0);
  if (format_ == ShardFormat::bin) {
    // Reserved; the real header is written once the token count is known.
    const std::vector<int32_t> zeros(kLlmcHeaderInts, 0);
    if (std::fwrite(zeros.data(), sizeof(int32_t), zeros.size(), file_) != zeros.size()) {
      fail(tmp_path_, fmt::format("write failed: {}", std::strerror(errno)));
    }
  }
}

void ShardWriter::add_document(std::span<const int32_t> ids) {
  if (file_ == nullptr) open_file();
  const size_t width = dtype_bytes(dtype_);
  const int64_t max_id = dtype_ == TokenDtype::uint16 ? 0xFFFF : INT32_MAX;
  buffer_.resize(ids.size() * width);
  unsigned char* p = buffer_.data();
  for (const int32_t id : ids) {
    if (id < 0 || id > max_id) {
      throw std::invalid_argument(
          fmt::format("token id {} does not fit {}", id, to_string(dtype_)));
    }
    const auto v = static_cast<uint32_t>(id);
    std::memcpy(p, &v, width);  // little-endian: the low bytes come first
    p += width;
  }
  if (std::fwrite(buffer_.data(), 1, buffer_.size(), file_) != buffer_.size()) {
    fail(tmp_path_, fmt::format("write failed: {}", std::strerror(errno)));
  }
  crc_ = crc32_z(crc_, buffer_.data(), buffer_.size());
  current_.tokens += static_cast<int64_t>(ids.size());
  ++current_.documents;
  if (current_.tokens >= shard_tokens_) close_file();
}

void ShardWriter::close_file() {
  uint32_t crc = crc_;
  if (format_ == ShardFormat::bin) {
    if (current_.tokens > INT32_MAX) {
      fail(tmp_path_, fmt::format("{} tokens overflow the llm.c header; lower --shard-tokens",
                                  current_.tokens));
    }
    std::vector<int32_t> header(kLlmcHeaderInts, 0);
    header[0] = kLlmcMagic;
    header[1] = dtype_ == TokenDtype::uint16 ? 1 : 2;
    header[2] = static_cast<int32_t>(current_.tokens);
    const size_t header_bytes = header.size() * sizeof(int32_t);
    if (std::fseek(file_, 0, SEEK_SET) != 0 ||
        std::fwrite(header.data(), 1, header_bytes, file_) != header_bytes) {
      fail(tmp_path_, fmt::format("write failed: {}", std::strerror(errno)));
    }
    const uint32_t header_crc =
        crc32_z(0, reinterpret_cast<const unsigned char*>(header.data()), header_bytes);
    crc = crc32_combine(header_crc, crc_,
                        static_cast<z_off_t>(current_.tokens * dtype_bytes(dtype_)));
  }
  const bool ok = std::fflush(file_) == 0 && std::ferror(file_) == 0;
  const int err = errno;
  std::fclose(file_);
  file_ = nullptr;
  if (!ok) {
    std::remove(tmp_path_.c_str());
    fail(tmp_path_, fmt::format("write failed: {}", std::strerror(err)));
  }
  fs::rename(tmp_path_, fs::path(dir_) / current_.name);
  current_.crc32 = crc;
  done_.push_back(current_);
}

std::vector<ShardFileInfo> ShardWriter::finish() {
  if (file_ != nullptr) close_file();
  return done_;
}

namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Documents read together, then their ids (each non-empty document followed by eos).
struct Batch {
  int64_t seq = 0;
  std::vector<RawDocument> docs;
  std::vector<int32_t> ids;
  std::vector<size_t> ends;  // document i's ids are [ends[i - 1], ends[i])
  int64_t bytes = 0;
};

// Batches are small enough to balance the threads and big enough to make the locking rare.
constexpr size_t kBatchBytes = 1 << 20;
constexpr size_t kBatchDocs = 1024;

void check_output_dir(const std::string& dir) {
  fs::create_directories(dir);
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (name == kManifestName || name.starts_with("train-") || name.starts_with("val-")) {
      throw std::runtime_error(
          fmt::format("output directory {} already holds shards ({}); remove them or choose "
                      "another directory",
                      dir, name));
    }
  }
}

// One reader thread, `threads` tokenizing threads, and the calling thread writing the batches
// in the order they were read. At most `max_in_flight` batches are in memory at once.
class Pipeline {
 public:
  Pipeline(const Tokenizer& tokenizer, std::vector<std::string> files, int threads)
      : tokenizer_(tokenizer),
        files_(std::move(files)),
        max_in_flight_(2 * static_cast<size_t>(threads) + 2) {
    threads_.emplace_back([this] { guard([this] { read(); }); });
    for (int t = 0; t < threads; ++t) threads_.emplace_back([this] { guard([this] { work(); }); });
  }
  ~Pipeline() {
    {
      std::lock_guard lock(mu_);
      if (!error_) error_ = std::make_exception_ptr(std::runtime_error("stopped"));
    }
    cv_.notify_all();
    for (std::thread& t : threads_) t.join();
  }
  Pipeline(const Pipeline&) = delete;
  Pipeline& operator=(const Pipeline&) = delete;

  // The next batch in reading order, null after the last. Rethrows a reader or worker error.
  std::unique_ptr<Batch> next() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] {
      return error_ || done_.count(next_seq_) > 0 || (read_all_ && next_seq_ >= batches_);
    });
    if (error_) std::rethrow_exception(error_);
    if (done_.count(next_seq_) == 0) return nullptr;
    auto batch = std::move(done_[next_seq_]);
    done_.erase(next_seq_++);
    --in_flight_;
    lock.unlock();
    cv_.notify_all();
    return batch;
  }

 private:
  template <typename F>
  void guard(F f) {
    try {
      f();
    } catch (...) {
      {
        std::lock_guard lock(mu_);
        if (!error_) error_ = std::current_exception();
      }
      cv_.notify_all();
    }
  }

  void read() {
    CorpusReader reader(files_);
    RawDocument doc;
    for (int64_t seq = 0;; ++seq) {
      auto batch = std::make_unique<Batch>();
      batch->seq = seq;
      size_t bytes = 0;
      while (bytes < kBatchBytes && batch->docs.size() < kBatchDocs && reader.next(doc)) {
        bytes += doc.data.size();
        batch->docs.push_back(std::move(doc));
      }
      std::unique_lock lock(mu_);
      if (batch->docs.empty()) {
        read_all_ = true;
        batches_ = seq;
        lock.unlock();
        cv_.notify_all();
        return;
      }
      cv_.wait(lock, [&] { return error_ || in_flight_ < max_in_flight_; });
      if (error_) return;
      ++in_flight_;
      todo_.push_back(std::move(batch));
      lock.unlock();
      cv_.notify_all();
    }
  }

  void work() {
    for (;;) {
      std::unique_ptr<Batch> batch;
      {
        std::unique_lock lock(mu_);
        cv_.wait(lock, [&] { return error_ || !todo_.empty() || read_all_; });
        if (error_ || todo_.empty()) return;
        batch = std::move(todo_.front());
        todo_.pop_front();
      }
      for (const RawDocument& doc : batch->docs) {
        batch->bytes += static_cast<int64_t>(doc.data.size());
        const size_t before = batch->ids.size();
        tokenizer_.encode_append(document_text(doc, files_), batch->ids);
        if (batch->ids.size() > before) batch->ids.push_back(tokenizer_.eos());
        batch->ends.push_back(batch->ids.size());
      }
      batch->docs.clear();
      {
        std::lock_guard lock(mu_);
        done_[batch->seq] = std::move(batch);
      }
      cv_.notify_all();
    }
  }

  const Tokenizer& tokenizer_;
  const std::vector<std::string> files_;
  const size_t max_in_flight_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Batch>> todo_;
  std::map<int64_t, std::unique_ptr<Batch>> done_;
  size_t in_flight_ = 0;  // read and not yet handed to the writer
  bool read_all_ = false;
  int64_t batches_ = 0;  // known once read_all_
  int64_t next_seq_ = 0;
  std::exception_ptr error_;
  std::vector<std::thread> threads_;
};

}  // namespace

bool is_val_document(uint64_t seed, int64_t index, double val_fraction) {
  const uint64_t h = splitmix64(seed ^ splitmix64(static_cast<uint64_t>(index)));
  return static_cast<double>(h >> 11) * 0x1.0p-53 < val_fraction;
}

TokenizeSummary tokenize_to_shards(const Tokenizer& tokenizer, const TokenizeOptions& options) {
  if (options.threads < 1) throw std::invalid_argument("threads must be at least 1");
  const auto start = std::chrono::steady_clock::now();
  const std::vector<std::string> files = list_input_files(options.inputs);
  check_output_dir(options.output_dir);

  TokenizeSummary summary;
  ShardManifest& manifest = summary.manifest;
  manifest.format = options.format;
  manifest.dtype = options.dtype.value_or(dtype_for_vocab(tokenizer.vocab_size()));
  manifest.tokenizer = tokenizer.name();
  manifest.vocab_size = tokenizer.vocab_size();
  manifest.eos = tokenizer.eos();
  if (dtype_for_vocab(tokenizer.vocab_size()) == TokenDtype::uint32 &&
      manifest.dtype == TokenDtype::uint16) {
    throw std::invalid_argument(fmt::format("uint16 cannot hold the {} ids of tokenizer {}",
                                            tokenizer.vocab_size(), tokenizer.name()));
  }
  ShardWriter train(options.output_dir, "train", options.format, manifest.dtype,
                    options.shard_tokens);
  ShardWriter val(options.output_dir, "val", options.format, manifest.dtype, options.shard_tokens);

  auto last_report = start;
  auto report = [&](const char* prefix) {
    const double s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    fmt::print(stderr, "{}{:.1f} MB, {} documents, {} tokens, {:.1f} MB/s, {:.2f}M tokens/s\n",
               prefix, static_cast<double>(summary.bytes) / 1e6, summary.documents, summary.tokens,
               static_cast<double>(summary.bytes) / 1e6 / s,
               static_cast<double>(summary.tokens) / 1e6 / s);
  };
  Pipeline pipeline(tokenizer, files, options.threads);
  while (std::unique_ptr<Batch> batch = pipeline.next()) {
    size_t begin = 0;
    for (const size_t end : batch->ends) {
      const std::span<const int32_t> ids(batch->ids.data() + begin, end - begin);
      begin = end;
      const int64_t index = summary.documents++;
      if (ids.empty()) {
        ++summary.empty_documents;
        continue;
      }
      const bool held_out = is_val_document(options.seed, index, options.val_fraction);
      (held_out ? val : train).add_document(ids);
      summary.tokens += static_cast<int64_t>(ids.size());
      if (held_out) {
        ++summary.val_documents;
        summary.val_tokens += static_cast<int64_t>(ids.size());
      }
    }
    summary.bytes += batch->bytes;
    if (options.progress &&
        std::chrono::steady_clock::now() - last_report > std::chrono::seconds(2)) {
      last_report = std::chrono::steady_clock::now();
      report("tokenize: ");
    }
  }
  for (ShardWriter* w : {&train, &val}) {
    for (ShardFileInfo& f : w->finish()) manifest.files.push_back(std::move(f));
  }
  write_manifest(options.output_dir, manifest);
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (options.progress) report("tokenize: done, ");
  return summary;
}

}  // namespace moda
