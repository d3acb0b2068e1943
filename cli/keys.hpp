// CURVE key files for the commands (docs/security.md): reading a key pair or a
// public key named by a config key or a flag, checking an allow list, and
// `klynaa keygen`. The formats are protocol/curve_keys.hpp's; this file adds the
// I/O and libzmq's curve25519 (zmq_curve_keypair, zmq_curve_public).
//
// Every error is a sentence naming the config key or flag (`what`) and the file,
// for exit code 2.
#pragma once

#include <optional>
#include <string>

#include "protocol/config.hpp"

namespace klynaa::cli {

/// A CURVE key pair, Z85.
struct key_pair {
  std::string public_key;
  std::string secret_key;
};

/// Reads a key pair file (NAME.key). It must hold a secret key; a public key
/// in it must belong to that secret key (a file pasted together from two pairs
/// is refused). `what` names the setting, e.g. "[ingress] curve_secret_file".
/// `warning` is set when the file is readable by group or others.
std::optional<key_pair> load_key_pair(const std::string& path, const std::string& what, std::string& err,
                                      std::string* warning = nullptr);

/// Reads a public key from NAME.pub, NAME.key (its public half) or a file
/// holding one bare Z85 key.
std::optional<std::string> load_public_key(const std::string& path, const std::string& what, std::string& err);

/// Reads and parses an allow list; returns how many keys it holds.
std::optional<size_t> check_allow_list(const std::string& path, const std::string& what, std::string& err);

/// The client side of CURVE: the server's public key and our key pair.
struct curve_client_keys {
  std::string server_key;
  key_pair own;
};

/// A key file and the setting that named it ("[cluster] curve_client_secret_file", "--key").
struct key_source {
  std::string path;
  std::string what;
};

/// `klynaa config --check`: reads every CURVE key file and allow list the
/// config names (whatever the role), so a bad one shows before a restart.
/// False with `err` naming the first bad key and file.
bool check_curve_files(const protocol::config& cfg, std::string& err);

/// Loads the client side of CURVE. Returns nullopt with `err` empty when both
/// paths are empty (no CURVE); with `err` set when only one is given or a file
/// is bad.
std::optional<curve_client_keys> load_client_keys(const key_source& server, const key_source& own, std::string& err);

}  // namespace klynaa::cli
