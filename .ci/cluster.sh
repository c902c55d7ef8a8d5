#!/usr/bin/env bash
# `make run` / `make stop`: a local PostgreSQL 15 cluster kept in .cluster/
# beside the checkout, with pg_cron and pg_cdp preloaded.  Safe to run again:
# it reuses the cluster, starts it if stopped, and creates only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
dir="$repo/.cluster"
data="$dir/data"
port="${CDP_PORT:-5488}"
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config

as_owner() {
  # the server refuses to run as root: root runs it as the postgres user
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_bin() { echo "$($PG_CONFIG --bindir)/$1"; }

running() { [ -f "$data/postmaster.pid" ] && as_owner "$(pg_bin pg_ctl)" -D "$data" status >/dev/null 2>&1; }

stop() {
  if [ -d "$data" ] && running; then
    as_owner "$(pg_bin pg_ctl)" -D "$data" -m fast stop
  else
    echo "no pg_cdp cluster is running in $dir"
  fi
}

start() {
  bash .ci/deps.sh
  make -s
  if [ "$(id -u)" -eq 0 ]; then make -s install; else sudo make -s install; fi

  if [ ! -f "$data/PG_VERSION" ]; then
    mkdir -p "$dir"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$dir"
    chmod 700 "$dir"
    # local connections only, through a socket in .cluster/ that only the
    # cluster's owner (and root) can reach
    as_owner "$(pg_bin initdb)" -D "$data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >/dev/null
    as_owner tee -a "$data/postgresql.conf" >/dev/null <<CONF
# pg_cdp quick start
listen_addresses = ''
port = $port
unix_socket_directories = '$dir'
shared_preload_libraries = 'pg_cron,pg_cdp'
cron.database_name = 'postgres'
CONF
  fi
  if ! running; then
    as_owner "$(pg_bin pg_ctl)" -D "$data" -l "$dir/server.log" -w start >/dev/null
  fi

  psql_cmd=(psql -X -q -h "$dir" -p "$port" -U postgres -d postgres)
  "${psql_cmd[@]}" -v ON_ERROR_STOP=1 <<'SQL'
CREATE EXTENSION IF NOT EXISTS pg_cron;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT cdp.schedule_jobs() \g /dev/null
SELECT cdp.run_maintenance() \g /dev/null
SQL
  key=$("${psql_cmd[@]}" -At -c "SELECT cdp.create_source('quickstart') WHERE NOT EXISTS (SELECT 1 FROM cdp.sources WHERE name = 'quickstart')")

  cat <<EOF2

pg_cdp is running (PostgreSQL 15, data in $data).

Connect:
  psql -h $dir -p $port -U postgres postgres

EOF2
  if [ -n "$key" ]; then
    echo "Write key of source 'quickstart' (shown once, only its hash is stored):"
    echo "  $key"
  else
    echo "Source 'quickstart' exists; its key was shown when it was made. A new one:"
    echo "  SELECT cdp.rotate_write_key('quickstart');"
  fi
  cat <<EOF2

Send an event and see it stored:
  psql -h $dir -p $port -U postgres postgres <<'SQL'
  SELECT cdp.track('user-42', 'Signed Up', '{"plan": "pro"}');
  SELECT pg_sleep(0.1);   -- the background workers store it within milliseconds
  SELECT ts, type, event, user_id, properties FROM cdp.events ORDER BY ts DESC LIMIT 5;
SQL

Stop it with: make stop
EOF2
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
