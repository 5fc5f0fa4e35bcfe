// Tokenizers: the byte tokenizer, the BPE encoders against tiktoken's golden ids, round trips,
// the pattern translation and its Unicode classes, and the small JSON and UTF-8 readers.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <absl/strings/escaping.h>
#include <fmt/format.h>
#include <pcre2.h>
#include <stdlib.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "moda/tokenizer.hpp"
#include "test_util.hpp"
#include "tokenizer/bpe.hpp"
#include "tokenizer/json_scan.hpp"
#include "tokenizer/unicode_compat.hpp"
#include "tokenizer/utf8.hpp"

namespace {

std::string source_path(const std::string& rel) { return std::string(MODA_SOURCE_DIR) + "/" + rel; }

std::string cache_dir() {
  return std::getenv("MODA_TOKENIZER_CACHE") != nullptr ? moda::default_tokenizer_cache()
                                                        : source_path(".cache/tokenizers");
}

// Whether the rank files of both BPE tokenizers are in the cache. A test that uses them skips as a
// whole when one is missing: ctest reports a test that printed a skip as skipped even where it
// also failed, so skipping one tokenizer of two would hide the other's failures.
bool have_bpe_files() {
  for (const char* file : {"gpt2.json", "cl100k_base.json"}) {
    if (!std::filesystem::exists(std::filesystem::path(cache_dir()) / file)) return false;
  }
  return true;
}

#define MODA_REQUIRE_BPE()                                                               \
  MODA_SKIP_UNLESS(have_bpe_files(), "gpt2.json or cl100k_base.json is not in "          \
                                         << cache_dir()                                  \
                                         << "; run scripts/fetch_tokenizers.sh to test " \
                                            "the BPE tokenizers")

std::unique_ptr<moda::Tokenizer> bpe(const std::string& name) {
  return moda::make_tokenizer(name, cache_dir());
}

std::string encode_utf8(char32_t c) {
  std::string s;
  if (c < 0x80) {
    s += static_cast<char>(c);
  } else if (c < 0x800) {
    s += static_cast<char>(0xC0 | (c >> 6));
    s += static_cast<char>(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    s += static_cast<char>(0xE0 | (c >> 12));
    s += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    s += static_cast<char>(0xF0 | (c >> 18));
    s += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    s += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (c & 0x3F));
  }
  return s;
}

// Random well-formed UTF-8 mixing ASCII, spaces, digits and code points of every plane.
std::string random_utf8(std::mt19937& rng, size_t chars) {
  std::string s;
  for (size_t i = 0; i < chars; ++i) {
    const uint32_t kind = rng() % 8;
    char32_t c;
    if (kind < 3) {
      c = 0x20 + rng() % 0x5F;
    } else if (kind == 3) {
      c = std::u32string_view(U" \t\n\r\u00a0")[rng() % 5];
    } else if (kind == 4) {
      c = 0x80 + rng() % 0x780;
    } else if (kind == 5) {
      c = 0x800 + rng() % 0xF800;
    } else {
      c = 0x10000 + rng() % 0x100000;
    }
    if (c >= 0xD800 && c < 0xE000) c = 'x';
    s += encode_utf8(c);
  }
  return s;
}

std::vector<int32_t> parse_ids(std::string_view array) {
  std::vector<int32_t> ids;
  std::string inner(array.substr(1, array.size() - 2));
  std::replace(inner.begin(), inner.end(), ',', ' ');
  std::istringstream in(inner);
  for (int32_t id; in >> id;) ids.push_back(id);
  return ids;
}

}  // namespace

TEST_CASE("byte tokenizer round-trips every byte", "[tokenizer]") {
  const auto tok = moda::make_tokenizer("byte", "");
  CHECK(tok->name() == "byte");
  CHECK(tok->vocab_size() == 258);
  CHECK(tok->eos() == 256);
  CHECK(tok->pad() == 257);
  std::string all;
  for (int b = 0; b < 256; ++b) all += static_cast<char>(b);
  const std::vector<int32_t> ids = tok->encode(all + "<|endoftext|>");
  REQUIRE(ids.size() == 256 + 13);
  for (int b = 0; b < 256; ++b) CHECK(ids[b] == b);
  CHECK(tok->decode(ids) == all + "<|endoftext|>");
  const std::vector<int32_t> specials = {tok->eos(), 'a', tok->pad()};
  CHECK(tok->decode(specials) == "<|endoftext|>a<|pad|>");
  const std::vector<int32_t> bad = {258};
  CHECK_THROWS_AS(tok->decode(bad), std::out_of_range);
}

