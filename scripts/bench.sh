#!/usr/bin/env bash
# The benchmark (not a test): pg-migrate against PostgreSQL 18's own
# pg_upgrade on identical fresh copies of PostgreSQL 15 clusters, measured in
# the same run, alternating, several rounds; prints medians and ratios and
# writes docs/benchmarks.md and docs/benchmarks.json.
#
#   bash scripts/bench.sh            # the full datasets (takes a while)
#   bash scripts/bench.sh --quick    # small datasets: does everything work?
#   bash scripts/bench.sh --help     # sizes, rounds, -j, datasets
set -euo pipefail
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$root"

prepare_environment 15 18
cargo build --release --locked --quiet

exec python3 scripts/bench.py --prefix "$PG_MIGRATE_PG_PREFIX" --user "$test_user" "$@"
