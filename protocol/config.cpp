// The config's defaults, example and file reading (config.hpp). The key table
// is in config_table.cpp, the parser in config_parse.cpp.
#include "protocol/config.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <sstream>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "protocol/config_table.hpp"
#include "protocol/schema.hpp"

extern char** environ;

namespace klynaa::protocol {

using namespace config_detail;

retry_policy config::retry_for(std::string_view function) const {
  auto it = retry_functions.find(std::string(function));
  return it != retry_functions.end() ? it->second : retry;
}

std::vector<schedule_entry> default_schedules() {
  std::vector<schedule_entry> out(3);
  out[0].name = "daily-report";
  out[0].cron = "0 6 * * *";
  out[0].function = "generateDailyReport";
  out[1].name = "weekly-analytics";
  out[1].cron = "0 7 * * 1";
  out[1].function = "generateWeeklyAnalytics";
  out[2].name = "cleanup";
  out[2].cron = "0 3 * * *";
  out[2].function = "cleanupData";
  return out;
}

std::vector<schedule_entry> config::effective_schedules() const {
  std::vector<schedule_entry> out = schedules;
  for (auto& d : default_schedules()) {
    bool named = std::any_of(schedules.begin(), schedules.end(),
                             [&](const schedule_entry& s) { return s.function == d.function; });
    bool name_taken = std::any_of(schedules.begin(), schedules.end(),
                                  [&](const schedule_entry& s) { return s.name == d.name; });
    if (!named) {
      if (name_taken) d.name = "default-" + d.name;  // names stay unique: they key the firings
      out.push_back(std::move(d));
    }
  }
  return out;
}

std::vector<config_key> config_keys() {
  config defaults;
  std::vector<config_key> out;
  for (const auto& k : keys()) {
    field f = k.ref(defaults);
    out.push_back({std::string(k.section), std::string(k.key), std::string(kind_name(kind_of(f))),
                   to_toml(read(f)), std::string(k.help), env_name(k)});
  }
  return out;
}

std::string example_config() {
  std::ostringstream out;
  out << "# Klynaa Jobs configuration. Every key is shown with its default; an empty\n"
         "# file is a valid config. Any key can also be set in the environment as\n"
         "# KLYNAA_<SECTION>_<KEY>, e.g. KLYNAA_INGRESS_BIND.\n";
  auto keys_now = config_keys();
  for (const auto& s : sections()) {
    out << "\n# " << s.help << "\n[" << s.name << "]\n";
    for (const auto& k : keys_now) {
      if (k.section != s.name) continue;
      out << "# " << k.help << " (" << k.type << ")\n" << k.key << " = " << k.default_value << "\n";
    }
    if (s.name == "notifications") {
      out << "# Title and body per notification type (" << join(notification_types()) << "):\n"
          << "# [notifications.templates.pickup_accepted]\n"
          << "# title = \"Pickup accepted\"\n"
          << "# body = \"A worker accepted your pickup.\"\n";
    }
    if (s.name == "retry") {
      out << "# Per function (" << join(function_names()) << "):\n"
          << "# [retry.processEscrowRelease]\n"
          << "# max_attempts = 20\n";
    }
  }
  out << "\n# Schedules: name (unique), cron (5 fields), function, data, timezone (IANA).\n"
         "# Without an entry for it, a function keeps its default schedule:\n";
  for (const auto& d : default_schedules()) {
    out << "#\n# [[schedule]]\n# name = \"" << d.name << "\"\n# cron = \"" << d.cron << "\"\n# function = \""
        << d.function << "\"\n# data = {}\n# timezone = \"" << d.timezone << "\"\n";
  }
  return out.str();
}

bool read_config_file(const std::string& path, std::string& text, std::string& error) {
  // POSIX rather than std::ifstream: an ifstream opens a directory without
  // complaint and then reads nothing, which looked like an empty config (the
  // defaults). Every failure names the path and says why.
  auto fail = [&](const std::string& why) {
    error = "cannot read config file " + path + ": " + why;
    return false;
  };
  auto reason = [](int e) -> std::string {
    if (e == ENOENT) return "no such file";
    if (e == EACCES) return "permission denied";
    return std::strerror(e);
  };
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fail(reason(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int e = errno;
    ::close(fd);
    return fail(reason(e));
  }
  if (S_ISDIR(st.st_mode)) {
    ::close(fd);
    return fail("it is a directory, not a file");
  }
  std::string out;
  char buf[65536];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n > 0) {
      out.append(buf, static_cast<size_t>(n));
    } else if (n == 0) {
      break;
    } else if (errno != EINTR) {
      const int e = errno;
      ::close(fd);
      return fail(reason(e));
    }
  }
  ::close(fd);
  text = std::move(out);
  return true;
}

std::map<std::string, std::string> process_environment() {
  std::map<std::string, std::string> env;
  for (char** p = environ; p && *p; ++p) {
    std::string_view entry(*p);
    auto eq = entry.find('=');
    if (eq == std::string_view::npos) continue;
    env.emplace(std::string(entry.substr(0, eq)), std::string(entry.substr(eq + 1)));
  }
  return env;
}

}  // namespace klynaa::protocol
