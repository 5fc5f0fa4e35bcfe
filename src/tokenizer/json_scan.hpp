// A small JSON reader for the places moda reads JSON: the `text` member of each JSONL line, the
// members of tiktoken's encoder files and the shard manifest. It validates the whole object (so a
// truncated line is an error, not a silently shorter document) but builds no tree: it returns the
// raw text of one top-level member, and decodes string literals.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace moda::json {

// The raw text of the value of the top-level member `key` of the JSON object `object` (leading
// and trailing whitespace allowed), or nullopt when there is no such member; with repeated keys
// the first wins. Throws std::runtime_error (with the byte offset) when `object` is not one
// well-formed JSON object.
std::optional<std::string_view> find_member(std::string_view object, std::string_view key);

// Decodes a JSON string literal, quotes included, to UTF-8. \uXXXX escapes of a surrogate pair
// become one code point; a lone surrogate becomes U+FFFD (as a JavaScript TextEncoder does).
// Throws std::runtime_error for a malformed literal.
std::string unescape_string(std::string_view literal);

// The raw text of each element of the JSON array `array`; throws std::runtime_error when it is
// not one well-formed array.
std::vector<std::string_view> array_elements(std::string_view array);

// `s` as a JSON string literal (quotes, backslash and control characters escaped; other bytes
// are copied, so UTF-8 stays UTF-8).
std::string quote(std::string_view s);

// find_member then unescape_string; throws std::runtime_error when the member is not a string.
std::optional<std::string> string_member(std::string_view object, std::string_view key);

}  // namespace moda::json
