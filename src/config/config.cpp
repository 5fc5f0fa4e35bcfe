// Reading configurations (files, the embedded default, --set overrides) and writing them as YAML.
#include <absl/container/flat_hash_set.h>
#include <absl/strings/ascii.h>
#include <absl/strings/str_join.h>
#include <absl/strings/str_split.h>
#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <system_error>

#include "assets/assets.hpp"
#include "config/detail.hpp"

namespace moda {
namespace {

using config_detail::fail;
using config_detail::Field;
using config_detail::fields;
using config_detail::sections;

// Optimal string alignment distance: Levenshtein plus transposition of neighbours, the most
// common typo ("modle").
size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
  for (size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) {
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
      }
    }
  }
  return d[a.size()][b.size()];
}

// The candidate nearest to `name` if it is close enough to be the intended word: at most a third
// of the characters wrong (at least 1, at most 3), so "lr" never suggests "eps".
std::optional<std::string_view> closest(std::string_view name,
                                        const std::vector<std::string_view>& candidates) {
  const size_t limit = std::clamp<size_t>(name.size() / 3, 1, 3);
  std::optional<std::string_view> best;
  size_t best_distance = limit + 1;
  for (std::string_view candidate : candidates) {
    const size_t distance = edit_distance(name, candidate);
    if (distance < best_distance) {
      best = candidate;
      best_distance = distance;
    }
  }
  return best;
}

const Field* find_field(std::string_view section, std::string_view key) {
  for (const Field& field : fields()) {
    if (field.section == section && field.key == key) return &field;
  }
  return nullptr;
}

// " (did you mean 'batch.seq_len'?)" when `key` is a key of some section, else "": catches keys
// put under the wrong section or given without one.
std::string suggest_home(std::string_view key) {
  for (const Field& field : fields()) {
    if (field.key == key) return fmt::format(" (did you mean '{}.{}'?)", field.section, field.key);
  }
  return "";
}

// An exact key name is stronger evidence than a section name a few edits away ("d_model").
std::string suggest_section(std::string_view name) {
  if (std::string home = suggest_home(name); !home.empty()) return home;
  if (auto near = closest(name, sections())) return fmt::format(" (did you mean '{}'?)", *near);
  return "";
}

std::string suggest_key(std::string_view section, std::string_view key) {
  std::vector<std::string_view> keys;
  for (const Field& field : fields()) {
    if (field.section == section) keys.push_back(field.key);
  }
  if (auto near = closest(key, keys))
    return fmt::format(" (did you mean '{}.{}'?)", section, *near);
  return suggest_home(key);
}

void check_section(std::string_view section, std::string_view origin, const YAML::Mark& mark) {
  if (std::find(sections().begin(), sections().end(), section) == sections().end()) {
    fail(origin, mark, fmt::format("unknown section '{}'{}", section, suggest_section(section)));
  }
}

const Field& lookup(std::string_view section, std::string_view key, std::string_view origin,
                    const YAML::Mark& mark) {
  const Field* field = find_field(section, key);
  if (field == nullptr) {
    fail(origin, mark,
         fmt::format("unknown key '{}.{}'{}", section, key, suggest_key(section, key)));
  }
  return *field;
}

void apply_document(Config& config, const YAML::Node& root, std::string_view origin) {
  if (root.IsNull()) return;  // an empty file keeps every default
  if (!root.IsMap()) {
    fail(origin, root.Mark(),
         fmt::format("expected a mapping of sections (model:, batch:, ...), got {}",
                     config_detail::describe(root)));
  }
  // yaml-cpp keeps both copies of a repeated key; the later one would silently win.
  absl::flat_hash_set<std::string> seen;
  for (const auto& section_entry : root) {
    const std::string section = section_entry.first.Scalar();
    const YAML::Mark& section_mark = section_entry.first.Mark();
    check_section(section, origin, section_mark);
    if (!seen.insert(section).second) {
      fail(origin, section_mark, fmt::format("duplicate section '{}'", section));
    }
    const YAML::Node& body = section_entry.second;
    if (body.IsNull()) continue;  // "moda:" with nothing under it
    if (!body.IsMap()) {
      fail(origin, section_mark,
           fmt::format("{}: expected a mapping of keys, got {}", section,
                       config_detail::describe(body)));
    }
    for (const auto& entry : body) {
      const std::string key = entry.first.Scalar();
      const YAML::Mark& mark = entry.first.Mark();
      const Field& field = lookup(section, key, origin, mark);
      std::string path = fmt::format("{}.{}", section, key);
      if (!seen.insert(path).second) fail(origin, mark, fmt::format("duplicate key '{}'", path));
      field.set(config, entry.second, {origin, std::move(path), mark});
    }
  }
}

