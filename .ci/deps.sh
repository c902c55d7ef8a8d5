#!/usr/bin/env bash
# Install the Debian packages pg_cdp needs to build, run and test, if missing.
set -euo pipefail

packages=(
  build-essential
  postgresql-15
  postgresql-common
  postgresql-server-dev-15
  postgresql-15-cron
  postgresql-15-pgtap
  libtap-parser-sourcehandler-pgtap-perl
  libipc-run-perl
  libmicrohttpd-dev
  zlib1g-dev
  clang
  libclang-rt-dev
  python3-psycopg2
  python3-sqlalchemy
  default-jdk-headless
  libpostgresql-jdbc-java
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
# Node.js and npm run the SDK tests; a machine may have them from elsewhere
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
[ ${#missing[@]} -eq 0 ] && exit 0

echo "installing: ${missing[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
