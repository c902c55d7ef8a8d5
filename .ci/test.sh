#!/usr/bin/env bash
# `make test`: build with -Werror, install, and run every suite against
# throwaway clusters.  Exits non-zero on the first failing suite.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

bash .ci/deps.sh
# the real Segment and RudderStack SDKs the HTTP endpoint tests drive
bash test/sdk/install.sh
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
PG_BIN=$($PG_CONFIG --bindir)
export PATH="$PG_BIN:$PATH"

make -s clean
make -s WERROR=1
if [ "$(id -u)" -eq 0 ]; then make -s install; else sudo make -s install; fi

# pg_virtualenv makes a cluster owned by the postgres user for one command.
preload=(-o shared_preload_libraries=pg_cron,pg_cdp)

echo "== pg_regress and isolation suites"
rm -rf results output_iso regression.diffs
status=0
pg_virtualenv -t "${preload[@]}" -o cron.database_name=contrib_regression \
  make -s installcheck || status=$?
if [ $status -ne 0 ]; then
  cat regression.diffs output_iso/regression.diffs 2>/dev/null | head -200 || true
  exit $status
fi

echo "== pgTAP suites (pg_prove)"
pg_virtualenv -t "${preload[@]}" -o cron.database_name=cdp_tap bash -c '
  set -e
  createdb cdp_tap
  pg_prove --ext .sql -d cdp_tap test/pgtap/
'

echo "== BI tools browsing the generated views (SQLAlchemy, pgjdbc)"
pg_virtualenv -t "${preload[@]}" bash test/bi/run.sh

echo "== HTTP endpoint with real SDKs"
# a free port for cdp.http_port (a postmaster setting: fixed at start)
free_port() {
  node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); })'
}
http_port=$(free_port)
CDP_HTTP_PORT=$http_port CDP_DB=cdp_sdk pg_virtualenv -t "${preload[@]}" \
  -o cdp.http_port="$http_port" -o cdp.database_name=cdp_sdk bash test/sdk/run.sh

echo "== Perl TAP suites (crash and restart)"
# PostgreSQL::Test::Cluster runs initdb, which refuses root: run as postgres
# in a directory that user owns.
work=$(mktemp -d)
cp -r test/t "$work/t"
cp -r test/sdk "$work/sdk"   # the HTTP restart test drives the SDKs from there
perl_env=(env PATH="$PATH" TESTDIR="$work" PG_REGRESS="$($PG_CONFIG --pkglibdir)/pgxs/src/test/regress/pg_regress"
          PERL5LIB="$($PG_CONFIG --pkglibdir)/pgxs/src/test/perl")
if [ "$(id -u)" -eq 0 ]; then
  chown -R postgres "$work"
  (cd "$work" && runuser -u postgres -- "${perl_env[@]}" prove t/*.pl)
else
  (cd "$work" && "${perl_env[@]}" prove t/*.pl)
fi
rm -rf "$work"

# A coordinator and two workers with Citus (test/citus): only where Citus is
# installed; `.ci/run` installs it on CI machines.
citus_so="$($PG_CONFIG --pkglibdir)/citus.so"
if [ -f "$citus_so" ]; then
  echo "== Citus suite"
  work=$(mktemp -d)
  cp -r test/citus/. "$work/"
  if [ "$(id -u)" -eq 0 ]; then
    chown -R postgres "$work"
    (cd "$work" && runuser -u postgres -- "${perl_env[@]}" TESTDIR="$work" prove t/*.pl)
  else
    (cd "$work" && "${perl_env[@]}" TESTDIR="$work" prove t/*.pl)
  fi
  rm -rf "$work"
else
  echo "== Citus suite skipped: Citus is not installed ($citus_so not found)"
fi

echo "== fuzz HTTP request parsing (libFuzzer)"
make -s fuzz-http FUZZ_SECONDS=25 FUZZ_SEED=1 WERROR=1

echo "== fuzz (short run, fixed seed)"
pg_virtualenv -t "${preload[@]}" bash -c '
  set -e
  # the harness shows that its checks notice damaged outputs and a crash
  for damage in outputs crash; do
    /usr/bin/python3 test/fuzz/fuzz.py --sabotage $damage --seed 2 --count 1000 \
      --huge-envelopes 0 --identifiers 0 --skip-family sizes,sources,writekey,nesting
  done
  /usr/bin/python3 test/fuzz/fuzz.py --seed 1 --count 3000 --copy-share 0.6
'
echo "== all suites passed"