TEST_CASE("make_tokenizer rejects unknown names and explains missing rank files", "[tokenizer]") {
  CHECK_THROWS_WITH(moda::make_tokenizer("gpt5", ""), Catch::Contains("unknown tokenizer"));
  const std::string nowhere = "/nonexistent/moda_tokenizer_cache";
  CHECK_THROWS_WITH(moda::make_tokenizer("dolma2", nowhere),
                    Catch::Contains("scripts/fetch_tokenizers.sh") &&
                        Catch::Contains(nowhere + "/cl100k_base.json"));
}

TEST_CASE("tiktoken rank files are parsed and checked", "[tokenizer]") {
  const std::string path =
      (std::filesystem::temp_directory_path() / fmt::format("moda_ranks_{}.json", ::getpid()))
          .string();
  auto write = [&](const std::string& text) { std::ofstream(path, std::ios::binary) << text; };
  // Every byte (base64 of one byte each) from rank 0, then "ab" at 256.
  std::string ranks = "! 0";
  for (int b = 0; b < 256; ++b) {
    const char c = static_cast<char>(b);
    std::string b64;
    absl::Base64Escape(absl::string_view(&c, 1), &b64);
    ranks += " " + b64;
  }
  write(R"({"pat_str": "\\p{L}+|\\s+", "bpe_ranks": ")" + ranks + R"(\n! 256 YWI="})");
  const moda::TiktokenRanks loaded = moda::load_tiktoken_json(path);
  CHECK(loaded.pat_str == R"(\p{L}+|\s+)");
  CHECK(loaded.ranks.size() == 257);
  CHECK(loaded.ranks.at("ab") == 256);
  CHECK(loaded.ranks.at(std::string(1, '\xff')) == 255);

  for (const std::string bad :
       {R"({"pat_str": "x"})", R"({"pat_str": "x", "bpe_ranks": "0 IQ=="})",
        R"({"pat_str": "x", "bpe_ranks": "! 0 I!Q=="})",
        R"({"pat_str": "x", "bpe_ranks": "! 0 IQ== IQ=="})", R"({"pat_str")"}) {
    write(bad);
    INFO(bad);
    CHECK_THROWS_WITH(moda::load_tiktoken_json(path), Catch::Contains(path));
  }
  std::filesystem::remove(path);
}

TEST_CASE("default_tokenizer_cache honours MODA_TOKENIZER_CACHE", "[tokenizer]") {
  const char* old = std::getenv("MODA_TOKENIZER_CACHE");
  const std::string saved = old != nullptr ? old : "";
  setenv("MODA_TOKENIZER_CACHE", "/some/where", 1);
  CHECK(moda::default_tokenizer_cache() == "/some/where");
  unsetenv("MODA_TOKENIZER_CACHE");
  CHECK(moda::default_tokenizer_cache().ends_with(".cache/tokenizers"));
  if (old != nullptr) setenv("MODA_TOKENIZER_CACHE", saved.c_str(), 1);
}

TEST_CASE("BPE encoders reproduce tiktoken's golden ids", "[tokenizer]") {
  MODA_REQUIRE_BPE();
  for (const auto& [name, field] :
       {std::pair<std::string, std::string>{"gpt2", "gpt2"}, {"dolma2", "cl100k_base"}}) {
    const auto tok = bpe(name);
    std::ifstream in(source_path("tests/data/tiktoken_golden.jsonl"));
    REQUIRE(in);
    int cases = 0;
    for (std::string line; std::getline(in, line);) {
      const std::string text = *moda::json::string_member(line, "text");
      const std::vector<int32_t> expected = parse_ids(*moda::json::find_member(line, field));
      INFO(name << " case " << cases << ": " << text);
      CHECK(tok->encode(text) == expected);
      ++cases;
    }
    CHECK(cases >= 300);
  }
}

