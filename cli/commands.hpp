// The `klynaa` commands (docs/operations.md, "Roles"). Each returns the process
// exit code: 0 success, 1 runtime failure, 2 bad usage or bad config (the message
// names the flag, key or file).
#pragma once

#include <string>

#include "cli/args.hpp"
#include "protocol/config.hpp"

namespace klynaa::cli {

int cmd_run(int argc, char** argv);      ///< broker + one node in one process
int cmd_broker(int argc, char** argv);   ///< the broker alone
int cmd_node(int argc, char** argv);     ///< a node connecting to --broker
int cmd_publish(int argc, char** argv);  ///< publish one event
int cmd_invoke(int argc, char** argv);   ///< invoke one function and wait
int cmd_config(int argc, char** argv);   ///< check a config or print the example
int cmd_stats(int argc, char** argv);    ///< queues and nodes via the admin endpoint
int cmd_dlq(int argc, char** argv);      ///< the dead-letter queue via the admin endpoint
int cmd_keygen(int argc, char** argv);   ///< write a CURVE key pair (cli/keys.cpp)
int cmd_store(int argc, char** argv);    ///< `store migrate`: SQLite -> PostgreSQL (cli/store_migrate.cpp)

/// Reads --config (or no file: embedded defaults) and the environment. False
/// with `error` naming the file, key or variable.
bool load_config(const parsed_args& args, protocol::config& cfg, std::string& error);

/// The shared usage text.
std::string usage();

}  // namespace klynaa::cli
