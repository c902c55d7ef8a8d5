#!/usr/bin/env bash
# Installs the SDKs the HTTP endpoint tests drive (package-lock.json) from
# the npm registry, unless node_modules already matches the lock file.
set -euo pipefail
cd "$(dirname "$0")"
stamp=node_modules/.installed-lock.json
if cmp -s package-lock.json "$stamp" 2>/dev/null; then
  exit 0
fi
npm ci --prefer-offline --ignore-scripts --no-audit --no-fund --loglevel=error
cp package-lock.json "$stamp"
