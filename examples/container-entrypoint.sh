#!/usr/bin/env bash
# An example container entrypoint that upgrades an old cluster before the
# server starts (no Docker needed to try it: run it directly).
#
# Layout, as the postgres images of several majors keep it on one volume:
#   $PGROOT/<major>/data      one data directory per major
# At start, with the image's PostgreSQL in $PGBINNEW, the entrypoint reads
# the state file pg-migrate keeps in $PGDATA (default
# $PGROOT/<new major>/data) and:
#   - "complete": nothing to upgrade; post-upgrade scripts not run yet
#     still run (each runs once: pg-migrate keeps completion markers);
#   - "upgrading" or "failed" (e.g. the container was killed during the
#     upgrade): `pg-migrate resume` (it makes the backup again and runs the
#     post-upgrade scripts, as the journal says);
#   - "reverted": refuses (the old cluster is the one to run);
#   - none, and an older cluster under $PGROOT: `pg-migrate --link` (or
#     $PG_MIGRATE_MODE) from the newest one into $PGDATA; pg-migrate's checks
#     refuse a $PGDATA that holds more than an empty cluster;
#   - none and no older cluster: nothing to upgrade;
# and while another pg-migrate holds the clusters (exit 2, `locked`) it
# waits and looks again. Then it runs the command it was given (the
# server); any failure stops it first. Every JSON event goes to
# $PG_MIGRATE_LOG_DIR/events.ndjson and a line per step, script and error
# to stderr, and pg-migrate's logs to $PG_MIGRATE_LOG_DIR (--log-dir), so
# they survive the container.
#
# Environment:
#   PGBINNEW            the image's bin directory (required)
#   PGROOT              default /var/lib/postgresql
#   PGDATA              default $PGROOT/<new major>/data
#   PGBINOLD_<major>    bin directory of an old major (default
#                       /usr/lib/postgresql/<major>/bin)
#   PG_MIGRATE          the pg-migrate program (default: pg-migrate on PATH)
#   PG_MIGRATE_MODE     link (default), copy, clone, copy-file-range, swap
#   PG_MIGRATE_JOBS     -j (default: the number of CPUs)
#   PG_MIGRATE_BACKUP_DIR       a logical backup first (--backup-dir)
#   PG_MIGRATE_POST_UPGRADE_DIR numbered migration scripts (--post-upgrade)
#   PG_MIGRATE_LOG_DIR  default $PGROOT/pg-migrate-logs
#   PG_MIGRATE_WAIT     seconds to wait for another pg-migrate (default 600)
set -euo pipefail

: "${PGBINNEW:?set PGBINNEW to the bin directory of the image PostgreSQL}"
PGROOT=${PGROOT:-/var/lib/postgresql}
PG_MIGRATE=${PG_MIGRATE:-pg-migrate}
PG_MIGRATE_MODE=${PG_MIGRATE_MODE:-link}
PG_MIGRATE_JOBS=${PG_MIGRATE_JOBS:-$(nproc 2>/dev/null || echo 1)}
PG_MIGRATE_LOG_DIR=${PG_MIGRATE_LOG_DIR:-$PGROOT/pg-migrate-logs}
PG_MIGRATE_WAIT=${PG_MIGRATE_WAIT:-600}

say() { echo "entrypoint: $*" >&2; }

major_of_bindir() {
  # "postgres (PostgreSQL) 18.6" -> 18
  "$1/postgres" --version | sed -E 's/.*\(PostgreSQL\) ([0-9]+).*/\1/'
}

new_major=$(major_of_bindir "$PGBINNEW")
PGDATA=${PGDATA:-$PGROOT/$new_major/data}
mkdir -p "$PG_MIGRATE_LOG_DIR"
events=$PG_MIGRATE_LOG_DIR/events.ndjson

# One string field of one event line (the flat fields used here), escaped
# quotes and backslashes in it kept.
field() {
  sed -nE "s/.*\"$1\":\"(([^\"\\\\]|\\\\.)*)\".*/\1/p" <<<"$2" | sed -e 's/\\"/"/g' -e 's/\\\\/\\/g'
}
number() { sed -nE "s/.*\"$1\":([0-9]+).*/\1/p" <<<"$2"; }

