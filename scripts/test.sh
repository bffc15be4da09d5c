#!/usr/bin/env bash
# Sets up everything the tests need on a Debian machine and runs every test:
# PostgreSQL 12-18 (scripts/install-postgres.sh), the build, then cargo test
# for the whole workspace (unit, golden-file and end-to-end tests against
# real servers). Run as root (CI) or as a user who can run PostgreSQL.
set -euo pipefail
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$root"

ensure_prerequisites
ensure_user
PG_MIGRATE_PG_PREFIX=$(resolve_prefix)
export PG_MIGRATE_PG_PREFIX
bash scripts/install-postgres.sh

cargo build --workspace --all-targets --locked
cargo test --workspace --locked -- "$@"
