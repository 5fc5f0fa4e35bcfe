// HF tokenizer files for moda's tokenizers. tokenizer.json follows the layout of `tokenizers`'
// serialization (what transformers' TikTokenConverter produces for tiktoken encodings): a
// byte-level BPE with the encoding's regex as a Split pre-tokenizer, merges derived from the
// ranks the way TikTokenConverter derives them, and ignore_merges (a piece that is a token is
// emitted whole, as tiktoken does).
#include <absl/container/flat_hash_map.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <filesystem>

#include "checkpoint/file_io.hpp"
#include "export/hf_export.hpp"
#include "tokenizer/bpe.hpp"
#include "tokenizer/json_scan.hpp"

namespace moda {

namespace fs = std::filesystem;

namespace {

// GPT-2's bytes_to_unicode: printable bytes map to themselves, the others to U+0100 onwards.
std::array<std::string, 256> byte_chars() {
  std::array<std::string, 256> out;
  auto utf8 = [](uint32_t cp) {
    std::string s;
    if (cp < 0x80) {
      s += static_cast<char>(cp);
    } else {
      s += static_cast<char>(0xC0 | (cp >> 6));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    }
    return s;
  };
  uint32_t next = 256;
  for (uint32_t b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
    out[b] = utf8(printable ? b : next++);
  }
  return out;
}

std::string to_byte_chars(std::string_view bytes, const std::array<std::string, 256>& table) {
  std::string s;
  for (const char c : bytes) s += table[static_cast<unsigned char>(c)];
  return s;
}

struct Special {
  std::string text;
  int32_t id;
};

struct TokenizerSpec {
  std::string rank_file;  // empty: the byte tokenizer
  std::vector<Special> specials;
  std::string eos, pad;
};

TokenizerSpec spec_of(const std::string& name) {
  if (name == "byte")
    return {"", {{"<|endoftext|>", 256}, {"<|pad|>", 257}}, "<|endoftext|>", "<|pad|>"};
  if (name == "gpt2")
    return {"gpt2.json", {{"<|endoftext|>", 50256}}, "<|endoftext|>", "<|endoftext|>"};
  if (name == "dolma2") {
    return {"cl100k_base.json",
            {{"<|endoftext|>", 100257},
             {"<|fim_prefix|>", 100258},
             {"<|fim_middle|>", 100259},
             {"<|fim_suffix|>", 100260},
             {"<|endofprompt|>", 100276},
             {"<|pad|>", 100277}},
            "<|endoftext|>",
            "<|pad|>"};
  }
  throw std::invalid_argument(fmt::format("unknown tokenizer \"{}\"", name));
}

// TikTokenConverter's merge extraction: the two parts a token splits into when BPE runs on its
// bytes using only merges of lower rank.
std::vector<std::pair<std::string, std::string>> derive_merges(
    const absl::flat_hash_map<std::string, int32_t>& ranks) {
  std::vector<std::pair<int32_t, std::pair<std::string, std::string>>> merges;
  std::vector<std::string> parts;
  for (const auto& [token, rank] : ranks) {
    if (token.size() < 2) continue;
    parts.clear();
    for (const char c : token) parts.emplace_back(1, c);
    for (;;) {
      int best = -1;
      int32_t best_rank = 0;
      for (size_t i = 0; i + 1 < parts.size(); ++i) {
        const auto it = ranks.find(parts[i] + parts[i + 1]);
        if (it != ranks.end() && (best < 0 || it->second < best_rank)) {
          best = static_cast<int>(i);
          best_rank = it->second;
        }
      }
      if (best < 0 || best_rank >= rank) break;
      parts[static_cast<size_t>(best)] += parts[static_cast<size_t>(best) + 1];
      parts.erase(parts.begin() + best + 1);
    }
    if (parts.size() == 2) merges.push_back({rank, {parts[0], parts[1]}});
  }
  std::sort(merges.begin(), merges.end());
  std::vector<std::pair<std::string, std::string>> out;
  out.reserve(merges.size());
  for (auto& m : merges) out.push_back(std::move(m.second));
  return out;
}

std::string added_tokens_json(const std::vector<Special>& specials) {
  std::string j = "[";
  for (size_t i = 0; i < specials.size(); ++i) {
    j += fmt::format(
        "{}\n    {{\"id\": {}, \"content\": {}, \"single_word\": false, \"lstrip\": false, "
        "\"rstrip\": false, \"normalized\": false, \"special\": true}}",
        i ? "," : "", specials[i].id, json::quote(specials[i].text));
  }
  return j + "\n  ]";
}

}  // namespace

std::vector<std::string> write_hf_tokenizer(const std::string& name, const std::string& cache_dir,
                                            int64_t model_max_length, const std::string& out_dir) {
  const TokenizerSpec spec = spec_of(name);
  const fs::path out(out_dir);
  std::vector<std::string> written;
  const auto table = byte_chars();

  std::string vocab, merges, pre_tokenizer;
  bool have_json = true;
  if (spec.rank_file.empty()) {
    for (int b = 0; b < 256; ++b) {
      vocab +=
          fmt::format("{}{}: {}", b ? ", " : "", json::quote(table[static_cast<size_t>(b)]), b);
    }
    pre_tokenizer =
        "{\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"trim_offsets\": true, "
        "\"use_regex\": false}";
  } else {
    const fs::path rank_path = fs::path(cache_dir) / spec.rank_file;
    if (!fs::exists(rank_path)) {
      spdlog::warn(
          "export: {} is missing, so no tokenizer.json for {} (run scripts/fetch_tokenizers.sh); "
          "HF users can load the tokenizer from the hub instead ({})",
          rank_path.string(), name,
          name == "gpt2" ? "openai-community/gpt2" : "allenai/dolma2-tokenizer");
      have_json = false;
    } else {
      const TiktokenRanks r = load_tiktoken_json(rank_path.string());
      std::vector<std::pair<int32_t, std::string>> by_id;
      by_id.reserve(r.ranks.size());
      for (const auto& [bytes, id] : r.ranks) by_id.emplace_back(id, bytes);
      std::sort(by_id.begin(), by_id.end());
      for (size_t i = 0; i < by_id.size(); ++i) {
        vocab += fmt::format("{}{}: {}", i ? ", " : "",
                             json::quote(to_byte_chars(by_id[i].second, table)), by_id[i].first);
      }
      const auto pairs = derive_merges(r.ranks);
      for (size_t i = 0; i < pairs.size(); ++i) {
        merges += fmt::format("{}{}", i ? ", " : "",
                              json::quote(to_byte_chars(pairs[i].first, table) + " " +
                                          to_byte_chars(pairs[i].second, table)));
      }
      pre_tokenizer = fmt::format(
          "{{\"type\": \"Sequence\", \"pretokenizers\": [{{\"type\": \"Split\", \"pattern\": "
          "{{\"Regex\": {}}}, \"behavior\": \"Isolated\", \"invert\": false}}, {{\"type\": "
          "\"ByteLevel\", \"add_prefix_space\": false, \"trim_offsets\": true, \"use_regex\": "
          "false}}]}}",
          json::quote(r.pat_str));
    }
  }
  if (have_json) {
    const std::string j = fmt::format(
        "{{\n  \"version\": \"1.0\",\n  \"truncation\": null,\n  \"padding\": null,\n"
        "  \"added_tokens\": {},\n  \"normalizer\": null,\n  \"pre_tokenizer\": {},\n"
        "  \"post_processor\": null,\n"
        "  \"decoder\": {{\"type\": \"ByteLevel\", \"add_prefix_space\": true, \"trim_offsets\": "
        "true, \"use_regex\": true}},\n"
        "  \"model\": {{\"type\": \"BPE\", \"dropout\": null, \"unk_token\": null, "
        "\"continuing_subword_prefix\": null, \"end_of_word_suffix\": null, \"fuse_unk\": false, "
        "\"byte_fallback\": false, \"ignore_merges\": true,\n    \"vocab\": {{{}}},\n"
        "    \"merges\": [{}]}}\n}}\n",
        added_tokens_json(spec.specials), pre_tokenizer, vocab, merges);
    fileio::write_file((out / "tokenizer.json").string(), j);
    written.push_back("tokenizer.json");
  }
  std::string decoder;
  for (size_t i = 0; i < spec.specials.size(); ++i) {
    decoder += fmt::format(
        "{}\n    \"{}\": {{\"content\": {}, \"lstrip\": false, \"normalized\": false, "
        "\"rstrip\": false, \"single_word\": false, \"special\": true}}",
        i ? "," : "", spec.specials[i].id, json::quote(spec.specials[i].text));
  }
  fileio::write_file(
      (out / "tokenizer_config.json").string(),
      fmt::format("{{\n  \"tokenizer_class\": \"PreTrainedTokenizerFast\",\n"
                  "  \"moda_tokenizer\": \"{}\",\n  \"added_tokens_decoder\": {{{}\n  }},\n"
                  "  \"bos_token\": null,\n  \"eos_token\": {},\n  \"pad_token\": {},\n"
                  "  \"unk_token\": null,\n  \"add_bos_token\": false,\n"
                  "  \"add_eos_token\": false,\n  \"clean_up_tokenization_spaces\": false,\n"
                  "  \"model_max_length\": {}\n}}\n",
                  name, decoder, json::quote(spec.eos), json::quote(spec.pad), model_max_length));
  written.push_back("tokenizer_config.json");
  fileio::write_file((out / "special_tokens_map.json").string(),
                     fmt::format("{{\n  \"eos_token\": {},\n  \"pad_token\": {}\n}}\n",
                                 json::quote(spec.eos), json::quote(spec.pad)));
  written.push_back("special_tokens_map.json");
  return written;
}

}  // namespace moda
