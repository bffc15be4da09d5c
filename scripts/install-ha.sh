#!/usr/bin/env bash
# Installs what the HA (Patroni) tests need beside the PostgreSQL builds:
#   - etcd, from Debian's etcd-server package (3.4);
#   - Patroni 4.1.5 with its etcd3 and psycopg extras, in a virtual
#     environment at <ha prefix>/patroni (versions in
#     scripts/patroni-requirements.txt).
# Idempotent: a complete, verified install is left alone. The venv is made
# with Debian's /usr/bin/python3 because another Python may live where the
# unprivileged test user cannot read it, and Patroni must run as that user.
#
# Prefix: $PG_MIGRATE_HA_PREFIX, default: beside the PostgreSQL prefix (…/ha).
set -euo pipefail
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

log() { printf '[install-ha] %s\n' "$*" >&2; }

ensure_user
prefix=$(resolve_ha_prefix)
requirements=$root/scripts/patroni-requirements.txt
venv=$prefix/patroni
stamp=$prefix/.verified-patroni

if ! command -v etcd >/dev/null; then
  [ "$(id -u)" = 0 ] || { log "etcd missing: run as root or: apt-get install -y etcd-server"; exit 1; }
  log "installing etcd (Debian's etcd-server)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >&2
  # Debian's package starts a system etcd on 2379 where systemd runs; the
  # tests start their own.
  if command -v systemctl >/dev/null && systemctl is-active --quiet etcd 2>/dev/null; then
    systemctl disable --now etcd >&2 || true
  fi
fi
etcd --version >&2

want=$(sha256sum "$requirements" | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/patroni" ]; then
  exit 0
fi
log "installing Patroni into $venv"
mkdir -p "$prefix"
# Built in place (a venv's scripts name their interpreter by path); the
# stamp, written last, says it is complete.
rm -rf "$venv" "$stamp"
# Debian keeps venv's pip (ensurepip) in python3-venv: a venv fails without it.
if ! /usr/bin/python3 -m venv "$venv" >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || { log "python3-venv missing: run as root or: apt-get install -y python3-venv"; exit 1; }
  rm -rf "$venv"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2
  /usr/bin/python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements" >&2
chmod -R a+rX "$prefix"
# Verified as the user that runs the tests' servers.
as_user "$venv/bin/patroni" --version >&2
as_user "$venv/bin/patronictl" version >/dev/null 2>&1 || true
echo "$want" > "$stamp"
log "Patroni ready: $venv/bin/patroni"
