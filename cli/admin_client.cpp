#include "cli/admin_client.hpp"

#include <httplib.h>

#include <cstdio>

namespace klynaa::cli {

std::optional<nlohmann::json> admin_call(const std::string& method, const std::string& addr,
                                         const std::string& token, const std::string& path,
                                         std::string& err) {
  auto colon = addr.rfind(':');
  if (colon == std::string::npos || colon == 0) {
    err = "--admin must be HOST:PORT, got '" + addr + "'";
    return std::nullopt;
  }
  httplib::Client c(addr.substr(0, colon), std::atoi(addr.substr(colon + 1).c_str()));
  c.set_connection_timeout(3, 0);
  c.set_read_timeout(20, 0);
  httplib::Headers h;
  if (!token.empty()) h.emplace("Authorization", "Bearer " + token);
  auto r = method == "POST" ? c.Post(path.c_str(), h, "", "text/plain") : c.Get(path.c_str(), h);
  if (!r) {
    err = "no answer from the admin endpoint " + addr + " (--admin, admin.bind)";
    return std::nullopt;
  }
  auto j = nlohmann::json::parse(r->body, nullptr, false);
  if (r->status < 200 || r->status >= 300) {
    err = "the admin endpoint answered " + std::to_string(r->status) + ": " +
          (j.is_object() && j.contains("message") ? j["message"].get<std::string>()
           : j.is_object() && j.contains("error") ? j["error"].dump()
                                                  : r->body);
    return std::nullopt;
  }
  if (j.is_discarded()) {
    err = "the admin endpoint's answer is not JSON";
    return std::nullopt;
  }
  return j;
}

std::string url_encode(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      char buf[4];
      std::snprintf(buf, sizeof buf, "%%%02X", c);
      out += buf;
    }
  }
  return out;
}

}  // namespace klynaa::cli
