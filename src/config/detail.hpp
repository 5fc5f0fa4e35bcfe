// Internals of src/config/. The table of keys lists each key once: parsing, --set overrides and
// to_yaml all walk it, so a new field needs one line in fields.cpp (plus its entry in
// docs/config.md and its range check in validate.cpp).
#pragma once

#include <absl/strings/str_join.h>
#include <yaml-cpp/yaml.h>

#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "moda/config.hpp"

namespace moda::config_detail {

// Throws ConfigError "<origin>[:<line>]: <message>"; the line comes from `mark` unless it is null
// (values given with --set have no meaningful line).
[[noreturn]] void fail(std::string_view origin, const YAML::Mark& mark, std::string_view message);

// The position of one value being assigned, for error messages.
struct Place {
  std::string_view origin;  // file path, or the --set argument
  std::string path;         // "section.key"
  YAML::Mark mark;          // of the key in the file

  [[noreturn]] void fail(std::string_view message) const;
};

struct Field {
  std::string_view section;
  std::string_view key;
  // Type-checks a YAML value and assigns it to the field.
  std::function<void(Config&, const YAML::Node&, const Place&)> set;
  // Writes the field's value (the key is written by the caller).
  std::function<void(const Config&, YAML::Emitter&)> emit;
};

// Every key, sections in the order of Config and keys in the order of their structs.
const std::vector<Field>& fields();
// The section names in order.
const std::vector<std::string_view>& sections();

// "'abc'" for a scalar, "a list", "a mapping" or "an empty value": what a message says it got.
std::string describe(const YAML::Node& node);

// What messages about `config` start with: its source, or "config" when it has none.
std::string origin_of(const Config& config);

// "a, b, c": the names that `name_of` picks out of `items`. (Debian's Abseil has its own
// string_view, so StrJoin's default formatter would not take a std::string_view.)
template <typename Items, typename NameOf = std::identity>
std::string join_names(const Items& items, NameOf name_of = {}) {
  return absl::StrJoin(items, ", ", [&](std::string* out, const auto& item) {
    out->append(std::string_view(std::invoke(name_of, item)));
  });
}

// validate() with messages prefixed by `origin` instead of origin_of(config).
void validate_as(const Config& config, std::string_view origin);

}  // namespace moda::config_detail
