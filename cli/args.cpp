#include "cli/args.hpp"

namespace klynaa::cli {

bool parse_args(int argc, char** argv, int first, const std::vector<flag_spec>& specs,
                parsed_args& out, std::string& error) {
  for (int i = first; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--", 0) != 0 || a == "--") {
      out.positional.push_back(a);
      continue;
    }
    std::string name = a.substr(2), value;
    bool inline_value = false;
    if (auto eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      inline_value = true;
    }
    const flag_spec* spec = nullptr;
    for (auto& s : specs)
      if (s.name == name) spec = &s;
    if (!spec) {
      error = "unknown flag --" + name;
      return false;
    }
    if (spec->takes_value && !inline_value) {
      if (i + 1 >= argc) {
        error = "flag --" + name + " needs a value";
        return false;
      }
      value = argv[++i];
    } else if (!spec->takes_value) {
      if (inline_value) {
        error = "flag --" + name + " takes no value";
        return false;
      }
      value = "true";
    }
    out.flags[name] = value;
  }
  return true;
}

std::string describe_flags(const std::vector<flag_spec>& specs) {
  std::string s;
  for (auto& f : specs) {
    std::string left = "  --" + f.name + (f.takes_value ? " V" : "");
    if (left.size() < 22) left.resize(22, ' ');
    s += left + " " + f.help + "\n";
  }
  return s;
}

}  // namespace klynaa::cli
