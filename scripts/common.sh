# Shared by the scripts: project root, PostgreSQL prefix, the unprivileged
# user that runs servers when we are root, and the prerequisites.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
test_user=${PG_MIGRATE_TEST_USER:-pgmigrate}

# The prefix must be reachable by the unprivileged user: a checkout under a
# directory only root can enter (e.g. /root) gets a prefix under /var/cache.
resolve_prefix() {
  if [ -n "${PG_MIGRATE_PG_PREFIX:-}" ]; then
    echo "$PG_MIGRATE_PG_PREFIX"
    return
  fi
  local dir=$root
  if [ "$(id -u)" = 0 ]; then
    while [ "$dir" != / ]; do
      # Others need search permission on every ancestor (x, or t: sticky + x).
      case $(stat -c %A "$dir" | cut -c10) in
        x | t) ;;
        *)
          echo /var/cache/pg-migrate/postgres
          return
          ;;
      esac
      dir=$(dirname "$dir")
    done
  fi
  echo "$root/.cache/postgres"
}

# Where scripts/install-ha.sh puts Patroni: beside the PostgreSQL builds.
resolve_ha_prefix() {
  if [ -n "${PG_MIGRATE_HA_PREFIX:-}" ]; then
    echo "$PG_MIGRATE_HA_PREFIX"
    return
  fi
  echo "$(dirname "$(resolve_prefix)")/ha"
}

as_user() {
  if [ "$(id -u)" = 0 ]; then runuser -u "$test_user" -- "$@"; else "$@"; fi
}

ensure_user() {
  [ "$(id -u)" = 0 ] || return 0
  id "$test_user" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "$test_user"
}

# Debian packages the scripts rely on (present on most machines already).
ensure_prerequisites() {
  local missing=()
  command -v python3 >/dev/null || missing+=(python3)
  python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
  command -v npm >/dev/null || missing+=(npm)
  command -v runuser >/dev/null || missing+=(util-linux)
  # The package's proof and the container entrypoint read events with jq.
  command -v jq >/dev/null || missing+=(jq)
  # The durability test reads pg-migrate's system calls.
  command -v strace >/dev/null || missing+=(strace)
  # The --clone test makes an XFS filesystem with reflink on a loop device.
  [ "$(id -u)" != 0 ] || [ -x /usr/sbin/mkfs.xfs ] || [ -x /sbin/mkfs.xfs ] || missing+=(xfsprogs)
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
      echo "missing: ${missing[*]}; install them (apt-get install ${missing[*]}) and run again" >&2
      return 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
  fi
  if ! command -v cargo >/dev/null; then
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
  fi
  command -v cargo >/dev/null || {
    echo "cargo is missing: install the Rust toolchain (https://rustup.rs) and run again" >&2
    return 1
  }
}

# A versioned libc locale for the collation tests (PostgreSQL records no
# version for C, C.UTF-8 or POSIX). Generated system-wide, so root only.
test_locale=en_US.UTF-8
ensure_test_locale() {
  if locale -a 2>/dev/null | grep -qix 'en_US\.utf-\?8'; then
    return 0
  fi
  if [ "$(id -u)" != 0 ]; then
    echo "warning: locale $test_locale is missing and only root can generate it (localedef -i en_US -c -f UTF-8 $test_locale); the collation tests will fail" >&2
    return 0
  fi
  if ! [ -e /usr/share/i18n/locales/en_US ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq locales >&2
  fi
  localedef -i en_US -c -f UTF-8 "$test_locale"
}

# What every entry script does first: prerequisites, the test user, and the
# PostgreSQL majors it needs (all when none are named) under the prefix.
prepare_environment() {
  ensure_prerequisites
  ensure_user
  PG_MIGRATE_PG_PREFIX=$(resolve_prefix)
  export PG_MIGRATE_PG_PREFIX
  bash "$root/scripts/install-postgres.sh" "$@"
}