// Applies one "section.key=value" argument.
void apply_override(Config& config, const std::string& argument) {
  const std::string origin = "--set " + argument;
  const YAML::Mark no_line = YAML::Mark::null_mark();
  const size_t equals = argument.find('=');
  if (equals == std::string::npos) {
    fail(origin, no_line, "expected section.key=value, e.g. model.n_layers=6");
  }
  const std::string path(absl::StripAsciiWhitespace(argument.substr(0, equals)));
  const std::vector<std::string> parts = absl::StrSplit(path, '.');
  if (parts.size() == 1) {
    fail(
        origin, no_line,
        fmt::format("'{}' has no section; expected section.key=value{}", path, suggest_home(path)));
  }
  if (parts.size() != 2 || parts[0].empty() || parts[1].empty()) {
    fail(origin, no_line, "expected section.key=value, e.g. model.n_layers=6");
  }
  check_section(parts[0], origin, no_line);
  const Field& field = lookup(parts[0], parts[1], origin, no_line);
  YAML::Node value;
  try {
    value = YAML::Load(argument.substr(equals + 1));
  } catch (const YAML::Exception& e) {
    fail(origin, no_line, fmt::format("{}: invalid YAML value: {}", path, e.msg));
  }
  field.set(config, value, {origin, path, no_line});
}

std::string read_file(const std::string& path) {
  if (path.empty()) throw ConfigError("cannot read config file '': the path is empty");
  // An ifstream opens a directory without complaint and then reads nothing.
  std::error_code ignored;
  if (std::filesystem::is_directory(path, ignored)) {
    throw ConfigError(fmt::format("cannot read config file '{}': it is a directory", path));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw ConfigError(fmt::format("cannot read config file '{}': {}", path,
                                  std::generic_category().message(errno)));
  }
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace

Config parse_config(const std::string& yaml_text, const std::string& origin) {
  std::vector<YAML::Node> documents;
  try {
    documents = YAML::LoadAll(yaml_text);
  } catch (const YAML::Exception& e) {
    // yaml-cpp's message for a tab in the indentation does not say so: name the first such line.
    std::string hint;
    int64_t line = 1;
    for (absl::string_view text : absl::StrSplit(yaml_text, '\n')) {
      const size_t indent = text.find_first_not_of(" \t");
      if (text.substr(0, indent).find('\t') != absl::string_view::npos) {
        hint =
            fmt::format(" (line {} is indented with a tab; YAML indents with spaces only)", line);
        break;
      }
      ++line;
    }
    fail(origin, e.mark, fmt::format("invalid YAML: {}{}", e.msg, hint));
  }
  // YAML::Load would silently drop every document after the first.
  if (documents.size() > 1) {
    fail(origin, documents[1].Mark(),
         "more than one YAML document (a second one starts here, after '---')");
  }
  const YAML::Node root = documents.empty() ? YAML::Node() : documents[0];
  Config config;
  config.source = origin;
  apply_document(config, root, origin);
  validate(config);
  return config;
}

Config load_config(const std::string& path) { return parse_config(read_file(path), path); }

Config default_config() {
  return parse_config(std::string(assets::tiny_config()), "embedded default (configs/tiny.yaml)");
}

void apply_overrides(Config& config, const std::vector<std::string>& overrides) {
  // Work on a copy so that a failing override leaves `config` as it was.
  Config result = config;
  for (const std::string& argument : overrides) apply_override(result, argument);
  // A range error caused by an override should name it, not only the file.
  std::string origin = config_detail::origin_of(config);
  if (!overrides.empty()) {
    origin = fmt::format("{} with --set {}", origin, absl::StrJoin(overrides, " --set "));
  }
  config_detail::validate_as(result, origin);
  config = std::move(result);
}

std::string to_yaml(const Config& config) {
  YAML::Emitter out;
  out << YAML::BeginMap;
  for (std::string_view section : sections()) {
    out << YAML::Key << std::string(section) << YAML::Value << YAML::BeginMap;
    for (const Field& field : fields()) {
      if (field.section != section) continue;
      out << YAML::Key << std::string(field.key) << YAML::Value;
      field.emit(config, out);
    }
    out << YAML::EndMap;
  }
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

}  // namespace moda