TEST_CASE("BPE tokenizers know their specials", "[tokenizer]") {
  MODA_REQUIRE_BPE();
  {
    const auto gpt2 = bpe("gpt2");
    CHECK(gpt2->vocab_size() == 50257);
    CHECK(gpt2->eos() == 50256);
    CHECK(gpt2->pad() == 50256);
    const std::vector<int32_t> ids = {31373, 50256};
    CHECK(gpt2->decode(ids) == "hello<|endoftext|>");
    // Ordinary text: the special token's text is not the special token.
    CHECK(gpt2->encode("<|endoftext|>").size() > 1);
  }
  {
    const auto dolma2 = bpe("dolma2");
    CHECK(dolma2->vocab_size() == 100278);
    CHECK(dolma2->eos() == 100257);
    CHECK(dolma2->pad() == 100277);
    const std::vector<int32_t> ids = {100257, 100277, 100256};
    CHECK(dolma2->decode(ids) == "<|endoftext|><|pad|>");
    const std::vector<int32_t> bad = {100278};
    CHECK_THROWS_AS(dolma2->decode(bad), std::out_of_range);
  }
}

TEST_CASE("BPE round-trips random UTF-8 and arbitrary bytes", "[tokenizer]") {
  MODA_REQUIRE_BPE();
  for (const std::string name : {"gpt2", "dolma2"}) {
    const auto tok = bpe(name);
    std::mt19937 rng(7);
    int no_break_spaces = 0;  // U+00A0: whitespace to \s, but not ASCII
    for (int i = 0; i < 200; ++i) {
      std::string text = random_utf8(rng, rng() % 300);
      no_break_spaces += text.find("\u00a0") != std::string::npos;
      if (i % 4 == 0) {  // invalid UTF-8: stray continuation bytes, truncations, 0xFF
        for (int k = 0; k < 5; ++k)
          text.insert(rng() % (text.size() + 1), 1, "\x80\xC3\xFF\xED"[k % 4]);
      } else {
        REQUIRE(moda::utf8::valid_prefix(text) == text.size());
      }
      const std::vector<int32_t> ids = tok->encode(text);
      for (const int32_t id : ids) REQUIRE((id >= 0 && id < tok->eos()));
      REQUIRE(tok->decode(ids) == text);
    }
    CHECK(no_break_spaces > 0);
    // Invalid bytes are pieces of their own: the valid text around them encodes as alone.
    const std::vector<int32_t> alone = tok->encode("hello world");
    std::vector<int32_t> joined = tok->encode("hello world\xFF");
    REQUIRE(joined.size() == alone.size() + 1);
    joined.pop_back();
    CHECK(joined == alone);
  }
}

TEST_CASE("heap merge makes tiktoken's choices", "[tokenizer]") {
  MODA_REQUIRE_BPE();
  const auto tok = bpe("dolma2");
  const auto& bpe = dynamic_cast<const moda::BpeTokenizer&>(*tok);
  std::mt19937 rng(3);
  const std::string alphabet = "aaabbcde ";
  for (int i = 0; i < 500; ++i) {
    std::string piece;
    const size_t n = 2 + rng() % (moda::BpeTokenizer::kLinearMergeMax - 1);
    for (size_t k = 0; k < n; ++k) piece += alphabet[rng() % alphabet.size()];
    std::vector<int32_t> linear, heap;
    bpe.byte_pair_encode_linear(piece, linear);
    bpe.byte_pair_encode_heap(piece, heap);
    REQUIRE(linear == heap);
  }
  // A megabyte-long piece finishes (tiktoken's quadratic merge would not) and round-trips.
  const std::string long_piece(1 << 20, 'q');
  CHECK(tok->decode(tok->encode(long_piece)) == long_piece);
}

TEST_CASE("BPE encode is safe from several threads", "[tokenizer]") {
  MODA_REQUIRE_BPE();
  const auto tok = bpe("gpt2");
  std::mt19937 rng(11);
  std::vector<std::string> texts;
  for (int i = 0; i < 50; ++i) texts.push_back(random_utf8(rng, 200));
  std::vector<std::vector<int32_t>> expected;
  for (const auto& t : texts) expected.push_back(tok->encode(t));
  std::vector<int> ok(2, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      for (size_t i = 0; i < texts.size(); ++i) ok[t] += tok->encode(texts[i]) == expected[i];
    });
  }
  for (auto& th : threads) th.join();
  CHECK(ok == std::vector<int>{50, 50});
}

