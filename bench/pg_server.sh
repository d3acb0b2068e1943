#!/usr/bin/env bash
# A throwaway PostgreSQL 15 server for benchmarks (docs/performance.md, "The
# PostgreSQL store"), as tests/broker/pg_server.hpp starts one for the tests but
# with PostgreSQL's durable defaults (fsync on, synchronous_commit on,
# full_page_writes on): a temp dir, 127.0.0.1 only, a free port, a database
# `klynaa` owned by role `klynaa`. As root, postgres runs as `nobody`.
#
#   bench/pg_server.sh start      prints DIR and the store URL (export it as KLYNAA_STORE_URL)
#   bench/pg_server.sh stop DIR   stops it (immediate) and removes DIR
#   bench/pg_server.sh sizes DIR  one CSV line: time and pg_total_relation_size
#                                 of each klynaa table, dead tuples, autovacuum count
#
# Extra settings for the server: PG_OPTS="-c track_wal_io_timing=on ...".
set -euo pipefail
BIN=${KLYNAA_PG_BIN:-/usr/lib/postgresql/15/bin}
as_pg() { if [ "$(id -u)" = 0 ]; then setpriv --reuid=nobody --regid=nogroup --clear-groups -- "$@"; else "$@"; fi; }
admin() { "$BIN/psql" -X -q -At -h "$1" -p "$(cat "$1/port")" -U klynaa_admin -d "${3:-postgres}" -c "$2"; }

case "${1:-}" in
start)
  dir=$(mktemp -d /tmp/klynaa-bench-pg-XXXXXX)
  chmod 777 "$dir"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  echo "$port" > "$dir/port"
  as_pg "$BIN/initdb" -D "$dir/data" -U klynaa_admin --auth-local=trust --auth-host=trust -E UTF8 \
    --locale=C --no-instructions > "$dir/initdb.log" 2>&1
  # shellcheck disable=SC2086
  as_pg "$BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-k $dir -h 127.0.0.1 -p $port -c max_connections=40 ${PG_OPTS:-}" start > /dev/null
  admin "$dir" "CREATE ROLE klynaa LOGIN"
  admin "$dir" "CREATE DATABASE klynaa OWNER klynaa"
  echo "$dir"
  echo "postgresql://klynaa@127.0.0.1:$port/klynaa"
  ;;
stop)
  dir=${2:?dir}
  as_pg "$BIN/pg_ctl" -D "$dir/data" -m immediate stop > /dev/null 2>&1 || true
  rm -rf "$dir"
  ;;
sizes)
  dir=${2:?dir}
  admin "$dir" "SELECT to_char(clock_timestamp(), 'HH24:MI:SS') || ',' || string_agg(
      relname || '=' || pg_total_relation_size(relid) || '/' || n_live_tup || '/' || n_dead_tup || '/' || autovacuum_count,
      ',' ORDER BY relname) FROM pg_stat_user_tables WHERE schemaname = 'klynaa'" klynaa
  ;;
*)
  echo "usage: $0 start | stop DIR | sizes DIR" >&2
  exit 2
  ;;
esac
