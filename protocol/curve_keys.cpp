// See curve_keys.hpp. Parsing goes line by line; every error names the line.
#include "protocol/curve_keys.hpp"

#include <cctype>
#include <vector>

namespace klynaa::protocol {

namespace {

constexpr char z85_alphabet[] =
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

int z85_value(char c) {
  for (int i = 0; i < 85; ++i)
    if (z85_alphabet[i] == c) return i;
  return -1;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

std::vector<std::string_view> lines_of(std::string_view text) {
  std::vector<std::string_view> out;
  while (!text.empty()) {
    auto nl = text.find('\n');
    auto line = text.substr(0, nl);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    out.push_back(line);
    if (nl == std::string_view::npos) break;
    text.remove_prefix(nl + 1);
  }
  return out;
}

/// The first whitespace-separated word of `s` (already trimmed) and the rest.
std::pair<std::string_view, std::string_view> first_word(std::string_view s) {
  size_t i = 0;
  while (i < s.size() && !std::isspace(static_cast<unsigned char>(s[i]))) ++i;
  return {s.substr(0, i), trim(s.substr(i))};
}

std::string describe_bad_key(std::string_view text) {
  if (text.size() != 40)
    return "expected a Z85 key of 40 characters, got " + std::to_string(text.size());
  for (char c : text)
    if (z85_value(c) < 0) return std::string("'") + c + "' is not a Z85 character";
  return "not a valid Z85 key (a 5-character group is out of range)";
}

/// For `public-key = "..."` / `secret-key = "..."`: the name and the unquoted
/// value, or nullopt when the line is not `NAME = VALUE`.
std::optional<std::pair<std::string_view, std::string_view>> assignment(std::string_view line) {
  auto eq = line.find('=');
  if (eq == std::string_view::npos) return std::nullopt;
  auto name = trim(line.substr(0, eq));
  auto value = trim(line.substr(eq + 1));
  if (value.size() >= 2 && (value.front() == '"' || value.front() == '\'') && value.back() == value.front())
    value = value.substr(1, value.size() - 2);
  return std::make_pair(name, value);
}

}  // namespace

std::string z85_encode(const curve_key& key) {
  std::string out;
  out.reserve(40);
  for (size_t i = 0; i < key.size(); i += 4) {
    uint32_t v = (uint32_t{key[i]} << 24) | (uint32_t{key[i + 1]} << 16) | (uint32_t{key[i + 2]} << 8) | key[i + 3];
    char group[5];
    for (int j = 4; j >= 0; --j) {
      group[j] = z85_alphabet[v % 85];
      v /= 85;
    }
    out.append(group, 5);
  }
  return out;
}

std::optional<curve_key> z85_decode(std::string_view text) {
  if (text.size() != 40) return std::nullopt;
  curve_key key{};
  for (size_t g = 0; g < 8; ++g) {
    uint64_t v = 0;
    for (size_t j = 0; j < 5; ++j) {
      int d = z85_value(text[g * 5 + j]);
      if (d < 0) return std::nullopt;
      v = v * 85 + static_cast<uint64_t>(d);
    }
    if (v > 0xFFFFFFFFull) return std::nullopt;
    key[g * 4] = static_cast<uint8_t>(v >> 24);
    key[g * 4 + 1] = static_cast<uint8_t>(v >> 16);
    key[g * 4 + 2] = static_cast<uint8_t>(v >> 8);
    key[g * 4 + 3] = static_cast<uint8_t>(v);
  }
  return key;
}

bool is_z85_key(std::string_view text) { return z85_decode(text).has_value(); }

std::variant<key_file, std::string> parse_key_file(std::string_view text) {
  key_file out;
  std::optional<std::string> bare;  // a line that is just a key
  size_t n = 0;
  for (auto raw : lines_of(text)) {
    ++n;
    auto line = trim(raw);
    if (line.empty()) continue;
    auto where = "line " + std::to_string(n) + ": ";
    if (auto a = assignment(line); a && (a->first == "public-key" || a->first == "secret-key")) {
      bool is_public = a->first == "public-key";
      auto& slot = is_public ? out.public_key : out.secret_key;
      if (slot) return where + std::string(a->first) + " is given twice";
      if (!is_z85_key(a->second)) return where + std::string(a->first) + ": " + describe_bad_key(a->second);
      slot = std::string(a->second);
      continue;
    }
    auto word = first_word(line).first;
    if (is_z85_key(word)) {
      if (bare) return where + "a second bare key; a key file holds one key pair";
      bare = std::string(word);
      continue;
    }
    // Anything else (comments, ZPL sections and metadata) is not ours to judge.
  }
  if (bare) {
    if (out.public_key || out.secret_key)
      return "a bare key line beside public-key/secret-key lines; write either one bare public key or "
             "the `public-key = \"...\"` form";
    out.public_key = std::move(bare);
  }
  if (!out.public_key && !out.secret_key)
    return "no key found: expected a `public-key = \"...\"` line (and `secret-key = \"...\"` in a key pair "
           "file), as `klynaa keygen` writes them";
  return out;
}

std::variant<allow_list, std::string> parse_allow_list(std::string_view text) {
  allow_list out;
  size_t n = 0;
  for (auto raw : lines_of(text)) {
    ++n;
    auto line = trim(raw);
    if (line.empty()) continue;
    auto [word, rest] = first_word(line);
    auto key = z85_decode(word);
    if (!key) {
      if (line.front() == '#') continue;  // a comment (no key starts with '#')
      return "line " + std::to_string(n) + ": " + describe_bad_key(word) +
             " (one Z85 public key a line, optionally followed by a label; # starts a comment)";
    }
    out.emplace(*key, std::string(rest));
  }
  return out;
}

std::string format_secret_key_file(const std::string& name, const std::string& public_key,
                                   const std::string& secret_key, const std::string& created) {
  return "#   ****  Generated on " + created + " by klynaa keygen  ****\n"
         "#   ZeroMQ CURVE **Secret** Certificate\n"
         "#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.\n"
         "#   Its public half is in " + name + ".pub: hand that one out instead.\n"
         "\n"
         "metadata\n"
         "    name = \"" + name + "\"\n"
         "    created = \"" + created + "\"\n"
         "curve\n"
         "    public-key = \"" + public_key + "\"\n"
         "    secret-key = \"" + secret_key + "\"\n";
}

std::string format_public_key_file(const std::string& name, const std::string& public_key,
                                   const std::string& created) {
  return "#   ****  Generated on " + created + " by klynaa keygen  ****\n"
         "#   ZeroMQ CURVE Public Certificate\n"
         "#   Not a secret. A broker admits this key when its line is in an allow list:\n"
         "#   " + public_key + " " + name + "\n"
         "\n"
         "metadata\n"
         "    name = \"" + name + "\"\n"
         "    created = \"" + created + "\"\n"
         "curve\n"
         "    public-key = \"" + public_key + "\"\n";
}

std::string key_prefix(std::string_view z85) { return std::string(z85.substr(0, 8)) + "..."; }

}  // namespace klynaa::protocol
