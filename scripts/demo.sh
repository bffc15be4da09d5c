#!/usr/bin/env bash
# The demo: installs PostgreSQL 15 and 18, builds pg-migrate, creates a
# PostgreSQL 15 cluster with some data and a new 18 cluster the way most
# people first do (plain initdb), and lets pg-migrate check the pair: it
# finds the mismatch that breaks most first attempts, says exactly how to
# fix it, and passes once the fix is applied. Then it upgrades the cluster
# (--link) and shows the new 18 cluster answering queries.
# Demo clusters live in $PG_MIGRATE_DEMO_DIR (default /tmp/pg-migrate-demo).
set -euo pipefail
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$root"

prepare_environment 15 18
cargo build --locked --quiet

demo=${PG_MIGRATE_DEMO_DIR:-/tmp/pg-migrate-demo}
old_bin=$PG_MIGRATE_PG_PREFIX/15/bin
new_bin=$PG_MIGRATE_PG_PREFIX/18/bin
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# Stop whatever an earlier demo left running, then start afresh.
for d in "$demo/old" "$demo/new"; do
  [ -f "$d/postmaster.pid" ] && as_user "$PG_MIGRATE_PG_PREFIX"/*/bin/pg_ctl -D "$d" -m fast stop >/dev/null 2>&1 || true
done
rm -rf "$demo"
mkdir -p "$demo"
chmod 0755 "$demo"
[ "$(id -u)" = 0 ] && chown "$test_user" "$demo"
cp target/debug/pg-migrate "$demo/pg-migrate"
chmod 0755 "$demo/pg-migrate"

say "A PostgreSQL 15 cluster with some data"
as_user "$old_bin/initdb" -D "$demo/old" -E UTF8 --locale=C.UTF-8 -A trust >/dev/null
as_user "$old_bin/pg_ctl" -D "$demo/old" -l "$demo/old.log" -w \
  -o "-c listen_addresses='' -c unix_socket_directories='$demo' -p 5499" start >/dev/null
psql() { as_user "$new_bin/psql" -X -q -h "$demo" -p 5499 -v ON_ERROR_STOP=1 "$@"; }
psql -d postgres -c "CREATE DATABASE shop" -c "CREATE DATABASE \"Ünïcode db\""
psql -d shop <<'SQL'
CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL);
CREATE TABLE orders (id bigserial PRIMARY KEY, customer int REFERENCES customers, total numeric(10,2), placed timestamptz DEFAULT now());
INSERT INTO customers (name) SELECT 'customer ' || g FROM generate_series(1, 1000) g;
INSERT INTO orders (customer, total) SELECT 1 + g % 1000, (g % 500) / 3.0 FROM generate_series(1, 20000) g;
CREATE INDEX ON orders (customer);
CREATE VIEW big_spenders AS SELECT customer, sum(total) FROM orders GROUP BY customer HAVING sum(total) > 2000;
SQL
psql -d shop -Atc "SELECT 'shop: ' || (SELECT count(*) FROM customers) || ' customers, ' || (SELECT count(*) FROM orders) || ' orders'"
as_user "$old_bin/pg_ctl" -D "$demo/old" -w stop >/dev/null

say "A new PostgreSQL 18 cluster, made with a plain initdb"
as_user "$new_bin/initdb" -D "$demo/new" -E UTF8 --locale=C.UTF-8 -A trust >/dev/null

check() {
  (cd "$demo" && as_user ./pg-migrate check -b "$old_bin" -B "$new_bin" -d "$demo/old" -D "$demo/new" -j 2 "$@")
}

say "pg-migrate check"
check || true

say "Fixing what the check named: re-create the new cluster as its remedy says"
echo "(the remedy of the failed check, taken from its JSON event:)"
check --json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    event = json.loads(line)
    if event["event"] == "check" and event["status"] == "fail":
        print("  " + event["id"] + ": " + event["remedy"])
' || true
rm -rf "$demo/new"
as_user "$new_bin/initdb" -D "$demo/new" -E UTF8 --locale=C.UTF-8 -A trust --no-data-checksums >/dev/null

say "pg-migrate check, again"
check

say "The same check, as JSON for wrapper tools (summary line)"
check --json 2>/dev/null | tail -n1

say "pg-migrate --link: the upgrade"
(cd "$demo" && as_user ./pg-migrate --link -j 2 -b "$old_bin" -B "$new_bin" -d "$demo/old" -D "$demo/new")

say "The new PostgreSQL 18 cluster answers"
as_user "$new_bin/pg_ctl" -D "$demo/new" -l "$demo/new.log" -w \
  -o "-c listen_addresses='' -c unix_socket_directories='$demo' -p 5499" start >/dev/null
psql -d shop -c "SELECT version()" \
  -c "SELECT count(*) AS customers, (SELECT count(*) FROM orders) AS orders, (SELECT sum(total) FROM orders) AS revenue FROM customers" \
  -c "SELECT * FROM big_spenders ORDER BY sum DESC LIMIT 3"
psql -d shop -c "INSERT INTO customers (name) VALUES ('first customer on 18') RETURNING id, name"
as_user "$new_bin/pg_ctl" -D "$demo/new" -w stop >/dev/null

say "Done: the upgraded cluster is $demo/new (PostgreSQL 18); the old one's files are still in $demo/old"
