#!/usr/bin/env bash
# An example container entrypoint that upgrades an old cluster before the
# server starts (no Docker needed to try it: run it directly).
#
# Layouts, as the official postgres images keep clusters on one volume at
# $PGROOT (/var/lib/postgresql), all recognised for the old cluster:
#   $PGROOT/data              the images up to 17
#   $PGROOT/<major>/docker    the images from 18 on
#   $PGROOT/<major>/data      one data directory per major
# The upgraded cluster goes where the new image expects it: $PGDATA, by
# default $PGROOT/<new major>/docker from 18 on (the official image's own
# default), $PGROOT/<new major>/data before (give an image of 17 or older
# PGDATA=$PGROOT/<major>/data: its default, $PGROOT/data, is the old
# cluster's place).
# Started as root (as the official images start), it makes the log
# directory and $PGDATA's parent, gives them to the clusters' owner (the
# old cluster's, else $PGDATA's, else the user postgres) and runs itself
# again as that user, as the official entrypoint does with gosu.
# At start, with the image's PostgreSQL in $PGBINNEW, the entrypoint reads
# the state file pg-migrate keeps in $PGDATA and:
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
# to stderr (read with jq, a real JSON parser), and pg-migrate's logs to
# $PG_MIGRATE_LOG_DIR (--log-dir), so they survive the container.
#
# Environment:
#   PGBINNEW            the image's bin directory (required)
#   PGROOT              default /var/lib/postgresql
#   PGDATA              default $PGROOT/<new major>/docker (18 on) or /data
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
command -v jq >/dev/null || {
  say "jq is needed to read pg-migrate's events: install it (apt-get install jq)"
  exit 1
}

major_of_bindir() {
  # "postgres (PostgreSQL) 18.6" -> 18
  "$1/postgres" --version | sed -E 's/.*\(PostgreSQL\) ([0-9]+).*/\1/'
}

new_major=$(major_of_bindir "$PGBINNEW")
if [ "$new_major" -ge 18 ]; then
  PGDATA=${PGDATA:-$PGROOT/$new_major/docker}
else
  PGDATA=${PGDATA:-$PGROOT/$new_major/data}
fi
events=$PG_MIGRATE_LOG_DIR/events.ndjson

# Each event pg-migrate writes, as one tab-separated line for the loop
# below: what (say, error), the error code (- for none), the text.
describe_events() {
  # -R and fromjson?: a line that is not JSON is passed over, not fatal.
  jq -R -r --unbuffered '
    def one_line: tostring | gsub("[\t\n\r]"; " ");
    fromjson? |
    if .event == "step_end" then
      ["say", "-", "\(.step): \(.status) (\(.duration_ms) ms)"]
    elif .event == "error" then
      ["error", .code, "error \(.code): \(.message)" + (if .log then " (log: \(.log))" else "" end)]
    elif .event == "script" then
      ["say", "-", "script \(.name) \(.database // ""): \(.status)"]
    elif .event == "summary" then
      ["say", "-", "pg-migrate \(.command): \(.result) (exit \(.exit_code))"]
    else empty end
    | map(one_line) | join("\t")'
}

# Runs pg-migrate with --json; every event is kept, a line per step, script
# and error is said. Returns pg-migrate's exit status; sets $last_error.
run_pg_migrate() {
  local status kind code text
  set +e
  "$PG_MIGRATE" "$@" --json 2>>"$PG_MIGRATE_LOG_DIR/pg-migrate.stderr" |
    tee -a "$events" | describe_events | {
    while IFS=$'\t' read -r kind code text; do
      say "$text"
      if [ "$kind" = error ]; then
        printf '%s\n' "$code" >"$PG_MIGRATE_LOG_DIR/.last-error"
      fi
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

# The newest cluster of an older major under $PGROOT, in any of the
# layouts: sets $old, $old_major.
find_old() {
  local dir major
  old=
  old_major=0
  for dir in "$PGROOT"/data "$PGROOT"/*/docker "$PGROOT"/*/data; do
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

# Root: the directories it needs made and given to the clusters' owner,
# then this script again as that owner (PostgreSQL refuses to run as root).
if [ "$(id -u)" = 0 ]; then
  find_old
  owner=
  if [ -n "$old" ]; then
    owner=$(stat -c %u "$old")
  elif [ -e "$PGDATA" ]; then
    owner=$(stat -c %u "$PGDATA")
  elif id -u postgres >/dev/null 2>&1; then
    owner=$(id -u postgres)
  fi
  if [ -z "$owner" ] || [ "$owner" = 0 ]; then
    say "started as root, and no cluster owner found (the old cluster's, \$PGDATA's or the user postgres): start it as the clusters' owner"
    exit 1
  fi
  # A uid without a passwd entry (a volume from another image) works too:
  # its own number as group, no supplementary groups, $PGROOT as home.
  entry=$(getent passwd "$owner" || true)
  group=$(cut -d: -f4 <<<"$entry")
  group=${group:-$(stat -c %g "${old:-$PGROOT}")}
  for dir in "$PG_MIGRATE_LOG_DIR" "$(dirname "$PGDATA")"; do
    if [ ! -d "$dir" ]; then
      mkdir -p "$dir"
      chown "$owner:$group" "$dir"
    fi
  done
  if [ -n "$entry" ]; then
    HOME=$(cut -d: -f6 <<<"$entry")
    groups=--init-groups
  else
    HOME=$PGROOT
    groups=--clear-groups
  fi
  export HOME PGDATA
  say "started as root: going on as ${entry%%:*}${entry:+ }(uid $owner), the clusters' owner"
  exec setpriv --reuid="$owner" --regid="$group" "$groups" "$BASH" "${BASH_SOURCE[0]}" "$@"
fi
mkdir -p "$PG_MIGRATE_LOG_DIR"

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
