#!/usr/bin/env bash
# A throwaway PostgreSQL server on loopback for the multi-worker search test.
#
#   source scripts/ci_postgres.sh   # exports LORABENCH_TEST_POSTGRES_URL, stops the server on exit
#   bash scripts/ci_postgres.sh     # prints the URL and leaves the server running
#
# Installs Debian's postgresql package when its binaries are missing, then starts a fresh cluster
# in a temporary folder, listening on 127.0.0.1 only at a free port, trust auth on loopback
# (nothing outside the machine can reach it), and creates the database `lorabench_test`.
# Run as root it drops to the `postgres` user for initdb/pg_ctl (they refuse to run as root).

_lb_pg_main() {
  local bindir
  bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
    echo "installing postgresql (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq postgresql >/dev/null
    bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  fi
  if ! python -c "import psycopg2" 2>/dev/null && ! python -c "import psycopg" 2>/dev/null; then
    python -m pip install -q "psycopg2-binary>=2.9"
  fi

  local as_owner=()
  if [ "$(id -u)" = "0" ]; then
    as_owner=(runuser -u postgres --)
  fi
  local datadir port
  datadir=$(mktemp -d /tmp/lorabench-pg.XXXXXX)
  chmod 700 "$datadir"
  [ "$(id -u)" = "0" ] && chown postgres:postgres "$datadir"
  port=$(python -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1]); s.close()")

  "${as_owner[@]}" "$bindir/initdb" -D "$datadir/data" -U postgres --auth=trust -E UTF8 >"$datadir/initdb.log" 2>&1 \
    || { cat "$datadir/initdb.log"; return 1; }
  # Sockets in the data folder (not /var/run/postgresql, which may not exist or be writable).
  "${as_owner[@]}" "$bindir/pg_ctl" -D "$datadir/data" -l "$datadir/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $datadir/data -c max_connections=100 -c fsync=off" start >/dev/null \
    || { cat "$datadir/server.log"; return 1; }
  "$bindir/createdb" -h 127.0.0.1 -p "$port" -U postgres lorabench_test

  export LORABENCH_TEST_POSTGRES_URL="postgresql://postgres@127.0.0.1:$port/lorabench_test"
  export LORABENCH_TEST_POSTGRES_DATADIR="$datadir"
  export LORABENCH_TEST_POSTGRES_STOP="${as_owner[*]} $bindir/pg_ctl -D $datadir/data -m fast stop"
  echo "PostgreSQL on loopback: LORABENCH_TEST_POSTGRES_URL=$LORABENCH_TEST_POSTGRES_URL"
}

_lb_pg_main || { echo "PostgreSQL could not be started: the postgres tests will be skipped"; unset -f _lb_pg_main; return 0 2>/dev/null || exit 0; }
unset -f _lb_pg_main

if [ "${BASH_SOURCE[0]}" != "$0" ]; then
  # Sourced (CI): stop the server and remove its folder when the calling shell exits.
  trap 'eval "$LORABENCH_TEST_POSTGRES_STOP" >/dev/null 2>&1; rm -rf "$LORABENCH_TEST_POSTGRES_DATADIR"' EXIT
else
  echo "stop it with: $LORABENCH_TEST_POSTGRES_STOP && rm -rf $LORABENCH_TEST_POSTGRES_DATADIR"
fi
