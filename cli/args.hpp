// Command-line parsing shared by every `klynaa` command: `--flag value`,
// `--flag=value` and boolean `--flag`; an unknown flag or a missing value is a
// usage error (exit 2) that names the flag.
#pragma once

#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace klynaa::cli {

struct flag_spec {
  std::string name;   ///< without dashes: "data-dir"
  bool takes_value = true;
  std::string help;
};

struct parsed_args {
  std::map<std::string, std::string> flags;  ///< boolean flags map to "true"
  std::vector<std::string> positional;
  std::optional<std::string> get(const std::string& name) const {
    auto it = flags.find(name);
    if (it == flags.end()) return std::nullopt;
    return it->second;
  }
  bool has(const std::string& name) const { return flags.count(name) > 0; }
};

/// Parses argv[first..]. Returns false and sets `error` (naming the flag) on bad usage.
bool parse_args(int argc, char** argv, int first, const std::vector<flag_spec>& specs,
                parsed_args& out, std::string& error);

/// "  --data-dir D   help" lines for usage texts.
std::string describe_flags(const std::vector<flag_spec>& specs);

}  // namespace klynaa::cli
