#!/usr/bin/env bash
# PostgreSQL for the cluster-storage concurrency test (tests/integration/test_faults.py).
#   .ci/postgres.sh install          apt-get install postgresql, if missing (idempotent)
#   .ci/postgres.sh start DIR PORT   a throw-away cluster in DIR on 127.0.0.1:PORT (trust auth,
#                                    database "robustsweep"); prints its URL; idempotent
#   .ci/postgres.sh stop DIR         stop that cluster
# Skip-safe: without apt or root, `install` only warns; the test then skips with the reason.
set -euo pipefail

bindir() {
  local initdb
  initdb=$(ls -1d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1 || true)
  [ -n "$initdb" ] || initdb=$(command -v initdb || true)
  [ -n "$initdb" ] && dirname "$initdb"
}

# PostgreSQL refuses to run as root: run its tools as the postgres user then.
as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

install() {
  if bindir >/dev/null; then echo "postgresql: installed"; return 0; fi
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "warning: postgresql missing and apt-get unavailable (not root?): its test will skip" >&2
    return 0
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q postgresql >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get install -y -q postgresql >/dev/null; } \
    || echo "warning: apt-get install postgresql failed: its test will skip" >&2
}

start() {
  local dir=$1 port=$2 bin
  bin=$(bindir) || { echo "error: postgresql is not installed (.ci/postgres.sh install)" >&2; exit 1; }
  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown postgres: "$dir"
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    as_owner "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 >/dev/null
  fi
  if ! as_owner "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=200" start >/dev/null
  fi
  as_owner "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname='robustsweep'" | grep -q 1 \
    || as_owner "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres robustsweep
  echo "postgresql://postgres@127.0.0.1:$port/robustsweep"
}

stop() {
  local dir=$1 bin
  bin=$(bindir) || exit 0
  [ -f "$dir/data/PG_VERSION" ] || exit 0
  as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
}

cmd=${1:-}
shift || true
case "$cmd" in
  install) install ;;
  start) start "$@" ;;
  stop) stop "$@" ;;
  *) echo "usage: $0 install | start DIR PORT | stop DIR" >&2; exit 2 ;;
esac
