// See keys.hpp. `klynaa keygen` writes NAME.key with O_EXCL and mode 0600 from
// the start (never a moment readable by others), then NAME.pub; it refuses to
// replace either file.
#include "cli/keys.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include <zmq.h>

#include "cli/commands.hpp"
#include "protocol/curve_keys.hpp"
#include "protocol/log.hpp"

namespace klynaa::cli {

namespace {

bool read_text(const std::string& path, const std::string& what, std::string& out, std::string& err) {
  if (path.empty()) {
    err = what + ": not set";
    return false;
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    err = what + ": cannot read " + path + ": " + std::strerror(errno);
    return false;
  }
  std::stringstream ss;
  ss << in.rdbuf();
  out = ss.str();
  return true;
}

std::optional<protocol::key_file> read_key_file(const std::string& path, const std::string& what,
                                                std::string& err) {
  std::string text;
  if (!read_text(path, what, text, err)) return std::nullopt;
  auto parsed = protocol::parse_key_file(text);
  if (auto* e = std::get_if<std::string>(&parsed)) {
    err = what + ": " + path + ": " + *e;
    return std::nullopt;
  }
  return std::get<protocol::key_file>(std::move(parsed));
}

/// The public key of `secret` (Z85), or "" when libzmq cannot do CURVE.
std::string public_of(const std::string& secret) {
  char pub[41] = {0};
  if (zmq_curve_public(pub, secret.c_str()) != 0) return {};
  return pub;
}

bool valid_name(const std::string& name) {
  if (name.empty() || name.size() > 64 || name[0] == '.' || name[0] == '-') return false;
  for (char c : name)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-')) return false;
  return true;
}

/// Creates `path` (which must not exist) with `mode` and writes `text`; false
/// with `err` naming the file.
bool write_new(const std::string& path, const std::string& text, mode_t mode, std::string& err) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  if (fd < 0) {
    err = errno == EEXIST ? path + " already exists; keygen never replaces a key (choose another --name or --out)"
                          : "cannot create " + path + ": " + std::strerror(errno);
    return false;
  }
  bool ok = ::fchmod(fd, mode) == 0;  // exactly `mode`, whatever the umask
  size_t done = 0;
  while (ok && done < text.size()) {
    ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    ok = n > 0;
    if (ok) done += static_cast<size_t>(n);
  }
  ok = ok && ::fsync(fd) == 0;
  int saved = errno;
  ::close(fd);
  if (!ok) {
    err = "cannot write " + path + ": " + std::strerror(saved);
    ::unlink(path.c_str());
    return false;
  }
  return true;
}

}  // namespace

std::optional<key_pair> load_key_pair(const std::string& path, const std::string& what, std::string& err,
                                      std::string* warning) {
  auto keys = read_key_file(path, what, err);
  if (!keys) return std::nullopt;
  if (!keys->secret_key) {
    err = what + ": " + path + " holds no secret-key: it is a public key file; name the key pair file "
          "(NAME.key, written by `klynaa keygen`)";
    return std::nullopt;
  }
  std::string derived = public_of(*keys->secret_key);
  if (derived.empty()) {
    err = what + ": this libzmq cannot do CURVE (built without libsodium or tweetnacl)";
    return std::nullopt;
  }
  if (keys->public_key && *keys->public_key != derived) {
    err = what + ": " + path + ": its public-key does not belong to its secret-key (two key pairs mixed up?)";
    return std::nullopt;
  }
  struct stat st {};
  if (warning && ::stat(path.c_str(), &st) == 0 && (st.st_mode & 077))
    *warning = what + ": " + path + " is readable by other users (mode " +
               std::to_string((st.st_mode >> 6) & 7) + std::to_string((st.st_mode >> 3) & 7) +
               std::to_string(st.st_mode & 7) + "); it holds a secret key: chmod 600 it";
  return key_pair{derived, *keys->secret_key};
}

std::optional<std::string> load_public_key(const std::string& path, const std::string& what, std::string& err) {
  auto keys = read_key_file(path, what, err);
  if (!keys) return std::nullopt;
  if (keys->public_key) return keys->public_key;
  std::string derived = public_of(*keys->secret_key);
  if (derived.empty()) {
    err = what + ": this libzmq cannot do CURVE (built without libsodium or tweetnacl)";
    return std::nullopt;
  }
  return derived;
}

std::optional<size_t> check_allow_list(const std::string& path, const std::string& what, std::string& err) {
  std::string text;
  if (!read_text(path, what, text, err)) return std::nullopt;
  auto parsed = protocol::parse_allow_list(text);
  if (auto* e = std::get_if<std::string>(&parsed)) {
    err = what + ": " + path + ": " + *e;
    return std::nullopt;
  }
  return std::get<protocol::allow_list>(parsed).size();
}

