#!/usr/bin/env bash
# Sets up everything the tests need on a Debian machine and runs every test:
# PostgreSQL 10-18 (scripts/install-postgres.sh), etcd and Patroni
# (scripts/install-ha.sh), the build, then cargo test
# for the whole workspace (unit, golden-file and end-to-end tests against
# real servers), then the Debian package (scripts/package.sh). Run as root
# (CI) or as a user who can run PostgreSQL.
set -euo pipefail
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$root"

prepare_environment
# etcd and Patroni for the HA tests.
bash "$root/scripts/install-ha.sh"
export PG_MIGRATE_HA_PREFIX=${PG_MIGRATE_HA_PREFIX:-$(resolve_ha_prefix)}
ensure_test_locale

cargo build --workspace --all-targets --locked
log=$(mktemp)
# A test whose PostgreSQL major is missing fails; with
# PG_MIGRATE_SKIP_MISSING=1 it is skipped instead, and counted here.
skipped=$(mktemp)
chmod 666 "$skipped"
export PG_MIGRATE_SKIP_LOG="$skipped"
trap 'rm -f "$log" "$skipped"' EXIT
status=0
cargo test --workspace --locked -- "$@" 2>&1 | tee "$log" || status=$?
# One closing line for the whole run (cargo ends with its last, often empty, doc-test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "%d passed, %d failed", p, f }' "$log"
# The test hooks (fault points, PG_MIGRATE_TEST_*) come with the tests'
# dev-dependency only: the tests' build has them, a release build none.
cargo build --release --locked --quiet
if ! grep -q PG_MIGRATE_TEST_ target/debug/pg-migrate; then
  echo "the tests' build of pg-migrate lacks its test hooks" >&2
  status=1
fi
if grep -q PG_MIGRATE_TEST_ target/release/pg-migrate; then
  echo "the release build of pg-migrate carries test hooks" >&2
  status=1
fi
skips=$(sort -u "$skipped" | grep -c . || true)
echo ", $skips skipped for a missing PostgreSQL (counted as passed above)"
if [ "$skips" -gt 0 ]; then
  sort -u "$skipped" | sed 's/^/  skipped: /'
fi
# The Debian package: built, and as root installed with dpkg -i and proven
# with one real upgrade by the installed /usr/bin/pg-migrate.
if [ "$(id -u)" = 0 ]; then
  bash "$root/scripts/package.sh" --install || status=1
else
  bash "$root/scripts/package.sh" || status=1
  echo "the package was built, not installed (dpkg -i needs root)"
fi
exit "$status"