TEST_CASE("translate_pattern gives \\s and the classes tiktoken's meaning", "[tokenizer]") {
  const moda::utf8::CodeRange letters[] = {{0x11f04, 0x11f10}};
  const moda::utf8::CodeRange numbers[] = {{0x11f50, 0x11f50}};
  const std::string out =
      moda::translate_pattern(R"(\s+(?!\S)|[^\s\p{L}]+|\p{N}|'s)", letters, numbers);
  CHECK(out.find(R"(\s)") == std::string::npos);
  CHECK(out.find(R"([^\t-\r\x20\x{85})") != std::string::npos);          // \S
  CHECK(out.find(R"([^\t-\r\x20)") != std::string::npos);                // [^\s...
  CHECK(out.find(R"(\p{L}\x{11f04}-\x{11f10}])") != std::string::npos);  // inside a class
  CHECK(out.find(R"([\p{N}\x{11f50}])") != std::string::npos);           // outside a class
  CHECK(out.ends_with("|'s"));
  CHECK_THROWS(moda::translate_pattern(R"([\S])", {}, {}));
}

// Every code point: PCRE2 with the translated classes agrees with tiktoken's \p{L} and \p{N}
// (tests/data/tiktoken_char_classes.txt), and \s is exactly Unicode White_Space.
TEST_CASE("translated classes match tiktoken's on every code point", "[tokenizer]") {
  std::set<char32_t> letters, numbers;
  std::ifstream in(source_path("tests/data/tiktoken_char_classes.txt"));
  REQUIRE(in);
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#') continue;
    const size_t dash = line.find('-');
    const char32_t lo = std::stoul(line.substr(2, dash - 2), nullptr, 16);
    const char32_t hi = std::stoul(line.substr(dash + 1), nullptr, 16);
    for (char32_t c = lo; c <= hi; ++c) (line[0] == 'L' ? letters : numbers).insert(c);
  }
  REQUIRE(letters.size() > 100000);
  const std::set<char32_t> white = {0x9,    0xa,    0xb,    0xc,    0xd,    0x20,   0x85,
                                    0xa0,   0x1680, 0x2000, 0x2001, 0x2002, 0x2003, 0x2004,
                                    0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200a, 0x2028,
                                    0x2029, 0x202f, 0x205f, 0x3000};
  struct Class {
    std::string pattern;
    const std::set<char32_t>* members;
    pcre2_code* code = nullptr;
  };
  std::vector<Class> classes = {{moda::translate_pattern(R"(\p{L})", moda::kTiktokenExtraLetters,
                                                         moda::kTiktokenExtraNumbers),
                                 &letters},
                                {moda::translate_pattern(R"(\p{N})", moda::kTiktokenExtraLetters,
                                                         moda::kTiktokenExtraNumbers),
                                 &numbers},
                                {moda::translate_pattern(R"(\s)", {}, {}), &white}};
  pcre2_match_data* md = pcre2_match_data_create(1, nullptr);
  for (Class& c : classes) {
    int err;
    PCRE2_SIZE off;
    c.code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(c.pattern.c_str()), PCRE2_ZERO_TERMINATED,
                           PCRE2_UTF | PCRE2_UCP | PCRE2_ANCHORED, &err, &off, nullptr);
    REQUIRE(c.code != nullptr);
    pcre2_jit_compile(c.code, PCRE2_JIT_COMPLETE);
  }
  int wrong = 0;
  for (char32_t cp = 0; cp < 0x110000; ++cp) {
    if (cp >= 0xD800 && cp < 0xE000) continue;
    const std::string s = encode_utf8(cp);
    for (const Class& c : classes) {
      const bool matched = pcre2_match(c.code, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), 0,
                                       0, md, nullptr) > 0;
      if (matched != (c.members->count(cp) > 0) && ++wrong <= 5) {
        UNSCOPED_INFO(c.pattern.substr(0, 8) << " disagrees on U+" << std::hex << uint32_t(cp));
      }
    }
  }
  for (Class& c : classes) pcre2_code_free(c.code);
  pcre2_match_data_free(md);
  CHECK(wrong == 0);
}

