// Self-signed certificates for the tests of downstream HTTPS (https_test.cpp,
// http_loop_test.cpp), made by the openssl command line.
#pragma once

#include <cstdlib>
#include <string>

#include <catch2/catch.hpp>

#include "tests/support/temp_dir.hpp"

namespace klynaa::test {

/// A self-signed certificate for `subject_alt_name` (e.g. "IP:127.0.0.1") in
/// DIR/NAME.crt with its key in DIR/NAME.key.
inline void make_certificate(const temp_dir& dir, const std::string& name, const std::string& subject_alt_name) {
  const std::string crt = dir / (name + ".crt"), key = dir / (name + ".key");
  const std::string cmd = "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2"
                          " -subj /CN=klynaa-test -addext subjectAltName=" +
                          subject_alt_name + " -keyout '" + key + "' -out '" + crt + "' 2>/dev/null";
  INFO(cmd);
  REQUIRE(std::system(cmd.c_str()) == 0);
}

}  // namespace klynaa::test
