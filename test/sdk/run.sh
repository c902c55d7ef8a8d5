#!/usr/bin/env bash
# The SDK end-to-end tests, run inside a cluster whose server has pg_cdp
# preloaded with cdp.http_port=$CDP_HTTP_PORT and cdp.database_name=$CDP_DB
# (.ci/test.sh starts it with pg_virtualenv).  Run install.sh first.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
: "${CDP_HTTP_PORT:?set CDP_HTTP_PORT}"
export CDP_DB=${CDP_DB:-cdp_sdk}
createdb "$CDP_DB"
psql -X -q -v ON_ERROR_STOP=1 -d "$CDP_DB" -c "CREATE EXTENSION pg_cdp CASCADE"
cd "$here"
node --test --test-reporter=spec sdk.test.js
