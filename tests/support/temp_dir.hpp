// A fresh directory per test, removed with everything in it afterwards, and the
// small file helpers the tests read and write it with. The one temp dir of every
// test suite (unit and integration): include "tests/support/temp_dir.hpp".
#pragma once

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace klynaa::test {

/// A directory made with mkdtemp, /tmp/klynaa-test-XXXXXX (always /tmp, not
/// $TMPDIR: a test that drops to user `nobody` must still reach it), removed on
/// destruction even when a test took its rights away (a read-only data dir).
/// Not copyable.
struct temp_dir {
  std::string path;  ///< the directory, without a trailing slash

  temp_dir() {
    std::string tmpl = "/tmp/klynaa-test-XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("temp_dir: mkdtemp failed for " + tmpl);
    path = tmpl;
  }
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::permissions(path, std::filesystem::perms::owner_all, ec);
    std::filesystem::remove_all(path, ec);
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;

  /// The path of `name` inside the directory (`name` may hold slashes).
  std::string operator/(const std::string& name) const { return path + "/" + name; }
};

/// The whole file; empty when it cannot be read.
inline std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

/// The lines of a text file, without their newlines.
inline std::vector<std::string> read_lines(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

/// Replaces the file with `text`; returns `path`.
inline std::string write_file(const std::string& path, const std::string& text) {
  std::ofstream(path) << text;
  return path;
}

}  // namespace klynaa::test
