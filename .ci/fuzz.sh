#!/usr/bin/env bash
# `make fuzz`: build, install, and run the fuzz harness (test/fuzz/fuzz.py)
# against a throwaway cluster, at low priority.  SEED (default: the time, so
# each run differs; it is printed to repeat one), COUNT (messages, default
# 100000), MAX_RSS_MB (default 512) and FUZZ_ARGS (more options, see
# `test/fuzz/fuzz.py --help`) come from the environment or make's command line.
set -euo pipefail
cd "$(dirname "$0")/.."

bash .ci/deps.sh
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
export PATH="$($PG_CONFIG --bindir):$PATH"

make -s WERROR=1
if [ "$(id -u)" -eq 0 ]; then make -s install; else sudo make -s install; fi

seed=${SEED:-$(date +%s)}
count=${COUNT:-100000}
echo "== fuzz: seed $seed, $count messages (repeat with: make fuzz SEED=$seed COUNT=$count)"
# the memory check reads the server's /proc entries: run as root, or as postgres
# shellcheck disable=SC2086
nice -n 10 pg_virtualenv -t -o shared_preload_libraries=pg_cron,pg_cdp \
  /usr/bin/python3 test/fuzz/fuzz.py --seed "$seed" --count "$count" \
  --max-rss-mb "${MAX_RSS_MB:-512}" ${FUZZ_ARGS:-}
