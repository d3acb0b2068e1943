// klynaa: one executable for every role (docs/operations.md, "Roles").
#include <cstring>
#include <iostream>
#include <map>
#include <string>

#include "cli/commands.hpp"
#include "protocol/version.hpp"

int main(int argc, char** argv) {
  using namespace klynaa::cli;
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") ||
      !std::strcmp(argv[1], "help")) {
    std::cout << usage();
    return argc < 2 ? 2 : 0;
  }
  if (!std::strcmp(argv[1], "--version") || !std::strcmp(argv[1], "version")) {
    std::cout << "klynaa " << klynaa::protocol::version_text() << "\n";
    return 0;
  }
  const std::map<std::string, int (*)(int, char**)> commands = {
      {"run", cmd_run},         {"broker", cmd_broker}, {"node", cmd_node},
      {"publish", cmd_publish}, {"invoke", cmd_invoke}, {"config", cmd_config},
      {"stats", cmd_stats},     {"dlq", cmd_dlq},       {"keygen", cmd_keygen},
      {"store", cmd_store},
  };
  auto it = commands.find(argv[1]);
  if (it == commands.end()) {
    std::cerr << "klynaa: unknown command '" << argv[1] << "'\n\n" << usage();
    return 2;
  }
  try {
    return it->second(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "klynaa: " << e.what() << "\n";
    return 1;
  }
}
