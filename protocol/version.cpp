#include "protocol/version.hpp"

namespace klynaa::protocol {

std::string version_text() {
  std::string out{build_version()};
  if (!build_commit().empty()) out += " (commit " + std::string{build_commit()} + ")";
  return out;
}

reply pong_reply(const std::string& request_id) {
  reply rep;
  if (!request_id.empty()) rep.id = request_id;
  rep.status = reply_status::pong;
  rep.version = version_text();
  return rep;
}

}  // namespace klynaa::protocol
