#!/usr/bin/env bash
# BI tools browse the generated views: SQLAlchemy (what Superset uses) and
# pgjdbc (what Metabase uses), as an analyst role over TCP.  Run inside a
# cluster (pg_virtualenv) as a superuser; .ci/test.sh does.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
db=cdp_bi
psql -X -q -v ON_ERROR_STOP=1 -d postgres -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
psql -X -q -v ON_ERROR_STOP=1 -d $db -f "$here/setup.sql" >/dev/null

echo "-- SQLAlchemy"
/usr/bin/python3 "$here/sqlalchemy_browse.py" $db

echo "-- pgjdbc"
jar=/usr/share/java/postgresql.jar
classes=$(mktemp -d)
trap 'rm -rf "$classes"' EXIT
javac -d "$classes" "$here/JdbcBrowse.java"
java -cp "$jar:$classes" JdbcBrowse "jdbc:postgresql://127.0.0.1:${PGPORT:-5432}/$db"

psql -X -q -d postgres -c "DROP DATABASE $db" -c "DROP ROLE bi_reader"
