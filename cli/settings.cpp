// Config loading and the usage text.
#include <iostream>

#include "cli/commands.hpp"
#include "cli/keys.hpp"

extern char** environ;

namespace klynaa::cli {

bool load_config(const parsed_args& args, protocol::config& cfg, std::string& error) {
  std::string text, source;
  if (auto f = args.get("config")) {
    if (!protocol::read_config_file(*f, text, error)) {
      error += " (--config)";
      return false;
    }
    source = *f;
  }
  std::map<std::string, std::string> env;
  for (char** e = environ; e && *e; ++e) {
    std::string kv = *e;
    auto eq = kv.find('=');
    if (eq != std::string::npos) env[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  auto parsed = protocol::parse_config(text, source, env);
  if (auto* err = std::get_if<protocol::config_error>(&parsed)) {
    error = err->message;
    return false;
  }
  cfg = std::get<protocol::config>(std::move(parsed));
  return true;
}

std::string usage() {
  return R"(klynaa - durable jobs for Klynaa's Django events

usage: klynaa COMMAND [flags]

serving:
  run     [--config F] [--data-dir D] [--ingress E]
          single-node mode: the broker and one node with every actor kind
  broker  [--config F] [--data-dir D] [--ingress E] [--cluster E]
          the broker alone; nodes connect to --cluster (default tcp://127.0.0.1:5556)
  node    --broker E [--config F] [--data-dir D] [--actors notifier,escrow,geo,scheduler] [--name N]
          a node hosting the named actor kinds (default all)

clients:
  publish TYPE --data JSON [--id ID] [--ingress E] [--server-key F --key F] [--config F]
          publish one event; exit 0 accepted/duplicate, 1 no answer, 2 rejected
  invoke  FUNCTION --data JSON [--ingress E] [--timeout S] [--server-key F --key F] [--config F]
          run one function and wait; exit 0 ok, 1 failed/timeout/no answer, 2 rejected
          --server-key: the broker's public key file, --key: this client's key pair (CURVE)

operations:
  stats   [--admin A] [--json] [--config F]
          queue depth, in flight, done, retrying, dead per function; nodes
  dlq list [--limit N] | dlq show JOB | dlq replay JOB...|--all | dlq purge JOB...|--all
          [--admin A] [--json] [--config F]
          the dead-letter queue: replay keeps the job's id, data and ordering key
  store migrate --data-dir D --to URL
          copy a stopped broker's SQLite store (D/broker.db) into an empty PostgreSQL
          store (store.url); exit 2 when the target is not empty (docs/deployment.md)

config:
  config  --check [--config F]     validate a config file and the key files it names (exit 2 naming the key)
  config  --example                print a commented config with every key

security:
  keygen  [--out DIR] [--name NAME]
          write a CURVE key pair: NAME.key (secret, mode 0600) and NAME.pub; never
          replaces a file; prints the allow-list line (docs/security.md)

  --version                        print the version and git commit (also in pong, /stats
                                   and the metric klynaa_build_info)

Config is one TOML file; DJANGO_API_URL, DJANGO_API_KEY, NOTIFICATION_SERVICE and
KLYNAA_<SECTION>_<KEY> override it (e.g. KLYNAA_ADMIN_BIND for the admin
endpoint). Docs: docs/ in the source tree, /usr/share/doc/klynaa-jobs when installed
from the package.
)";
}

int cmd_config(int argc, char** argv) {
  parsed_args args;
  std::string err;
  std::vector<flag_spec> specs = {{"config", true, "config file"},
                                  {"check", false, "validate and exit"},
                                  {"example", false, "print the example config"}};
  if (!parse_args(argc, argv, 2, specs, args, err)) {
    std::cerr << "klynaa config: " << err << "\n";
    return 2;
  }
  if (args.has("example")) {
    std::cout << protocol::example_config();
    return 0;
  }
  protocol::config cfg;
  if (!load_config(args, cfg, err) || !check_curve_files(cfg, err)) {
    std::cerr << "klynaa: " << err << "\n";
    return 2;
  }
  std::cout << "config ok\n";
  return 0;
}

}  // namespace klynaa::cli
