// `klynaa keygen` and the key loaders of cli/keys.hpp: file modes, refusing to
// overwrite, and errors that name the setting and the file.
#include <catch2/catch.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

#include "cli/commands.hpp"
#include "cli/keys.hpp"
#include "protocol/curve_keys.hpp"
#include "tests/support/temp_dir.hpp"

using namespace klynaa;
using klynaa::test::read_file;
using klynaa::test::temp_dir;
using klynaa::test::write_file;

namespace {

int keygen(std::vector<std::string> args) {
  args.insert(args.begin(), {"klynaa", "keygen"});
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  return cli::cmd_keygen(static_cast<int>(argv.size()), argv.data());
}

mode_t mode_of(const std::string& path) {
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  return st.st_mode & 0777;
}

}  // namespace

TEST_CASE("keygen writes NAME.key (mode 0600, both keys) and NAME.pub (public only)", "[keys]") {
  temp_dir d;
  REQUIRE(keygen({"--out", d / "keys", "--name", "django"}) == 0);
  const auto key = d / "keys/django.key", pub = d / "keys/django.pub";
  CHECK(mode_of(key) == 0600);
  CHECK(mode_of(pub) == 0644);
  std::string err;
  auto pair = cli::load_key_pair(key, "--key", err);
  INFO(err);
  REQUIRE(pair);
  auto public_key = cli::load_public_key(pub, "--server-key", err);
  REQUIRE(public_key);
  CHECK(*public_key == pair->public_key);
  CHECK(read_file(pub).find(pair->secret_key) == std::string::npos);
  // The .key names its public half too, so either file gives the public key.
  CHECK(cli::load_public_key(key, "x", err) == pair->public_key);
}

TEST_CASE("keygen refuses to overwrite a key and rejects a bad name", "[keys]") {
  temp_dir d;
  REQUIRE(keygen({"--out", d.path, "--name", "node-1"}) == 0);
  const auto before = read_file(d / "node-1.key");
  CHECK(keygen({"--out", d.path, "--name", "node-1"}) == 1);
  CHECK(read_file(d / "node-1.key") == before);
  std::filesystem::remove(d / "node-1.key");  // a lone .pub blocks as well
  CHECK(keygen({"--out", d.path, "--name", "node-1"}) == 1);
  CHECK_FALSE(std::filesystem::exists(d / "node-1.key"));
  CHECK(keygen({"--out", d.path, "--name", "../escape"}) == 2);
  CHECK(keygen({"--out", d.path, "--name", ""}) == 2);
  CHECK(keygen({"--out", d.path, "stray"}) == 2);
  CHECK(keygen({"--bogus"}) == 2);
}

TEST_CASE("a public key file is not a key pair, and the error names the setting and the file", "[keys]") {
  temp_dir d;
  REQUIRE(keygen({"--out", d.path, "--name", "a"}) == 0);
  std::string err;
  CHECK_FALSE(cli::load_key_pair(d / "a.pub", "[ingress] curve_secret_file", err));
  CHECK_THAT(err, Catch::Contains("[ingress] curve_secret_file") && Catch::Contains(d / "a.pub") &&
                      Catch::Contains("no secret-key"));
  CHECK_FALSE(cli::load_key_pair(d / "missing.key", "--key", err));
  CHECK_THAT(err, Catch::Contains("--key") && Catch::Contains(d / "missing.key") &&
                      Catch::Contains("No such file"));
  write_file(d / "garbage.key", "hello\n");
  CHECK_FALSE(cli::load_key_pair(d / "garbage.key", "--key", err));
  CHECK_THAT(err, Catch::Contains("no key found"));
}

TEST_CASE("a key pair whose public key belongs to another secret key is refused", "[keys]") {
  temp_dir d;
  REQUIRE(keygen({"--out", d.path, "--name", "a"}) == 0);
  REQUIRE(keygen({"--out", d.path, "--name", "b"}) == 0);
  std::string err;
  auto a = cli::load_key_pair(d / "a.key", "x", err);
  auto b = cli::load_key_pair(d / "b.key", "x", err);
  REQUIRE((a && b));
  write_file(d / "mixed.key", "public-key = \"" + a->public_key + "\"\nsecret-key = \"" + b->secret_key + "\"\n");
  CHECK_FALSE(cli::load_key_pair(d / "mixed.key", "[cluster] curve_client_secret_file", err));
  CHECK_THAT(err, Catch::Contains("does not belong"));
  // Only the secret key: the public key is derived.
  write_file(d / "secret-only.key", "secret-key = \"" + b->secret_key + "\"\n");
  auto derived = cli::load_key_pair(d / "secret-only.key", "x", err);
  REQUIRE(derived);
  CHECK(derived->public_key == b->public_key);
}

TEST_CASE("a key pair readable by others loads with a warning", "[keys]") {
  temp_dir d;
  REQUIRE(keygen({"--out", d.path, "--name", "a"}) == 0);
  std::string err, warning;
  REQUIRE(cli::load_key_pair(d / "a.key", "x", err, &warning));
  CHECK(warning.empty());
  ::chmod((d / "a.key").c_str(), 0644);
  REQUIRE(cli::load_key_pair(d / "a.key", "[ingress] curve_secret_file", err, &warning));
  CHECK_THAT(warning, Catch::Contains("644") && Catch::Contains("chmod 600"));
}

TEST_CASE("client keys: none is plain, one without the other is an error naming the missing one", "[keys]") {
  temp_dir d;
  REQUIRE(keygen({"--out", d.path, "--name", "broker"}) == 0);
  REQUIRE(keygen({"--out", d.path, "--name", "client"}) == 0);
  std::string err;
  CHECK_FALSE(cli::load_client_keys({"", "--server-key"}, {"", "--key"}, err));
  CHECK(err.empty());
  CHECK_FALSE(cli::load_client_keys({d / "broker.pub", "--server-key"}, {"", "--key"}, err));
  CHECK_THAT(err, Catch::StartsWith("--key: not set"));
  CHECK_FALSE(cli::load_client_keys({"", "--server-key"}, {d / "client.key", "--key"}, err));
  CHECK_THAT(err, Catch::StartsWith("--server-key: not set"));
  auto k = cli::load_client_keys({d / "broker.pub", "--server-key"}, {d / "client.key", "--key"}, err);
  REQUIRE(k);
  CHECK(k->server_key == *cli::load_public_key(d / "broker.key", "x", err));
}

TEST_CASE("check_allow_list counts the keys and names the bad line", "[keys]") {
  temp_dir d;
  REQUIRE(keygen({"--out", d.path, "--name", "a"}) == 0);
  std::string err;
  auto a = cli::load_key_pair(d / "a.key", "x", err);
  REQUIRE(a);
  write_file(d / "ok.allow", "# clients\n" + a->public_key + " a\n");
  CHECK(cli::check_allow_list(d / "ok.allow", "[ingress] curve_allow_file", err) == size_t{1});
  write_file(d / "bad.allow", a->public_key + "\noops\n");
  CHECK_FALSE(cli::check_allow_list(d / "bad.allow", "[ingress] curve_allow_file", err));
  CHECK_THAT(err, Catch::Contains("[ingress] curve_allow_file") && Catch::Contains("bad.allow") &&
                      Catch::Contains("line 2"));
}
