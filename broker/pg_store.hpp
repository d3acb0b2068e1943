// The PostgreSQL store (issue 10, step 1): the same narrow `store` interface and
// the same guarantees as the SQLite store (store.hpp), for brokers that share
// one database — and, with the lease below, standby brokers that take over.
//
// Guarantees, as with SQLite: commit() applies the whole batch in one
// transaction and returns only once PostgreSQL has committed it (accepted means
// committed); a failed commit applies nothing. Each commit is one network round
// trip (libpq pipeline mode, see pg_store.cpp). A lost connection fails the
// commit that noticed it; the next call reconnects.
//
// Errors name `store.url` with its password masked, followed by PostgreSQL's (or
// libpq's) own message. No message ever contains the password.
//
// Thread-safety: as every store, one object is used by one thread at a time (it
// owns one connection). Other threads open their own (read_only for readers).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "broker/store.hpp"

namespace klynaa::broker {

struct pg_options {
  /// A libpq connection string: postgres://user:password@host:port/dbname?... or
  /// "host=... dbname=..." (docs/configuration.md, store.url).
  std::string url;
  /// A reader (the admin's dead-letter view): never creates or upgrades the
  /// schema, and every transaction is read-only, so commit() fails.
  bool read_only = false;
  /// Shown in pg_stat_activity; empty = libpq's default (or the URL's).
  std::string application_name;
  /// false only for the lease renewer (broker/lease_keeper.hpp): its renewals
  /// need not wait for PostgreSQL's WAL flush — a renewal lost in a database
  /// crash only makes the lease expire sooner, and the fence still holds — so a
  /// slow disk cannot make the active broker miss its lease and stop.
  bool durable_commits = true;
};

/// Where the commits' time went, summed since the store was opened
/// (pg_store::commit_stats; docs/performance.md, "The PostgreSQL store").
struct pg_commit_stats {
  int64_t commits = 0;     ///< commits that succeeded
  int64_t statements = 0;  ///< statements they sent, BEGIN and COMMIT included
  int64_t encode_ns = 0;   ///< building the parameters and handing the statements to libpq
  int64_t execute_ns = 0;  ///< from the sync to the results of the statements before COMMIT:
                           ///< the network and the server's work on them
  int64_t commit_ns = 0;   ///< from those results to COMMIT's: the WAL flush, mostly
  int64_t total_ns = 0;    ///< the whole commit() call
};

/// `url` with any password replaced by "****" (URI user info, `password=` in a
/// query or a key/value string). For messages and logs.
std::string mask_pg_url(const std::string& url);

class pg_store final : public store {
 public:
  /// Connects, creates the schema `klynaa` when it is missing (the role needs
  /// CREATE on the database that first time) and checks its version. nullptr and
  /// `err` (naming store.url) on failure, e.g. a schema newer than this code.
  static std::unique_ptr<pg_store> open(const pg_options& opts, store_error& err);

  ~pg_store() override;

  std::optional<commit_outcome> commit(const batch& b, store_error& err) override;
  bool load_unfinished(const std::function<void(job_record&&)>& sink, store_error& err) override;
  /// The reads below throw std::runtime_error (naming store.url) when the
  /// database cannot be reached or refuses, as the SQLite store's do; the next
  /// call reconnects.
  int64_t max_seq() override;
  std::optional<job_record> find_job(const std::string& id) override;
  std::vector<job_record> list_jobs(job_state state, size_t limit) override;
  std::string history_json(const std::string& id) override;
  std::vector<std::tuple<std::string, job_state, int64_t>> count_by_function() override;

  /// Where the successful commits' time went since open (not thread-safe: ask
  /// from the thread that commits).
  pg_commit_stats commit_stats() const;

  // --- Fencing (for standby brokers) ---------------------------------------
  // One row of klynaa.lease, name 'broker', says which broker may write and
  // carries a token that grows with every change of holder.

  /// Takes the lease for `holder` when it is free or expired (the token grows
  /// by one), or renews it when `holder` holds it (same token); either way it
  /// then expires `ttl_ms` from now by the database's clock. Returns the token,
  /// or nullopt when another holder's lease is still valid (err->message empty)
  /// or on failure (err->message says why, when `err` is given).
  std::optional<int64_t> acquire_or_renew_lease(const std::string& holder, int64_t ttl_ms,
                                                store_error* err = nullptr);

  /// From now on, every commit() first checks, inside its transaction, that
  /// the lease row still has `token` and the holder of this object's last
  /// successful acquire_or_renew_lease(), and locks that row until it commits;
  /// otherwise nothing of the batch is applied and the commit fails with
  /// "fenced: the lease is held by another broker". A lease that expired but
  /// that nobody took over does not fence (its token is unchanged).
  void set_fence(int64_t token);

  /// Who holds (or last held) the lease, for logs; "" when nobody ever did or
  /// on failure (err->message says why, when `err` is given).
  std::string lease_holder(store_error* err = nullptr);

  /// Ends the lease now if `holder` still holds it with `token` (a clean stop:
  /// a standby takes over at its next try instead of after lease_ms). The
  /// caller must not commit afterwards. False and err->message on failure.
  bool release_lease(const std::string& holder, int64_t token, store_error* err = nullptr);

 private:
  struct impl;
  explicit pg_store(std::unique_ptr<impl> p);
  std::unique_ptr<impl> impl_;
};

/// Opens the PostgreSQL store (pg_store::open as a plain store).
std::unique_ptr<store> open_pg_store(const pg_options& opts, store_error& err);

}  // namespace klynaa::broker