TEST_CASE("JSON strings unescape, surrogate pairs included", "[tokenizer][json]") {
  using moda::json::unescape_string;
  CHECK(unescape_string(R"("plain")") == "plain");
  CHECK(unescape_string(R"("a\"b\\c\/d\b\f\n\r\t")") == "a\"b\\c/d\b\f\n\r\t");
  CHECK(unescape_string(R"("\u00e9\u4E2D")") == "\u00e9\u4e2d");
  CHECK(unescape_string(R"("\ud83d\ude00!")") == "\U0001F600!");
  CHECK(unescape_string(R"("\u0000")") == std::string(1, '\0'));
  // Lone surrogates become U+FFFD, as a JavaScript TextEncoder does.
  CHECK(unescape_string(R"("\ud83dx")") == "\ufffdx");
  CHECK(unescape_string(R"("\ude00")") == "\ufffd");
  CHECK(unescape_string(R"("\ud83d\u0041")") == "\ufffdA");
  CHECK(unescape_string("\"raw \xC3\xA9\"") == "raw \xC3\xA9");
  CHECK_THROWS(unescape_string(R"("\x41")"));
  CHECK_THROWS(unescape_string(R"("\u12")"));
  CHECK_THROWS(unescape_string(R"(unquoted)"));
}

TEST_CASE("JSON members are found at the top level only", "[tokenizer][json]") {
  using moda::json::find_member;
  using moda::json::string_member;
  const std::string line =
      R"( {"meta": {"text": "nested"}, "list": [1, -2.5e3, true, null, {"text": "x"}],)"
      R"( "t\u0065xt": "top \"level\"", "text": "second"} )";
  CHECK(string_member(line, "text") == "top \"level\"");
  CHECK(find_member(line, "list") == R"([1, -2.5e3, true, null, {"text": "x"}])");
  CHECK_FALSE(find_member(line, "missing").has_value());
  CHECK_THROWS_WITH(string_member(line, "list"), Catch::Contains("not a string"));
  CHECK(string_member(R"({"id":7,"text":"a\nb"})", "text") == "a\nb");
  for (const char* bad :
       {R"({"text": "unterminated)", R"({"text" "x"})", R"({"text": "x"} extra)",
        R"({"text": tru})", R"({"a": 01})", R"([1, 2])", R"({"a": "tab	"})", ""}) {
    INFO(bad);
    CHECK_THROWS_WITH(find_member(bad, "text"), Catch::Contains("malformed JSON"));
  }
  CHECK_THROWS_WITH(find_member(std::string(1000, '[').insert(0, "{\"a\":"), "a"),
                    Catch::Contains("too deep"));
}

TEST_CASE("UTF-8 validation follows RFC 3629", "[tokenizer]") {
  using moda::utf8::invalid_prefix;
  using moda::utf8::valid_prefix;
  const std::string ascii = "plain ascii text, long enough for the 8-byte loop";
  CHECK(valid_prefix(ascii) == ascii.size());
  CHECK(valid_prefix(ascii + "\xFF" + ascii) == ascii.size());
  CHECK(valid_prefix("\xC3\xA9\xE4\xB8\xAD\xF0\x9F\x98\x80") == 9);
  CHECK(valid_prefix("ab\xC0\xAF") == 2);          // overlong '/'
  CHECK(valid_prefix("ab\xE0\x80\xAF") == 2);      // overlong 3-byte
  CHECK(valid_prefix("ab\xED\xA0\x80") == 2);      // surrogate U+D800
  CHECK(valid_prefix("ab\xF4\x90\x80\x80") == 2);  // above U+10FFFF
  CHECK(valid_prefix("ab\xE4\xB8") == 2);          // truncated
  CHECK(invalid_prefix("\xE4\xB8"
                       "a") == 2);
  CHECK(invalid_prefix("\x80\x80\xC3\xA9") == 2);
  CHECK(invalid_prefix("a\xFF") == 0);
  const moda::utf8::CodeRange ranges[] = {{0x4e00, 0x4e00}, {0x1f600, 0x1f64f}};
  CHECK(moda::utf8::contains_any("abc \xF0\x9F\x98\x80", ranges));
  CHECK(moda::utf8::contains_any("\xE4\xB8\x80", ranges));
  CHECK_FALSE(moda::utf8::contains_any("abc \xE4\xB8\xAD \xC3\xA9", ranges));
}
