// CURVE key files and allow lists (protocol/curve_keys.hpp, docs/security.md).
#include <catch2/catch.hpp>

#include "protocol/curve_keys.hpp"

using namespace klynaa::protocol;

namespace {
// The key pairs of libzmq's own tests (tests/testutil_security.cpp).
const std::string server_public = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7";
const std::string server_secret = "JTKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6";
const std::string client_public = "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID";

key_file keys_of(const std::string& text) {
  auto r = parse_key_file(text);
  INFO(text);
  REQUIRE(std::holds_alternative<key_file>(r));
  return std::get<key_file>(r);
}

std::string key_error(const std::string& text) {
  auto r = parse_key_file(text);
  INFO(text);
  REQUIRE(std::holds_alternative<std::string>(r));
  return std::get<std::string>(r);
}

allow_list list_of(const std::string& text) {
  auto r = parse_allow_list(text);
  INFO(text);
  REQUIRE(std::holds_alternative<allow_list>(r));
  return std::get<allow_list>(r);
}

std::string list_error(const std::string& text) {
  auto r = parse_allow_list(text);
  INFO(text);
  REQUIRE(std::holds_alternative<std::string>(r));
  return std::get<std::string>(r);
}
}  // namespace

TEST_CASE("Z85 encodes the RFC 32 test vector and decodes it back", "[curve]") {
  curve_key k{};
  const uint8_t hello[] = {0x86, 0x4F, 0xD2, 0x6F, 0xB5, 0x59, 0xF7, 0x5B};
  std::copy(std::begin(hello), std::end(hello), k.begin());
  const std::string text = "HelloWorld" + std::string(30, '0');
  CHECK(z85_encode(k) == text);
  auto back = z85_decode(text);
  REQUIRE(back);
  CHECK(*back == k);
}

TEST_CASE("Z85 round-trips real keys and refuses what is not a key", "[curve]") {
  for (const auto& key : {server_public, server_secret, client_public}) {
    auto k = z85_decode(key);
    REQUIRE(k);
    CHECK(z85_encode(*k) == key);
  }
  CHECK_FALSE(z85_decode(server_public.substr(0, 39)));           // too short
  CHECK_FALSE(z85_decode(server_public + "0"));                   // too long
  CHECK_FALSE(z85_decode("rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]y\"7"));  // '"' is not Z85
  CHECK_FALSE(z85_decode("rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8] f7"));  // nor a space
  CHECK_FALSE(z85_decode("#####" + std::string(35, '0')));        // 85^5 - 1 > 2^32 - 1
  CHECK(key_prefix(server_public) == "rq:rM>}U...");
}

TEST_CASE("a key pair file as keygen writes it holds both keys, its .pub only the public one", "[curve]") {
  auto secret_text = format_secret_key_file("broker", server_public, server_secret, "2026-01-31T12:00:00.000Z");
  auto k = keys_of(secret_text);
  CHECK(k.public_key == server_public);
  CHECK(k.secret_key == server_secret);
  CHECK(secret_text.find("name = \"broker\"") != std::string::npos);
  auto pub_text = format_public_key_file("broker", server_public, "2026-01-31T12:00:00.000Z");
  auto p = keys_of(pub_text);
  CHECK(p.public_key == server_public);
  CHECK_FALSE(p.secret_key);
  CHECK(pub_text.find(server_secret) == std::string::npos);
}

TEST_CASE("key files of pyzmq's zmq.auth and czmq's zcert are read too", "[curve]") {
  // pyzmq 24 create_certificates(): a banner, metadata, curve, indented quoted keys.
  auto k = keys_of("#   ****  Generated on 2024-01-01 00:00:00 by pyzmq  ****\n"
                   "#   ZeroMQ CURVE **Secret** Certificate\n\n"
                   "metadata\n    user = \"x\"\ncurve\n"
                   "    public-key = \"" + server_public + "\"\n"
                   "    secret-key = \"" + server_secret + "\"\n");
  CHECK(k.public_key == server_public);
  CHECK(k.secret_key == server_secret);
  // Unquoted, CRLF line ends.
  auto u = keys_of("curve\r\n  public-key = " + client_public + "\r\n");
  CHECK(u.public_key == client_public);
}

TEST_CASE("a file with one bare key (and comments) is a public key file", "[curve]") {
  auto k = keys_of("# the broker\n" + server_public + "  broker\n");
  CHECK(k.public_key == server_public);
  CHECK_FALSE(k.secret_key);
}

TEST_CASE("a bad key file says what is wrong and where", "[curve]") {
  CHECK_THAT(key_error("metadata\ncurve\n"), Catch::Contains("no key found"));
  CHECK_THAT(key_error(""), Catch::Contains("no key found"));
  CHECK_THAT(key_error("curve\n    public-key = \"tooshort\"\n"),
             Catch::Contains("line 2") && Catch::Contains("public-key") && Catch::Contains("40 characters"));
  CHECK_THAT(key_error("public-key = \"" + server_public + "\"\npublic-key = \"" + client_public + "\"\n"),
             Catch::Contains("line 2") && Catch::Contains("twice"));
  CHECK_THAT(key_error(server_public + "\n" + client_public + "\n"), Catch::Contains("second bare key"));
  CHECK_THAT(key_error(server_public + "\nsecret-key = \"" + server_secret + "\"\n"),
             Catch::Contains("bare key"));
}

TEST_CASE("an allow list takes one key a line with an optional label, comments and blank lines", "[curve]") {
  auto l = list_of("# Django web servers\n"
                   "\n"
                   + server_public + "\n"
                   "   " + client_public + "   django-web-2 (rotated 2026-01)\n"
                   "# " + server_secret + " (an old key, commented out)\n");
  CHECK(l.size() == 2);
  REQUIRE(l.count(*z85_decode(client_public)));
  CHECK(l.at(*z85_decode(client_public)) == "django-web-2 (rotated 2026-01)");
  CHECK(l.at(*z85_decode(server_public)).empty());
  CHECK_FALSE(l.count(*z85_decode(server_secret)));
  CHECK(list_of("").empty());  // valid: admits nobody
  CHECK(list_of("# nobody yet\n").empty());
  CHECK(list_of(server_public + "\n" + server_public + " again\n").size() == 1);
}

TEST_CASE("a key never starts with #, so a # line is always a comment", "[curve]") {
  // The first character of a 5-character group is at most (2^32 - 1) / 85^4 = 82,
  // '%'; '#' (84) can only appear further in.
  curve_key k;
  k.fill(0xFF);
  std::string key = z85_encode(k);
  CHECK(key.substr(0, 5) == "%nSc0");
  CHECK(list_of("#" + key.substr(1) + "\n").empty());
}

TEST_CASE("a bad allow-list line is an error naming the line, never skipped", "[curve]") {
  CHECK_THAT(list_error(server_public + "\nnot-a-key\n"),
             Catch::Contains("line 2") && Catch::Contains("40 characters"));
  CHECK_THAT(list_error("public-key = \"" + server_public + "\"\n"), Catch::Contains("line 1"));
  CHECK_THAT(list_error(server_public.substr(0, 39) + "\n"), Catch::Contains("got 39"));
}