bool check_curve_files(const protocol::config& cfg, std::string& err) {
  struct file {
    const std::string& path;
    const char* what;
    enum { pair, pub, allow } kind;
  };
  const file files[] = {
      {cfg.ingress.curve_secret_file, "[ingress] curve_secret_file", file::pair},
      {cfg.ingress.curve_allow_file, "[ingress] curve_allow_file", file::allow},
      {cfg.ingress.curve_server_public_file, "[ingress] curve_server_public_file", file::pub},
      {cfg.ingress.curve_client_secret_file, "[ingress] curve_client_secret_file", file::pair},
      {cfg.cluster.curve_secret_file, "[cluster] curve_secret_file", file::pair},
      {cfg.cluster.curve_allow_file, "[cluster] curve_allow_file", file::allow},
      {cfg.cluster.curve_server_public_file, "[cluster] curve_server_public_file", file::pub},
      {cfg.cluster.curve_client_secret_file, "[cluster] curve_client_secret_file", file::pair},
  };
  for (const auto& f : files) {
    if (f.path.empty()) continue;
    bool ok = f.kind == file::pair  ? load_key_pair(f.path, f.what, err).has_value()
              : f.kind == file::pub ? load_public_key(f.path, f.what, err).has_value()
                                    : check_allow_list(f.path, f.what, err).has_value();
    if (!ok) return false;
  }
  if (cfg.ingress.curve && (cfg.ingress.curve_secret_file.empty() || cfg.ingress.curve_allow_file.empty())) {
    err = std::string("[ingress] ") + (cfg.ingress.curve_secret_file.empty() ? "curve_secret_file" : "curve_allow_file") +
          ": not set, but [ingress] curve = true needs it";
    return false;
  }
  return true;
}

std::optional<curve_client_keys> load_client_keys(const key_source& server, const key_source& own,
                                                  std::string& err) {
  err.clear();
  if (server.path.empty() && own.path.empty()) return std::nullopt;
  if (server.path.empty()) {
    err = server.what + ": not set, but " + own.what + " is: CURVE needs the broker's public key too";
    return std::nullopt;
  }
  if (own.path.empty()) {
    err = own.what + ": not set, but " + server.what +
          " is: CURVE needs this side's own key pair too (`klynaa keygen`)";
    return std::nullopt;
  }
  curve_client_keys out;
  auto s = load_public_key(server.path, server.what, err);
  if (!s) return std::nullopt;
  out.server_key = *s;
  auto pair = load_key_pair(own.path, own.what, err);
  if (!pair) return std::nullopt;
  out.own = *pair;
  return out;
}

int cmd_keygen(int argc, char** argv) {
  parsed_args args;
  std::string err;
  std::vector<flag_spec> specs = {{"out", true, "directory to write NAME.key and NAME.pub into (default .)"},
                                  {"name", true, "file name and label of the key pair (default klynaa)"}};
  if (!parse_args(argc, argv, 2, specs, args, err) || !args.positional.empty()) {
    std::cerr << "klynaa keygen: " << (err.empty() ? "unexpected argument '" + args.positional[0] + "'" : err)
              << "\nusage: klynaa keygen [--out DIR] [--name NAME]\n";
    return 2;
  }
  const std::string dir = args.get("out").value_or(".");
  const std::string name = args.get("name").value_or("klynaa");
  if (!valid_name(name)) {
    std::cerr << "klynaa keygen: --name must be 1-64 characters of [A-Za-z0-9._-], not starting with . or -, "
                 "got '" << name << "'\n";
    return 2;
  }
  if (dir.empty()) {
    std::cerr << "klynaa keygen: --out must not be empty\n";
    return 2;
  }
  if (!zmq_has("curve")) {
    std::cerr << "klynaa keygen: this libzmq cannot do CURVE (built without libsodium or tweetnacl)\n";
    return 1;
  }
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    std::cerr << "klynaa keygen: cannot create " << dir << " (--out): " << ec.message() << "\n";
    return 1;
  }
  const std::string key_path = dir + "/" + name + ".key", pub_path = dir + "/" + name + ".pub";
  for (const auto& p : {key_path, pub_path})
    if (::access(p.c_str(), F_OK) == 0) {
      std::cerr << "klynaa keygen: " << p << " already exists; keygen never replaces a key (choose another "
                   "--name or --out)\n";
      return 1;
    }
  char pub[41] = {0}, sec[41] = {0};
  if (zmq_curve_keypair(pub, sec) != 0) {
    std::cerr << "klynaa keygen: zmq_curve_keypair failed: " << zmq_strerror(zmq_errno()) << "\n";
    return 1;
  }
  using namespace std::chrono;
  const std::string created =
      log::iso8601_utc_ms(duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count());
  if (!write_new(key_path, protocol::format_secret_key_file(name, pub, sec, created), 0600, err)) {
    std::cerr << "klynaa keygen: " << err << "\n";
    return 1;
  }
  if (!write_new(pub_path, protocol::format_public_key_file(name, pub, created), 0644, err)) {
    std::cerr << "klynaa keygen: " << err << "\n";
    ::unlink(key_path.c_str());
    return 1;
  }
  std::memset(sec, 0, sizeof(sec));
  std::cerr << "klynaa keygen: wrote " << key_path << " (key pair, secret: mode 0600) and " << pub_path
            << " (public key)\n";
  // stdout: the allow-list line, so `klynaa keygen ... >> clients.allow` works.
  std::cout << pub << " " << name << "\n";
  return 0;
}

}  // namespace klynaa::cli
