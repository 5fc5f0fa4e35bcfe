#include "tokenizer/json_scan.hpp"

#include <fmt/format.h>

#include <cctype>
#include <cstdint>
#include <stdexcept>

namespace moda::json {
namespace {

// Deeper nesting than this is rejected rather than risking the stack on hostile input.
constexpr int kMaxDepth = 256;

class Scanner {
 public:
  explicit Scanner(std::string_view text) : s_(text) {}

  [[noreturn]] void fail(const char* what) const {
    throw std::runtime_error(fmt::format("malformed JSON at byte {}: {}", i_, what));
  }

  void skip_ws() {
    while (i_ < s_.size() &&
           (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) {
      ++i_;
    }
  }

  bool at_end() const { return i_ >= s_.size(); }
  char peek() const { return at_end() ? '\0' : s_[i_]; }

  void expect(char c) {
    if (peek() != c) fail(fmt::format("expected '{}'", c).c_str());
    ++i_;
  }

  // Returns the literal, quotes included.
  std::string_view string() {
    const size_t start = i_;
    expect('"');
    for (;;) {
      if (at_end()) fail("unterminated string");
      const unsigned char c = static_cast<unsigned char>(s_[i_++]);
      if (c == '"') break;
      if (c < 0x20) fail("control character in string");
      if (c == '\\') {
        if (at_end()) fail("unterminated escape");
        const char e = s_[i_++];
        if (e == 'u') {
          for (int k = 0; k < 4; ++k, ++i_) {
            if (at_end() || !std::isxdigit(static_cast<unsigned char>(s_[i_]))) {
              fail("bad \\u escape");
            }
          }
        } else if (std::string_view("\"\\/bfnrt").find(e) == std::string_view::npos) {
          fail("bad escape");
        }
      }
    }
    return s_.substr(start, i_ - start);
  }

  void digits() {
    if (!std::isdigit(static_cast<unsigned char>(peek()))) fail("expected a digit");
    while (std::isdigit(static_cast<unsigned char>(peek()))) ++i_;
  }

  void number() {
    if (peek() == '-') ++i_;
    if (peek() == '0') {
      ++i_;
    } else {
      digits();
    }
    if (peek() == '.') {
      ++i_;
      digits();
    }
    if (peek() == 'e' || peek() == 'E') {
      ++i_;
      if (peek() == '+' || peek() == '-') ++i_;
      digits();
    }
  }

  void word(std::string_view w) {
    if (s_.substr(i_, w.size()) != w) fail("unexpected character");
    i_ += w.size();
  }

  // Skips one value (after leading whitespace); returns its raw text.
  std::string_view value(int depth) {
    if (depth > kMaxDepth) fail("nesting too deep");
    skip_ws();
    const size_t start = i_;
    switch (peek()) {
      case '"':
        string();
        break;
      case '{':
        members(depth + 1, {}, nullptr);
        break;
      case '[':
        elements(depth + 1, nullptr);
        break;
      case 't':
        word("true");
        break;
      case 'f':
        word("false");
        break;
      case 'n':
        word("null");
        break;
      default:
        number();
    }
    return s_.substr(start, i_ - start);
  }

  // Scans an array starting at '['; when `out` is set, appends the raw text of each element.
  void elements(int depth, std::vector<std::string_view>* out) {
    expect('[');
    skip_ws();
    if (peek() == ']') {
      ++i_;
      return;
    }
    for (;;) {
      const std::string_view v = value(depth);
      if (out != nullptr) out->push_back(v);
      skip_ws();
      if (peek() == ']') {
        ++i_;
        return;
      }
      expect(',');
    }
  }

  // Scans an object starting at '{'. When `found` is set, stores there the value of the first
  // member named `key`.
  void members(int depth, std::string_view key, std::optional<std::string_view>* found) {
    expect('{');
    skip_ws();
    if (peek() == '}') {
      ++i_;
      return;
    }
    for (;;) {
      skip_ws();
      const std::string_view name = string();
      skip_ws();
      expect(':');
      const std::string_view v = value(depth);
      if (found != nullptr && !found->has_value() && key_equals(name, key)) *found = v;
      skip_ws();
      if (peek() == '}') {
        ++i_;
        return;
      }
      expect(',');
    }
  }

 private:
  static bool key_equals(std::string_view literal, std::string_view key) {
    const std::string_view inner = literal.substr(1, literal.size() - 2);
    if (inner.find('\\') == std::string_view::npos) return inner == key;
    return unescape_string(literal) == key;
  }

  std::string_view s_;
  size_t i_ = 0;
};

void append_utf8(uint32_t cp, std::string& out) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// Parses 4 hex digits at s[i]; -1 when they are not there.
int32_t hex4(std::string_view s, size_t i) {
  if (i + 4 > s.size()) return -1;
  int32_t v = 0;
  for (size_t k = i; k < i + 4; ++k) {
    const char c = s[k];
    int d;
    if (c >= '0' && c <= '9') {
      d = c - '0';
    } else if (c >= 'a' && c <= 'f') {
      d = c - 'a' + 10;
    } else if (c >= 'A' && c <= 'F') {
      d = c - 'A' + 10;
    } else {
      return -1;
    }
    v = v * 16 + d;
  }
  return v;
}

}  // namespace

std::optional<std::string_view> find_member(std::string_view object, std::string_view key) {
  Scanner scanner(object);
  std::optional<std::string_view> found;
  scanner.skip_ws();
  scanner.members(1, key, &found);
  scanner.skip_ws();
  if (!scanner.at_end()) scanner.fail("text after the object");
  return found;
}

std::vector<std::string_view> array_elements(std::string_view array) {
  Scanner scanner(array);
  std::vector<std::string_view> out;
  scanner.skip_ws();
  scanner.elements(1, &out);
  scanner.skip_ws();
  if (!scanner.at_end()) scanner.fail("text after the array");
  return out;
}

std::string unescape_string(std::string_view literal) {
  auto bad = [&](const char* what) {
    return std::runtime_error(fmt::format("malformed JSON string literal: {}", what));
  };
  if (literal.size() < 2 || literal.front() != '"' || literal.back() != '"') {
    throw bad("missing quotes");
  }
  const std::string_view s = literal.substr(1, literal.size() - 2);
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    // Copies the run up to the next escape in one go: most text has few escapes.
    const size_t next = s.find('\\', i);
    const size_t run_end = next == std::string_view::npos ? s.size() : next;
    out.append(s.data() + i, run_end - i);
    i = run_end;
    if (i == s.size()) break;
    if (i + 1 >= s.size()) throw bad("unterminated escape");
    const char e = s[i + 1];
    i += 2;
    switch (e) {
      case '"':
        out += '"';
        break;
      case '\\':
        out += '\\';
        break;
      case '/':
        out += '/';
        break;
      case 'b':
        out += '\b';
        break;
      case 'f':
        out += '\f';
        break;
      case 'n':
        out += '\n';
        break;
      case 'r':
        out += '\r';
        break;
      case 't':
        out += '\t';
        break;
      case 'u': {
        const int32_t u = hex4(s, i);
        if (u < 0) throw bad("bad \\u escape");
        i += 4;
        uint32_t cp = static_cast<uint32_t>(u);
        if (cp >= 0xD800 && cp < 0xDC00) {
          const int32_t low =
              (i + 1 < s.size() && s[i] == '\\' && s[i + 1] == 'u') ? hex4(s, i + 2) : -1;
          if (low >= 0xDC00 && low < 0xE000) {
            cp = 0x10000 + ((cp - 0xD800) << 10) + (static_cast<uint32_t>(low) - 0xDC00);
            i += 6;
          } else {
            cp = 0xFFFD;
          }
        } else if (cp >= 0xDC00 && cp < 0xE000) {
          cp = 0xFFFD;
        }
        append_utf8(cp, out);
        break;
      }
      default:
        throw bad("unknown escape");
    }
  }
  return out;
}

std::string quote(std::string_view s) {
  std::string out = "\"";
  for (const char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\r':
        out += "\\r";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += fmt::format("\\u{:04x}", static_cast<int>(c));
        } else {
          out += c;
        }
    }
  }
  out += '"';
  return out;
}

std::optional<std::string> string_member(std::string_view object, std::string_view key) {
  const std::optional<std::string_view> raw = find_member(object, key);
  if (!raw) return std::nullopt;
  if (raw->empty() || raw->front() != '"') {
    throw std::runtime_error(fmt::format("JSON member \"{}\" is not a string", key));
  }
  return unescape_string(*raw);
}

}  // namespace moda::json
