// CURVE key files and allow lists (docs/security.md): what `klynaa keygen`
// writes, what the broker, the nodes and the clients read. Pure text in, values
// out: no I/O and no libzmq here (Z85 is RFC 32, a page of code); reading the
// files, deriving a public key from a secret one and the ZAP handler live with
// their callers (cli/keys.hpp, broker/zap.hpp).
//
// Key file (NAME.key, secret, mode 0600) and public key file (NAME.pub): ZPL
// (ZeroMQ RFC 4) as czmq's zcert and pyzmq's zmq.auth write them, so those tools
// read ours and we read theirs:
//
//     #   ZeroMQ CURVE **Secret** Certificate ...      <- comments
//     metadata
//         name = "django"
//     curve
//         public-key = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
//         secret-key = "JTKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6"   <- NAME.key only
//
// parse_key_file() takes the `public-key` and `secret-key` lines (quotes
// optional) wherever they are and ignores the rest of the structure. A file
// whose only content is one bare Z85 key (and comments) counts as a public key.
//
// Allow list: one Z85 public key per line, optionally followed by whitespace and
// a label ("rq:rM>...yf7 django-web-1"); blank lines and comment lines (first
// character `#` after leading spaces; a Z85 key never starts with `#`, whose
// value 84 exceeds (2^32 - 1) / 85^4) are skipped. Anything else is an error
// naming the line, so a typo never silently drops (or adds) a key.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <variant>

namespace klynaa::protocol {

/// A CURVE key: 32 bytes.
using curve_key = std::array<uint8_t, 32>;

/// Z85 (RFC 32) of 32 bytes: 40 characters.
std::string z85_encode(const curve_key& key);

/// The key whose Z85 text is `text` (exactly 40 characters of the Z85
/// alphabet, each 5-character group at most 2^32 - 1), or nullopt.
std::optional<curve_key> z85_decode(std::string_view text);

/// True when `text` is a Z85 key (z85_decode would succeed).
bool is_z85_key(std::string_view text);

/// What a key file holds, as Z85 text. At least one of the two is set.
struct key_file {
  std::optional<std::string> public_key;
  std::optional<std::string> secret_key;
};

/// Parses a key file (see the top of this file). Returns the keys, or a
/// sentence saying what is wrong (without the file name, which the caller
/// adds): a malformed key (naming the line), a key given twice, or no key at
/// all. Does not check that the public key belongs to the secret key: that needs
/// curve25519 (cli/keys.hpp does it with zmq_curve_public).
std::variant<key_file, std::string> parse_key_file(std::string_view text);

/// An allow list: decoded public key -> its label ("" when none). A key listed
/// twice keeps its first label.
using allow_list = std::map<curve_key, std::string>;

/// Parses an allow list (see the top of this file). Returns the keys or a
/// sentence naming the first bad line ("line 3: ..."). An empty list is valid
/// (it admits nobody).
std::variant<allow_list, std::string> parse_allow_list(std::string_view text);

/// The text of NAME.key: ZPL with `name` and `created` metadata and both keys.
/// `created` is a timestamp such as "2026-01-31T12:00:00.000Z".
std::string format_secret_key_file(const std::string& name, const std::string& public_key,
                                   const std::string& secret_key, const std::string& created);

/// The text of NAME.pub: the same without the secret key.
std::string format_public_key_file(const std::string& name, const std::string& public_key,
                                   const std::string& created);

/// The first 8 characters of a Z85 key and "...", for logs: enough to find the
/// key in an allow list, not enough to matter.
std::string key_prefix(std::string_view z85);

}  // namespace klynaa::protocol