# Runs pg-migrate with --json; every event is kept, a line per step, script
# and error is said. Returns pg-migrate's exit status; sets $last_error.
run_pg_migrate() {
  local status line event
    set +e
  "$PG_MIGRATE" "$@" --json 2>>"$PG_MIGRATE_LOG_DIR/pg-migrate.stderr" | {
    while IFS= read -r line; do
      printf '%s\n' "$line" >>"$events"
      event=$(field event "$line")
      case $event in
        step_end) say "$(field step "$line"): $(field status "$line") ($(number duration_ms "$line") ms)" ;;
        error)
          say "error $(field code "$line"): $(field message "$line")"
          printf '%s\n' "$(field code "$line")" >"$PG_MIGRATE_LOG_DIR/.last-error"
          ;;
        script) say "script $(field name "$line") $(field database "$line"): $(field status "$line")" ;;
        summary) say "pg-migrate $(field command "$line"): $(field result "$line") (exit $(number exit_code "$line"))" ;;
      esac
    done
  }
  status=${PIPESTATUS[0]}
  set -e
  last_error=$(cat "$PG_MIGRATE_LOG_DIR/.last-error" 2>/dev/null || true)
  rm -f "$PG_MIGRATE_LOG_DIR/.last-error"
  return "$status"
}

common=(-B "$PGBINNEW" -j "$PG_MIGRATE_JOBS" --log-dir "$PG_MIGRATE_LOG_DIR")
after=()
[ -n "${PG_MIGRATE_POST_UPGRADE_DIR:-}" ] && after+=(--post-upgrade "$PG_MIGRATE_POST_UPGRADE_DIR")

# The newest cluster of an older major under $PGROOT: sets $old, $old_major.
find_old() {
  local dir major
  old=
  old_major=0
  for dir in "$PGROOT"/*/data; do
    [ -f "$dir/PG_VERSION" ] || continue
    [ "$dir" = "$PGDATA" ] && continue
    major=$(cat "$dir/PG_VERSION")
    if [ "$major" -lt "$new_major" ] && [ "$major" -gt "$old_major" ]; then
      old=$dir
      old_major=$major
    fi
  done
}

# Looks at where things stand and does what is due; pg-migrate's exit
# status, or 0 when nothing was due.
upgrade_if_due() {
  local state
  state=$(cat "$PGDATA/pg_migrate.d/state" 2>/dev/null || true)
  case $state in
    complete)
      if [ ${#after[@]} -gt 0 ]; then
        say "$PGDATA was upgraded; running the post-upgrade scripts not run yet"
        run_pg_migrate post-upgrade -D "$PGDATA" "${common[@]}" "${after[@]}"
      fi
      ;;
    upgrading | failed)
      say "an upgrade into $PGDATA did not finish; resuming it"
      run_pg_migrate resume -D "$PGDATA" "${common[@]}" ${after[@]+"${after[@]}"}
      ;;
    reverted)
      say "the upgrade into $PGDATA was reverted: the old cluster is the one to run; remove $PGDATA to upgrade again"
      return 1
      ;;
    *)
      find_old
      if [ -z "$old" ]; then
        if [ -f "$PGDATA/PG_VERSION" ]; then
          say "$PGDATA is a PostgreSQL $(cat "$PGDATA/PG_VERSION") cluster: nothing to upgrade"
        else
          say "no cluster under $PGROOT: nothing to upgrade"
        fi
        return 0
      fi
      # An older cluster and no finished upgrade: upgrade it. A new cluster
      # already at $PGDATA (a container killed right after creating it) is
      # pg-migrate's to judge: its checks accept only an empty one.
      local bindir_var=PGBINOLD_$old_major
      local old_bindir=${!bindir_var:-/usr/lib/postgresql/$old_major/bin}
      say "upgrading $old (PostgreSQL $old_major) into $PGDATA (PostgreSQL $new_major)"
      # pg-migrate creates $PGDATA itself, matching the old cluster.
      mkdir -p "$(dirname "$PGDATA")"
      local extra=()
      [ -n "${PG_MIGRATE_BACKUP_DIR:-}" ] && extra+=(--backup-dir "$PG_MIGRATE_BACKUP_DIR")
      run_pg_migrate -b "$old_bindir" -d "$old" -D "$PGDATA" "--$PG_MIGRATE_MODE" \
        "${common[@]}" ${extra[@]+"${extra[@]}"} ${after[@]+"${after[@]}"}
      ;;
  esac
}

waited=0
while :; do
  status=0
  upgrade_if_due || status=$?
  # Another pg-migrate works on these clusters (another container?): wait,
  # then look again at where things stand.
  if [ "$status" = 2 ] && [ "$last_error" = locked ] && [ "$waited" -lt "$PG_MIGRATE_WAIT" ]; then
    say "another pg-migrate holds the clusters; waiting"
    sleep 2
    waited=$((waited + 2))
    continue
  fi
  [ "$status" = 0 ] || exit "$status"
  break
done

if [ $# -gt 0 ]; then
  exec "$@"
fi
