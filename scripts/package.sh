#!/usr/bin/env bash
# The Debian package: builds it with cargo-deb (installed, pinned, under the
# tools prefix), with the man pages and the bash, zsh and fish completions
# the release binary writes from its own command-line definition. With
# --install (what scripts/test.sh runs, as root): installs it with dpkg -i
# and proves the installed /usr/bin/pg-migrate with one real upgrade
# (PostgreSQL 15 -> 18, --link, as the unprivileged user).
set -euo pipefail
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$root"

cargo_deb_version=3.8.0
install=0
[ "${1:-}" = --install ] && install=1
# The proof upgrades 15 to 18.
prepare_environment 15 18 >/dev/null

tools=$(dirname "$(resolve_prefix)")/tools
if ! "$tools/bin/cargo-deb" --version 2>/dev/null | grep -q "$cargo_deb_version"; then
  echo "[package] installing cargo-deb $cargo_deb_version into $tools"
  cargo install --quiet --locked --root "$tools" cargo-deb --version "$cargo_deb_version"
fi

cargo build --release --locked --quiet
assets=target/assets
rm -rf "$assets"
mkdir -p "$assets/man" "$assets/completions"
target/release/pg-migrate generate man "$assets/man"
gzip -9n "$assets"/man/*.1
target/release/pg-migrate generate completions bash >"$assets/completions/pg-migrate.bash"
target/release/pg-migrate generate completions zsh >"$assets/completions/_pg-migrate"
target/release/pg-migrate generate completions fish >"$assets/completions/pg-migrate.fish"
PATH="$tools/bin:$PATH" cargo deb --no-build --locked --quiet --output target/debian/
deb=$(ls -t target/debian/pg-migrate_*.deb | head -1)
echo "[package] built $deb"
[ "$install" = 1 ] || exit 0

if [ "$(id -u)" != 0 ]; then
  echo "[package] --install needs root (dpkg -i)" >&2
  exit 1
fi
dpkg -i "$deb" >/dev/null
fail() {
  echo "[package] the installed package: $*" >&2
  exit 1
}
[ "$(command -v pg-migrate)" = /usr/bin/pg-migrate ] || fail "pg-migrate is not /usr/bin/pg-migrate"
/usr/bin/pg-migrate --version | grep -q "pg-migrate $(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)" ||
  fail "--version does not name the package's version"
if grep -q PG_MIGRATE_TEST_ /usr/bin/pg-migrate; then fail "the binary carries test hooks"; fi
for file in /usr/share/man/man1/pg-migrate.1.gz /usr/share/man/man1/pg-migrate-standby.1.gz \
  /usr/share/bash-completion/completions/pg-migrate /usr/share/zsh/vendor-completions/_pg-migrate \
  /usr/share/fish/vendor_completions.d/pg-migrate.fish /usr/share/doc/pg-migrate/copyright \
  /usr/share/doc/pg-migrate/README.md /usr/share/doc/pg-migrate/docs/json-status.md \
  /usr/share/doc/pg-migrate/docs/events.schema.json; do
  [ -s "$file" ] || fail "$file is missing"
done
zcat /usr/share/man/man1/pg-migrate.1.gz | grep -q '^\.TH pg-migrate 1' || fail "pg-migrate.1 is no man page"
zcat /usr/share/man/man1/pg-migrate.1.gz | grep -q -- 'old\\-datadir' || fail "pg-migrate.1 lacks --old-datadir"
bash -c 'source /usr/share/bash-completion/completions/pg-migrate && complete -p pg-migrate' >/dev/null ||
  fail "the bash completion does not load"
grep -q PostgreSQL /usr/share/doc/pg-migrate/copyright || fail "the copyright file lacks the licence"

# One real upgrade with the installed binary.
old_bin=$PG_MIGRATE_PG_PREFIX/15/bin
new_bin=$PG_MIGRATE_PG_PREFIX/18/bin
work=$(mktemp -d /tmp/pgm-package.XXXXXX)
chmod 0755 "$work"
[ "$(id -u)" = 0 ] && chown "$test_user" "$work"
cleanup() {
  [ -f "$work/old/postmaster.pid" ] && as_user "$old_bin/pg_ctl" -D "$work/old" -m immediate stop >/dev/null 2>&1
  [ -f "$work/new/postmaster.pid" ] && as_user "$new_bin/pg_ctl" -D "$work/new" -m immediate stop >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT
as_user "$old_bin/initdb" -D "$work/old" -E UTF8 --locale=C.UTF-8 -A trust >/dev/null
server() { as_user "$1/pg_ctl" -D "$2" -l "$2.log" -w -o "-c listen_addresses='' -c unix_socket_directories='$work' -p 5497" "$3" >/dev/null; }
psql() { as_user "$new_bin/psql" -X -q -At -h "$work" -p 5497 -v ON_ERROR_STOP=1 "$@"; }
server "$old_bin" "$work/old" start
psql -d postgres -c "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 10000) g"
before=$(psql -d postgres -c "SELECT count(*) || ' ' || md5(string_agg(v, '' ORDER BY id)) FROM t")
server "$old_bin" "$work/old" stop
(cd "$work" && as_user /usr/bin/pg-migrate --link -j 2 -b "$old_bin" -B "$new_bin" -d "$work/old" -D "$work/new" --json) \
  >"$work/events.ndjson" 2>"$work/upgrade.log" || true
jq -e -s 'map(select(.event == "summary")) | .[-1].result == "ok"' "$work/events.ndjson" >/dev/null ||
  fail "the upgrade did not end ok: $(tail -5 "$work/upgrade.log")"
server "$new_bin" "$work/new" start
after=$(psql -d postgres -c "SELECT count(*) || ' ' || md5(string_agg(v, '' ORDER BY id)) FROM t")
[ "$(psql -d postgres -c 'SHOW server_version_num' | cut -c1-2)" = 18 ] || fail "the new cluster is not 18"
server "$new_bin" "$work/new" stop
[ "$before" = "$after" ] || fail "the table differs after the upgrade: $before / $after"
echo "[package] $deb installed; /usr/bin/pg-migrate upgraded 15 -> 18 (--link), the table's rows equal"
