#!/usr/bin/env bash
# The benchmark (not a test): pg-migrate against PostgreSQL 18's own
# pg_upgrade on identical fresh copies of PostgreSQL 15 clusters, measured in
# the same run, alternating, several rounds; prints medians and ratios and
# writes docs/benchmarks.md and docs/benchmarks.json. The HA case: a
# three-member Patroni cluster upgraded by pg-migrate patroni and by Spilo's
# pg_upgrade --link + rsync procedure (crates/testkit/examples/ha_bench.rs).
#
#   bash scripts/bench.sh            # the full datasets (takes a while)
#   bash scripts/bench.sh --quick    # small datasets: does everything work?
#   bash scripts/bench.sh --help     # sizes, rounds, -j, datasets
set -euo pipefail
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$root"

prepare_environment 15 18
# The HA case: etcd and Patroni (as for the tests), and rsync for the
# procedure pg-migrate patroni is measured against.
bash "$root/scripts/install-ha.sh"
export PG_MIGRATE_HA_PREFIX=${PG_MIGRATE_HA_PREFIX:-$(resolve_ha_prefix)}
if ! command -v rsync >/dev/null; then
  [ "$(id -u)" = 0 ] || { echo "rsync missing: apt-get install -y rsync" >&2; exit 1; }
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rsync >&2
fi
cargo build --release --locked --quiet
# A separate build: the driver's dev-dependency features never reach the
# release binary built above.
cargo build --release --locked --quiet -p pgm-testkit --example ha_bench

exec python3 scripts/bench.py --prefix "$PG_MIGRATE_PG_PREFIX" --user "$test_user" "$@"
